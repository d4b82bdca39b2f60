"""LightGBM -> ONNX with one named probability output.

onnxmltools emits ``label`` and ``probabilities`` (N, 2); serving wants the positive
class only, so a Gather on axis 1 is appended and the graph's single output is named
after the model (``pctr``, ``p_fraud``). The input is a float32 matrix with a dynamic
batch axis.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

TARGET_OPSET = 15  # the highest onnxmltools 1.16 converts LightGBM to


def lgbm_to_onnx(booster: Any, n_features: int, *, input_name: str, output_name: str,
                 doc: str = "") -> onnx.ModelProto:
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    model = convert_lightgbm(booster, initial_types=[(input_name, FloatTensorType([None, n_features]))],
                             zipmap=False, target_opset=TARGET_OPSET)
    graph = model.graph
    probs = next(o.name for o in graph.output if "prob" in o.name)
    graph.initializer.append(helper.make_tensor("positive_class", TensorProto.INT64, [], [1]))
    graph.node.append(helper.make_node("Gather", [probs, "positive_class"], [output_name], axis=1))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [None]))
    model.doc_string = doc
    onnx.checker.check_model(model)
    return model


def onnx_predict(model: onnx.ModelProto | bytes, x: np.ndarray) -> np.ndarray:
    """Run an exported model once (tests, parity checks); serving keeps sessions open."""
    import onnxruntime as ort

    data = model if isinstance(model, bytes) else model.SerializeToString()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.asarray(sess.run(None, {name: x.astype(np.float32)})[0])

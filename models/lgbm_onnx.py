"""LightGBM -> ONNX with one named probability output, and ONNX-vs-native parity.

onnxmltools emits ``label`` and ``probabilities`` (N, 2); serving wants the positive
class only, so a Gather on axis 1 is appended and the graph's single output is named
after the model (``pctr``, ``p_fraud``). The input is a float32 matrix with a dynamic
batch axis. With a :class:`~models.calibration.Calibrator` the calibration nodes follow
the Gather, so the exported output is the calibrated probability.

Known traps, and how the callers avoid them:

* the ONNX tree ensemble compares float32 inputs with float32 thresholds, while
  LightGBM compares float64 with float64: train on float32-rounded features (the
  ``ctr_matrix`` contract is float32), so every threshold falls between two float32
  values the training data really takes;
* LightGBM categorical splits convert to chains of equality tests that are easy to get
  wrong: encode categoricals as small integers and let LightGBM split them numerically;
* ids above 2**24 are not exact in float32: never feed raw ids, only small codes.

:func:`parity` measures the agreement the training pipelines require before a model is
registered (99.9% of rows within 1e-5 of the native prediction, all within 1e-3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from adplatform.errors import AdPlatformError

if TYPE_CHECKING:
    from models.calibration import Calibrator

TARGET_OPSET = 15  # the highest onnxmltools 1.16 converts LightGBM to

# Parity contract between an exported model and its native twin.
PARITY_TOL = 1e-5         # per-row tolerance ...
PARITY_SHARE = 0.999      # ... met by at least this share of rows
PARITY_MAX = 1e-3         # and no row further than this


class ParityError(AdPlatformError):
    """An exported model disagrees with the native model beyond the parity contract."""


def lgbm_to_onnx(booster: Any, n_features: int, *, input_name: str, output_name: str,
                 doc: str = "", calibrator: Calibrator | None = None) -> onnx.ModelProto:
    """Convert a binary LightGBM booster; ``calibrator`` appends calibration nodes."""
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    model = convert_lightgbm(booster, initial_types=[(input_name, FloatTensorType([None, n_features]))],
                             zipmap=False, target_opset=TARGET_OPSET)
    graph = model.graph
    probs = next(o.name for o in graph.output if "prob" in o.name)
    graph.initializer.append(helper.make_tensor("positive_class", TensorProto.INT64, [], [1]))
    raw = output_name if calibrator is None else f"{output_name}_uncalibrated"
    graph.node.append(helper.make_node("Gather", [probs, "positive_class"], [raw], axis=1))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(raw, TensorProto.FLOAT, [None]))
    if calibrator is not None:
        from models.calibration import append_calibration

        append_calibration(model, calibrator, prob_output=raw, output_name=output_name)
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


@dataclass(frozen=True)
class Parity:
    """Agreement of exported and native predictions on the same rows."""

    rows: int
    share_within_tol: float      # share of rows with |onnx - native| <= PARITY_TOL
    max_abs_diff: float

    @property
    def ok(self) -> bool:
        return self.rows == 0 or (self.share_within_tol >= PARITY_SHARE
                                  and self.max_abs_diff <= PARITY_MAX)

    def metrics(self, prefix: str = "onnx") -> dict[str, float]:
        return {f"{prefix}_parity_share": self.share_within_tol,
                f"{prefix}_max_abs_diff": self.max_abs_diff,
                f"{prefix}_parity_rows": float(self.rows)}


def parity(native: np.ndarray, exported: np.ndarray) -> Parity:
    """Compare predictions row by row (both (N,))."""
    native = np.asarray(native, dtype=np.float64).reshape(-1)
    exported = np.asarray(exported, dtype=np.float64).reshape(-1)
    if native.shape != exported.shape:
        raise ValueError(f"prediction shapes differ: {native.shape} vs {exported.shape}")
    if len(native) == 0:
        return Parity(0, 1.0, 0.0)
    diff = np.abs(native - exported)
    diff = np.where(np.isnan(native) & np.isnan(exported), 0.0, diff)
    diff = np.where(np.isnan(diff), np.inf, diff)           # one side NaN: a failure
    return Parity(rows=len(diff), share_within_tol=float(np.mean(diff <= PARITY_TOL)),
                  max_abs_diff=float(diff.max()))


def require_parity(result: Parity, what: str) -> None:
    """Raise :class:`ParityError` unless ``result`` meets the parity contract."""
    if not result.ok:
        raise ParityError(
            f"{what}: ONNX disagrees with the native model: {result.share_within_tol:.4%} of "
            f"{result.rows} rows within {PARITY_TOL:g} (need {PARITY_SHARE:.1%}), max "
            f"|diff| {result.max_abs_diff:.3g} (need <= {PARITY_MAX:g})")


def stress_rows(x: np.ndarray, *, categorical: dict[int, float], nan_share: float = 0.05,
                seed: int = 0) -> np.ndarray:
    """A copy of ``x`` (float32) with NaNs and unseen category codes, for parity checks.

    ``categorical`` maps a column index to a code never seen in training (e.g. 99); a
    tenth of the rows get it in that column, and ``nan_share`` of all cells become NaN.
    """
    rng = np.random.default_rng(seed)
    out = np.array(x, dtype=np.float32, copy=True)
    out[rng.random(out.shape) < nan_share] = np.nan
    for col, code in categorical.items():
        out[rng.random(len(out)) < 0.1, col] = np.float32(code)
    return out


__all__ = ["PARITY_MAX", "PARITY_SHARE", "PARITY_TOL", "TARGET_OPSET", "Parity", "ParityError",
           "lgbm_to_onnx", "onnx_predict", "parity", "require_parity", "stress_rows"]

"""Triton model repository: the ONNX models plus one ``auction`` model, in Triton's layout.

The generated folder is what a production ``tritonserver --model-repository DIR`` loads
unchanged::

    DIR/ctr/<version>/model.onnx       DIR/ctr/config.pbtxt       (onnxruntime, batched)
    DIR/fraud/<version>/model.onnx     DIR/fraud/config.pbtxt     (only when registered)
    DIR/shading/<version>/model.onnx   DIR/shading/config.pbtxt   (only when registered)
    DIR/auction/1/model.py             DIR/auction/config.pbtxt   (Python backend, BLS)

``auction`` scores a whole auction in one request: it forwards ``ctr_features`` (K rows),
the optional ``fraud_features`` (1 row) and ``shading_features`` (K rows) to the three
models concurrently and answers ``pctr``, ``p_fraud``, ``landscape`` and ``versions``.
An ensemble cannot do this (its steps share one batch dimension, while fraud sees one
row and CTR sees K), hence business-logic scripting.

Every ``config.pbtxt`` is built as Triton's own ``ModelConfig`` protobuf message and
parsed back before it is written, so a malformed config fails here, not in the server.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2

    from adplatform.config import Settings

log = logging.getLogger(__name__)

AUCTION = "auction"
MODEL_NAMES = ("ctr", "fraud", "shading")
# model name -> (input tensor, output tensor); the names are the serving contract.
CONTRACT: dict[str, tuple[str, str]] = {
    "ctr": ("ctr_features", "pctr"),
    "fraud": ("fraud_features", "p_fraud"),
    "shading": ("shading_features", "landscape"),
}
VERSIONS_OUTPUT = "versions"            # BYTES [1]: JSON {model name: registry version}
VERSION_PARAMETER = "adplatform.registry_version"
AUCTION_VERSIONS_PARAMETER = "adplatform.versions"
AUCTION_MAX_ROWS_PARAMETER = "adplatform.max_batch_size"  # the BLS splits larger auctions
AUCTION_SOURCE = Path(__file__).with_name("auction_bls.py")
MARKER = ".adplatform-triton-repository"  # a hidden file; tritonserver only reads folders

DeviceKind = Literal["KIND_CPU", "KIND_GPU"]


@dataclass(frozen=True)
class OnnxSignature:
    """What the repository needs to know about an exported model."""

    input_name: str
    output_name: str
    input_shape: tuple[int, ...]     # -1 for a dynamic axis
    output_shape: tuple[int, ...]

    @property
    def batchable(self) -> bool:
        return self.input_shape[0] == -1 and self.output_shape[0] == -1


def _dims(value_info: object) -> tuple[int, ...]:
    shape = value_info.type.tensor_type.shape  # type: ignore[attr-defined]
    return tuple(int(d.dim_value) if d.HasField("dim_value") else -1 for d in shape.dim)


def read_signature(path: Path) -> OnnxSignature:
    """The first graph input and output of an ONNX file (initializers excluded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ValueError(f"{path}: expected one input and one output, got "
                         f"{[i.name for i in inputs]} -> {[o.name for o in graph.output]}")
    return OnnxSignature(input_name=inputs[0].name, output_name=graph.output[0].name,
                         input_shape=_dims(inputs[0]), output_shape=_dims(graph.output[0]))


def parse_config(text: str) -> model_config_pb2.ModelConfig:
    """Parse ``config.pbtxt`` text with Triton's model-config protobuf (raises on errors)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _check_version(name: str, version: str) -> None:
    if not version.isdigit() or int(version) < 1:
        raise ValueError(f"Triton version folders are positive integers; "
                         f"{name} has registry version {version!r}")


def _check_signature(name: str, sig: OnnxSignature, path: Path) -> None:
    want_in, want_out = CONTRACT[name]
    if (sig.input_name, sig.output_name) != (want_in, want_out):
        raise ValueError(f"{path}: model {name!r} must map {want_in!r} -> {want_out!r}, "
                         f"found {sig.input_name!r} -> {sig.output_name!r}")
    if len(sig.input_shape) != 2:
        raise ValueError(f"{path}: {want_in!r} must be a matrix (rows, features), "
                         f"found shape {sig.input_shape}")
    if len(sig.output_shape) not in (1, 2):
        raise ValueError(f"{path}: {want_out!r} must have 1 or 2 axes, found {sig.output_shape}")


def onnx_config(name: str, sig: OnnxSignature, version: str, *, max_batch_size: int,
                instances: int, kind: DeviceKind, max_queue_delay_us: int) -> str:
    """``config.pbtxt`` for one ONNX model: ORT backend, dynamic batching, N instances."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb

    cfg = pb.ModelConfig(name=name, platform="onnxruntime_onnx", backend="onnxruntime")
    cfg.version_policy.latest.num_versions = 1
    inp = cfg.input.add(name=sig.input_name, data_type=pb.TYPE_FP32)
    out = cfg.output.add(name=sig.output_name, data_type=pb.TYPE_FP32)
    if sig.batchable:
        # Rows of one request and requests of several auctions batch on axis 0.
        cfg.max_batch_size = max_batch_size
        inp.dims.extend(sig.input_shape[1:])
        if len(sig.output_shape) == 1:
            # A (rows,) output: Triton needs non-empty dims, so clients see (rows, 1).
            out.dims.append(1)
            out.reshape.SetInParent()
        else:
            out.dims.extend(sig.output_shape[1:])
        cfg.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    else:
        inp.dims.extend(sig.input_shape)
        out.dims.extend(sig.output_shape)
    cfg.instance_group.add(count=instances, kind=getattr(pb.ModelInstanceGroup, kind))
    # One intra-op thread, like the in-process backend: an auction is a handful of rows.
    cfg.parameters["intra_op_thread_count"].string_value = "1"
    cfg.parameters["inter_op_thread_count"].string_value = "1"
    cfg.parameters[VERSION_PARAMETER].string_value = version
    return text_format.MessageToString(cfg)


def auction_config(sigs: dict[str, OnnxSignature], versions: dict[str, str], *,
                   instances: int, max_batch_size: int) -> str:
    """``config.pbtxt`` for the BLS ``auction`` model (always CPU: it only orchestrates)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb

    def width(name: str, shape_of: str) -> int:
        sig = sigs.get(name)
        if sig is None:
            return -1
        shape = sig.input_shape if shape_of == "input" else sig.output_shape
        return shape[1] if len(shape) > 1 else -1

    cfg = pb.ModelConfig(name=AUCTION, backend="python", max_batch_size=0)
    cfg.input.add(name="ctr_features", data_type=pb.TYPE_FP32, dims=[-1, width("ctr", "input")])
    cfg.input.add(name="fraud_features", data_type=pb.TYPE_FP32,
                  dims=[1, width("fraud", "input")], optional=True)
    cfg.input.add(name="shading_features", data_type=pb.TYPE_FP32,
                  dims=[-1, width("shading", "input")], optional=True)
    cfg.output.add(name="pctr", data_type=pb.TYPE_FP32, dims=[-1])
    cfg.output.add(name="p_fraud", data_type=pb.TYPE_FP32, dims=[1])
    cfg.output.add(name="landscape", data_type=pb.TYPE_FP32,
                   dims=[-1, width("shading", "output")])
    cfg.output.add(name=VERSIONS_OUTPUT, data_type=pb.TYPE_STRING, dims=[1])
    cfg.instance_group.add(count=instances, kind=pb.ModelInstanceGroup.KIND_CPU)
    cfg.parameters[AUCTION_VERSIONS_PARAMETER].string_value = json.dumps(
        {name: versions[name] for name in MODEL_NAMES if name in sigs}, sort_keys=True)
    cfg.parameters[AUCTION_MAX_ROWS_PARAMETER].string_value = str(max_batch_size)
    return text_format.MessageToString(cfg)


def _write_config(folder: Path, text: str) -> None:
    parse_config(text)  # the same parser Triton uses for config.pbtxt
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(text)


def write_repository(models: dict[str, Path], versions: dict[str, str], out: Path, *,
                     max_batch_size: int = 256, instances: int = 1,
                     kind: DeviceKind = "KIND_CPU", max_queue_delay_us: int = 100) -> Path:
    """Write a Triton model repository for ``models`` (name -> ``model.onnx``) into ``out``.

    ``ctr`` is required; ``fraud`` and ``shading`` are optional. ``versions`` maps each
    model to its registry version (a positive integer: Triton's version folder).
    ``max_batch_size`` bounds the rows of one batched call (so K candidates per auction);
    ``instances`` is the instance count of every model; ``kind`` is ``KIND_GPU`` for a GPU
    image (the ``auction`` orchestrator stays on CPU). An existing ``out`` is replaced only
    if it is a repository this function wrote. Returns ``out``.
    """
    unknown = sorted(set(models) - set(MODEL_NAMES))
    if unknown:
        raise ValueError(f"unknown model names {unknown}; expected some of {list(MODEL_NAMES)}")
    if "ctr" not in models:
        raise ValueError("a Triton repository needs a ctr model")
    missing = sorted(set(models) - set(versions))
    if missing:
        raise ValueError(f"no registry version given for {missing}")
    if max_batch_size < 1 or instances < 1:
        raise ValueError(f"max_batch_size ({max_batch_size}) and instances ({instances}) "
                         f"must be at least 1")
    if kind not in ("KIND_CPU", "KIND_GPU"):
        raise ValueError(f"kind must be KIND_CPU or KIND_GPU, got {kind!r}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise FileExistsError(f"{out} exists and is not a generated Triton repository")

    sigs: dict[str, OnnxSignature] = {}
    for name, path in models.items():
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{name}: no ONNX file at {path}")
        _check_version(name, versions[name])
        sigs[name] = read_signature(path)
        _check_signature(name, sigs[name], path)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for name in MODEL_NAMES:
            if name not in models:
                continue
            text = onnx_config(name, sigs[name], versions[name], max_batch_size=max_batch_size,
                               instances=instances, kind=kind,
                               max_queue_delay_us=max_queue_delay_us)
            _write_config(staging / name, text)
            version_dir = staging / name / versions[name]
            version_dir.mkdir()
            shutil.copyfile(models[name], version_dir / "model.onnx")
        _write_config(staging / AUCTION, auction_config(sigs, versions, instances=instances,
                                                          max_batch_size=max_batch_size))
        (staging / AUCTION / "1").mkdir()
        shutil.copyfile(AUCTION_SOURCE, staging / AUCTION / "1" / "model.py")
        (staging / MARKER).write_text(json.dumps(
            {name: versions[name] for name in sigs}, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote Triton repository %s: %s", out,
             ", ".join(f"{n}@{versions[n]}" for n in MODEL_NAMES if n in sigs))
    return out


def repository_from_registry(settings: Settings, out: Path, alias: str = "champion",
                             **options: object) -> Path:
    """Resolve ``models:/<name>@alias`` for ctr (required), fraud and shading (if registered)
    and write their repository into ``out``; ``options`` go to :func:`write_repository`."""
    from mlops.errors import ModelNotFound
    from mlops.registry import resolve

    models: dict[str, Path] = {}
    versions: dict[str, str] = {}
    for name in MODEL_NAMES:
        try:
            resolved = resolve(settings, name, alias)
        except ModelNotFound:
            if name == "ctr":
                raise
            log.info("no %s@%s registered; the repository serves without it", name, alias)
            continue
        models[name] = resolved.onnx_path
        versions[name] = resolved.version
    return write_repository(models, versions, out, **options)  # type: ignore[arg-type]


__all__ = ["AUCTION", "CONTRACT", "MODEL_NAMES", "OnnxSignature", "auction_config",
           "onnx_config", "parse_config", "read_signature", "repository_from_registry",
           "write_repository"]

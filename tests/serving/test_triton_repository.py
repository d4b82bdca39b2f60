"""Triton model repository generation, the Triton venv helper, and client failure modes
that need no server. Configs are checked with Triton's own model-config protobuf."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2 as pb

from adplatform.config import Settings
from adplatform.ports import free_ports
from serving.base import AuctionInputs, ModelBackend
from serving.errors import BackendUnavailable
from serving.triton import venv as triton_venv
from serving.triton.client import TritonBackend
from serving.triton.repository import (
    AUCTION,
    MARKER,
    parse_config,
    read_signature,
    write_repository,
)

F_CTR, F_FRAUD, F_SHADING, P_SHADING = 8, 5, 6, 3


# ---- small models of the serving contract (also used by test_triton.py) -------------

def linear_onnx(path: Path, input_name: str, output_name: str, n_in: int, n_out: int,
                seed: int, *, vector: bool) -> Path:
    """sigmoid(x W + b): (N, n_in) -> (N,) when ``vector`` else (N, n_out)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(size=(n_in, n_out)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(size=(n_out,)).astype(np.float32), "b")]
    nodes = [helper.make_node("MatMul", [input_name, "W"], ["xw"]),
             helper.make_node("Add", ["xw", "b"], ["z"]),
             helper.make_node("Sigmoid", ["z"], ["s" if vector else output_name])]
    if vector:
        inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axis"))
        nodes.append(helper.make_node("Squeeze", ["s", "axis"], [output_name]))
        out = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [None])
    else:
        out = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [None, n_out])
    graph = helper.make_graph(
        nodes, output_name, [helper.make_tensor_value_info(input_name, TensorProto.FLOAT,
                                                           [None, n_in])], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def lgbm_onnx(path: Path, input_name: str, output_name: str, n_in: int, seed: int) -> Path:
    """A tiny LightGBM classifier exported the way training exports (models.lgbm_onnx)."""
    import lightgbm as lgb

    from models.lgbm_onnx import lgbm_to_onnx

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(600, n_in)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=600) > 0).astype(int)
    booster = lgb.train({"objective": "binary", "num_leaves": 7, "verbose": -1, "seed": seed},
                        lgb.Dataset(x, y), num_boost_round=15)
    model = lgbm_to_onnx(booster, n_in, input_name=input_name, output_name=output_name)
    onnx.save(model, str(path))
    return path


def contract_models(folder: Path, *, ctr_seed: int = 1) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "ctr": lgbm_onnx(folder / f"ctr-{ctr_seed}.onnx", "ctr_features", "pctr", F_CTR,
                         ctr_seed),
        "fraud": lgbm_onnx(folder / "fraud.onnx", "fraud_features", "p_fraud", F_FRAUD, 2),
        "shading": linear_onnx(folder / "shading.onnx", "shading_features", "landscape",
                               F_SHADING, P_SHADING, 3, vector=False),
    }


def random_auction(rng: np.random.Generator, k: int = 20, *, fraud: bool = True,
                   shading: bool = True) -> AuctionInputs:
    return AuctionInputs(
        ctr=rng.normal(size=(k, F_CTR)).astype(np.float32),
        fraud=rng.normal(size=(1, F_FRAUD)).astype(np.float32) if fraud else None,
        shading=rng.normal(size=(k, F_SHADING)).astype(np.float32) if shading else None)


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return contract_models(tmp_path_factory.mktemp("onnx"))


def _config(repo: Path, name: str) -> pb.ModelConfig:
    return text_format.Parse((repo / name / "config.pbtxt").read_text(), pb.ModelConfig())


# ---- repository ------------------------------------------------------------------------

def test_repository_layout_and_configs(onnx_models: dict[str, Path], tmp_path: Path) -> None:
    versions = {"ctr": "3", "fraud": "1", "shading": "2"}
    repo = write_repository(onnx_models, versions, tmp_path / "repo", max_batch_size=64,
                            instances=2)
    for name, version in versions.items():
        assert (repo / name / version / "model.onnx").read_bytes() == \
            onnx_models[name].read_bytes()
        cfg = _config(repo, name)
        assert cfg.name == name
        assert (cfg.platform, cfg.backend) == ("onnxruntime_onnx", "onnxruntime")
        assert cfg.max_batch_size == 64
        assert cfg.HasField("dynamic_batching")
        assert [(g.kind, g.count) for g in cfg.instance_group] == \
            [(pb.ModelInstanceGroup.KIND_CPU, 2)]
        assert cfg.parameters["adplatform.registry_version"].string_value == version
        assert cfg.parameters["intra_op_thread_count"].string_value == "1"
    ctr = _config(repo, "ctr")
    assert [(i.name, list(i.dims)) for i in ctr.input] == [("ctr_features", [F_CTR])]
    # A (K,) output under batching: dims [1] with an empty reshape.
    assert ctr.output[0].name == "pctr" and list(ctr.output[0].dims) == [1]
    assert ctr.output[0].HasField("reshape") and list(ctr.output[0].reshape.shape) == []
    shading = _config(repo, "shading")
    assert list(shading.output[0].dims) == [P_SHADING]
    assert not shading.output[0].HasField("reshape")

    auction = _config(repo, AUCTION)
    assert auction.backend == "python" and auction.max_batch_size == 0
    assert (repo / AUCTION / "1" / "model.py").is_file()
    inputs = {i.name: (list(i.dims), i.optional) for i in auction.input}
    assert inputs == {"ctr_features": ([-1, F_CTR], False),
                      "fraud_features": ([1, F_FRAUD], True),
                      "shading_features": ([-1, F_SHADING], True)}
    outputs = {o.name: list(o.dims) for o in auction.output}
    assert outputs == {"pctr": [-1], "p_fraud": [1], "landscape": [-1, P_SHADING],
                       "versions": [1]}
    assert json.loads(auction.parameters["adplatform.versions"].string_value) == versions
    assert (repo / MARKER).is_file()


def test_every_config_parses_with_tritons_protobuf(onnx_models: dict[str, Path],
                                                   tmp_path: Path) -> None:
    repo = write_repository(onnx_models, {"ctr": "1", "fraud": "1", "shading": "1"},
                            tmp_path / "repo")
    configs = sorted(repo.glob("*/config.pbtxt"))
    assert [c.parent.name for c in configs] == ["auction", "ctr", "fraud", "shading"]
    for path in configs:
        cfg = parse_config(path.read_text())
        assert cfg.name == path.parent.name
    with pytest.raises(text_format.ParseError):
        parse_config('name: "x"\nmax_batch_size: "many"\n')


def test_only_ctr_and_gpu_kind(onnx_models: dict[str, Path], tmp_path: Path) -> None:
    repo = write_repository({"ctr": onnx_models["ctr"]}, {"ctr": "7"}, tmp_path / "repo",
                            kind="KIND_GPU")
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == ["auction", "ctr"]
    assert _config(repo, "ctr").instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    auction = _config(repo, AUCTION)
    assert auction.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
    assert json.loads(auction.parameters["adplatform.versions"].string_value) == {"ctr": "7"}
    widths = {o.name: list(o.dims) for o in auction.output}
    assert widths["landscape"] == [-1, -1]


def test_rewrite_replaces_a_generated_repository(onnx_models: dict[str, Path],
                                                 tmp_path: Path) -> None:
    out = tmp_path / "repo"
    write_repository(onnx_models, {"ctr": "1", "fraud": "1", "shading": "1"}, out)
    write_repository({"ctr": onnx_models["ctr"]}, {"ctr": "2"}, out)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["auction", "ctr"]
    assert [p.name for p in (out / "ctr").iterdir() if p.is_dir()] == ["2"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".repo-")]  # no staging


@pytest.mark.parametrize(("models", "versions", "error", "match"), [
    ({}, {}, ValueError, "needs a ctr model"),
    ({"ctr": "ctr", "popularity": "ctr"}, {"ctr": "1", "popularity": "1"}, ValueError,
     "unknown model names"),
    ({"ctr": "ctr"}, {"ctr": "v1"}, ValueError, "positive integers"),
    ({"ctr": "ctr"}, {}, ValueError, "no registry version"),
    ({"ctr": "fraud"}, {"ctr": "1"}, ValueError, "must map 'ctr_features' -> 'pctr'"),
])
def test_bad_repository_inputs(onnx_models: dict[str, Path], tmp_path: Path,
                               models: dict[str, str], versions: dict[str, str],
                               error: type[Exception], match: str) -> None:
    paths = {name: onnx_models[which] for name, which in models.items() if which in onnx_models}
    with pytest.raises(error, match=match):
        write_repository(paths, versions, tmp_path / "repo")


def test_refuses_to_replace_a_foreign_folder(onnx_models: dict[str, Path],
                                             tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        write_repository({"ctr": onnx_models["ctr"]}, {"ctr": "1"}, out)
    assert (out / "notes.txt").read_text() == "keep me"


def test_read_signature(onnx_models: dict[str, Path]) -> None:
    sig = read_signature(onnx_models["ctr"])
    assert (sig.input_name, sig.output_name) == ("ctr_features", "pctr")
    assert sig.input_shape == (-1, F_CTR) and sig.output_shape == (-1,) and sig.batchable


# ---- venv --------------------------------------------------------------------------------

def test_ensure_venv_is_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], what: str, timeout_s: float) -> str:
        calls.append(cmd)
        if cmd[1:3] == ["-m", "venv"]:
            (Path(cmd[3]) / "bin").mkdir(parents=True)
            (Path(cmd[3]) / "bin" / "python").write_text("")
        return ""

    monkeypatch.setattr(triton_venv, "_run", fake_run)
    path = tmp_path / "venv"
    assert triton_venv.ensure_venv(path, python="python3.11") == path
    assert calls[0] == ["python3.11", "-m", "venv", str(path)]
    assert calls[1][-2:] == ["-r", str(triton_venv.REQUIREMENTS)]
    assert (path / triton_venv.STAMP).is_file()
    triton_venv.ensure_venv(path, python="python3.11")
    assert len(calls) == 2                                  # the stamp made it a no-op


def test_requirements_are_pinned() -> None:
    lines = [line.split("#")[0].strip() for line in
             triton_venv.REQUIREMENTS.read_text().splitlines()]
    reqs = [line for line in lines if line]
    assert all("==" in r for r in reqs), reqs
    names = {r.split("==")[0].lower() for r in reqs}
    assert {"nvidia-pytriton", "numpy", "onnxruntime", "protobuf"} <= names
    numpy_pin = next(r for r in reqs if r.lower().startswith("numpy=="))
    assert numpy_pin.split("==")[1].startswith("1.")


# ---- client without a server ---------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_no_server_is_unavailable_at_once(protocol: str) -> None:
    (port,) = free_ports(1)
    backend = TritonBackend(f"127.0.0.1:{port}", protocol, timeout_s=5.0)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    try:
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(BackendUnavailable):
                backend.score(random_auction(rng))
            assert time.monotonic() - started < 1.0
        with pytest.raises(BackendUnavailable):
            backend.versions()
    finally:
        backend.close()
    with pytest.raises(BackendUnavailable, match="closed"):
        backend.score(random_auction(rng))


def test_client_checks_its_inputs() -> None:
    with pytest.raises(ValueError, match="protocol"):
        TritonBackend("127.0.0.1:1", "tcp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout_s"):
        TritonBackend("127.0.0.1:1", timeout_s=0)
    backend = TritonBackend("127.0.0.1:1")
    assert isinstance(backend, ModelBackend)
    with pytest.raises(ValueError, match="ctr must be a"):
        backend.score(AuctionInputs(ctr=np.zeros(F_CTR, dtype=np.float32)))
    empty = backend.score(AuctionInputs(ctr=np.zeros((0, F_CTR), dtype=np.float32)))
    assert empty.pctr.shape == (0,)
    backend.close()


# ---- from the MLflow registry --------------------------------------------------------------

@pytest.mark.slow
def test_repository_from_registry_serves_ctr_alone(onnx_models: dict[str, Path],
                                                   settings: Settings, tmp_path: Path) -> None:
    import mlflow

    from mlops.registry import ensure_experiment, register
    from serving.triton.repository import repository_from_registry

    ensure_experiment(settings, "ctr")
    with mlflow.start_run():
        info = mlflow.onnx.log_model(onnx.load(str(onnx_models["ctr"])), name="model",
                                     save_as_external_data=False)
        version, alias = register(settings, info.model_uri, "ctr", {})
    assert alias == "champion"
    repo = repository_from_registry(settings, tmp_path / "repo", max_batch_size=32)
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == ["auction", "ctr"]
    assert (repo / "ctr" / version / "model.onnx").read_bytes() == \
        onnx_models["ctr"].read_bytes()
    assert _config(repo, "ctr").max_batch_size == 32

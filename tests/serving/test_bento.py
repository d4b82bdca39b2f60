"""The BentoML backend against real ``bentoml serve`` processes.

A temporary MLflow registry (SQLite) holds a LightGBM ctr model exported to ONNX and
small fraud and shading models, all ``@champion``. One server serves it for the whole
module; the kill, failed-start and restart tests start their own.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnx
import orjson
import psutil
import pytest

from adplatform.config import Settings
from adplatform.ports import free_port
from serving.base import AuctionInputs, AuctionScores
from serving.bento.client import BentoBackend
from serving.bento.codec import encode_array
from serving.bento.process import BentoProcess, repo_root, start_bento
from serving.errors import BackendTimeout, BackendUnavailable, ServingError
from serving.onnx_backend import ModelFile, OnnxBackend
from tests.serving.test_bento_unit import F_CTR, auction, fraud_onnx, shading_onnx

pytestmark = pytest.mark.services

N_AUCTIONS, K = 1_000, 20
TOLERANCE = 1e-5


def lgbm_ctr_onnx(seed: int) -> onnx.ModelProto:
    """A small LightGBM click model with the ctr contract (ctr_features -> pctr)."""
    import lightgbm as lgb

    from models.lgbm_onnx import lgbm_to_onnx

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4_000, F_CTR)).astype(np.float32)
    x[rng.random(size=x.shape) < 0.05] = np.nan
    logit = np.nan_to_num(x[:, 0] + x[:, 1] * x[:, 2]) - 3.0
    y = (rng.random(len(x)) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
    params = {"objective": "binary", "num_leaves": 15, "min_data_in_leaf": 20, "seed": seed,
              "num_threads": 1, "verbose": -1, "deterministic": True}
    booster = lgb.train(params, lgb.Dataset(x, y), num_boost_round=60)
    return lgbm_to_onnx(booster, F_CTR, input_name="ctr_features", output_name="pctr")


def register_onnx(settings: Settings, name: str, model: onnx.ModelProto) -> str:
    """Log an ONNX model as ``training/ctr.py`` does and register it; returns the version."""
    import mlflow

    from mlops.registry import ensure_experiment, register

    ensure_experiment(settings, "bento-tests")
    with mlflow.start_run(run_name=f"{name}-bento-test"):
        info = mlflow.onnx.log_model(model, name="model", save_as_external_data=False,
                                     pip_requirements=["onnxruntime"])
        version, _ = register(settings, info.model_uri, name, {"input": name})
    return version


def set_alias(settings: Settings, name: str, alias: str, version: str) -> None:
    from mlops.registry import configure

    configure(settings).set_registered_model_alias(name, alias, version)


@dataclass(frozen=True)
class Registry:
    settings: Settings
    env: dict[str, str]          # what a bentoml serve child needs to find it


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    root = tmp_path_factory.mktemp("bento")
    settings = Settings(home=root / "ws")
    assert register_onnx(settings, "ctr", lgbm_ctr_onnx(seed=1)) == "1"
    register_onnx(settings, "fraud", fraud_onnx())
    register_onnx(settings, "shading", shading_onnx())
    env = {"ADPLATFORM_HOME": str(settings.home), "ADPLATFORM_MLFLOW_TRACKING_URI": "",
           "ADPLATFORM_BENTO_ALIAS": "champion", "BENTOML_HOME": str(root / "bentoml")}
    return Registry(settings=settings, env=env)


@pytest.fixture(scope="module")
def bento(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BentoProcess]:
    proc = start_bento(free_port(), registry.env, log_dir=tmp_path_factory.mktemp("bento-logs"))
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def reference(registry: Registry) -> OnnxBackend:
    """The in-process backend on the same registered files."""
    from mlops.registry import resolve

    files = []
    for name in ("ctr", "fraud", "shading"):
        m = resolve(registry.settings, name)
        files.append(ModelFile(name=name, version=m.version, path=m.onnx_path))
    return OnnxBackend(files)


@pytest.fixture
def backend(bento: BentoProcess) -> Iterator[BentoBackend]:
    with BentoBackend(bento.url, timeout_s=5.0) as b:
        yield b


def test_ready_after_start_and_serves_every_registered_model(bento: BentoProcess,
                                                            backend: BentoBackend) -> None:
    resp = httpx.get(f"{bento.url}/readyz", timeout=5.0, trust_env=False)
    assert resp.status_code == 200
    assert backend.versions() == {"ctr": "1", "fraud": "1", "shading": "1"}


def _max_diff(got: np.ndarray | float | None, want: np.ndarray | float | None) -> float:
    assert (got is None) == (want is None)
    if got is None or want is None:
        return 0.0
    return float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))))


def test_parity_with_in_process_onnx_on_1000_auctions(backend: BentoBackend,
                                                      reference: OnnxBackend,
                                                      record_property: Callable[[str, object], None]
                                                      ) -> None:
    rng = np.random.default_rng(42)
    worst = 0.0
    for i in range(N_AUCTIONS):
        a = auction(rng, K, fraud=i % 3 != 0, shading=i % 4 != 0)
        got, want = backend.score(a), reference.score(a)
        assert got.pctr.shape == (K,) and got.pctr.dtype == np.float32
        worst = max(worst, _max_diff(got.pctr, want.pctr), _max_diff(got.fraud, want.fraud),
                    _max_diff(got.shading, want.shading))
        assert got.versions == want.versions
    record_property("max_abs_diff", worst)
    assert worst <= TOLERANCE


def test_batched_endpoint_under_concurrency_matches(bento: BentoProcess,
                                                    reference: OnnxBackend) -> None:
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(7)
    auctions = [auction(rng, K, fraud=i % 2 == 0) for i in range(200)]
    with BentoBackend(bento.url, timeout_s=5.0, batched=True) as batched:
        for a in auctions[:20]:          # BentoML's dispatcher calibrates on its first calls
            batched.score(a)

        def score(a: AuctionInputs) -> AuctionScores:
            # The dispatcher sheds (503 -> BackendUnavailable) what would wait past its
            # max latency; a loaded test machine may see that, so shed auctions go again.
            for _ in range(20):
                try:
                    return batched.score(a)
                except BackendUnavailable:
                    time.sleep(0.01)
            return batched.score(a)

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(score, auctions))
    for a, got in zip(auctions, results, strict=True):
        want = reference.score(a)
        assert _max_diff(got.pctr, want.pctr) <= TOLERANCE
        assert _max_diff(got.fraud, want.fraud) <= TOLERANCE
        assert _max_diff(got.shading, want.shading) <= TOLERANCE


def test_bad_auction_is_a_clear_400_and_spares_its_batch(bento: BentoProcess,
                                                        backend: BentoBackend) -> None:
    with pytest.raises(ServingError, match=f"ctr has 5 features.*reads {F_CTR}"):
        backend.score(AuctionInputs(ctr=np.zeros((3, 5), np.float32)))
    good = auction(np.random.default_rng(1), 4)
    body = {"auctions": [{"ctr": encode_array(np.zeros((2, 5), np.float32))},
                         {"ctr": encode_array(good.ctr)}]}
    resp = httpx.post(f"{bento.url}/score_auctions", content=orjson.dumps(body),
                      headers={"content-type": "application/json"}, timeout=5.0, trust_env=False)
    assert resp.status_code == 200
    bad, ok = resp.json()
    assert "ctr has 5 features" in bad["error"]
    assert ok["error"] is None and ok["pctr"]["shape"] == [4]
    resp = httpx.post(f"{bento.url}/score_auction", content=b'{"auction": {"ctr": 1}}',
                      headers={"content-type": "application/json"}, timeout=5.0, trust_env=False)
    assert resp.status_code == 400


def test_tiny_timeout_raises_backend_timeout(bento: BentoProcess, backend: BentoBackend) -> None:
    big = auction(np.random.default_rng(2), 20_000, fraud=False, shading=False)
    with BentoBackend(bento.url, timeout_s=0.002) as hurried:
        t0 = time.monotonic()
        with pytest.raises(BackendTimeout):
            hurried.score(big)
        assert time.monotonic() - t0 < 1.0
    assert backend.score(auction(np.random.default_rng(3), K)).pctr.shape == (K,)


def _nobody_listens(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
    return False


def test_killed_server_is_unavailable_at_once(registry: Registry, tmp_path: Path) -> None:
    proc = start_bento(free_port(), registry.env, log_dir=tmp_path)
    try:
        with BentoBackend(proc.url, timeout_s=5.0) as client:
            a = auction(np.random.default_rng(4), K)
            client.score(a)                           # leaves a pooled keep-alive connection
            proc.kill()
            assert not proc.is_running()
            for _ in range(3):
                t0 = time.monotonic()
                with pytest.raises(BackendUnavailable):
                    client.score(a)
                assert time.monotonic() - t0 < 0.5
    finally:
        proc.stop()


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def test_start_without_ctr_fails_fast_with_the_reason(registry: Registry, tmp_path: Path) -> None:
    port = free_port()
    env = {**registry.env, "ADPLATFORM_BENTO_ALIAS": "ctr=no-such-alias"}
    before = _children()
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable, match="models:/ctr@no-such-alias"):
        start_bento(port, env, log_dir=tmp_path, ready_timeout_s=120.0)
    assert time.monotonic() - t0 < 60.0               # not the ready timeout
    assert _children() <= before                      # nothing left behind
    assert _nobody_listens(port)


def test_restart_after_alias_move_serves_new_version_without_failed_requests(
        registry: Registry, tmp_path: Path) -> None:
    settings = registry.settings
    # Only ctr carries this alias: the server must run without fraud and shading.
    set_alias(settings, "ctr", "bluegreen", "1")
    env = {**registry.env, "ADPLATFORM_BENTO_ALIAS": "bluegreen"}
    proc = start_bento(free_port(), env, log_dir=tmp_path)
    client = BentoBackend(proc.url, timeout_s=2.0)
    try:
        assert client.versions() == {"ctr": "1"}
        a = auction(np.random.default_rng(5), K)
        first = client.score(a)
        assert first.fraud is None and first.shading is None

        version = register_onnx(settings, "ctr", lgbm_ctr_onnx(seed=2))
        set_alias(settings, "ctr", "bluegreen", version)

        served: list[str] = []
        failures: list[BaseException] = []
        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set():
                try:
                    served.append(client.score(a).versions["ctr"])
                except ServingError as exc:
                    failures.append(exc)

        sender = threading.Thread(target=traffic)
        sender.start()
        old_port = proc.port
        try:
            new_url = proc.restart(on_ready=client.set_url, drain_s=0.5)
            time.sleep(0.3)
        finally:
            stop.set()
            sender.join()
        assert failures == []
        assert new_url == proc.url == client.url and proc.port != old_port
        # Version 1 until the new server was ready, version 2 after, never back.
        switch = served.index(version)
        assert switch > 0 and set(served[:switch]) == {"1"} and set(served[switch:]) == {version}
        assert client.versions() == {"ctr": version}
        assert not np.array_equal(client.score(a).pctr, first.pctr)
        assert _nobody_listens(old_port)
    finally:
        client.close()
        proc.stop()


@pytest.mark.slow
def test_bentoml_build_succeeds(tmp_path: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    out = subprocess.run([sys.executable, "-m", "bentoml", "build", "-o", "tag"],
                         cwd=repo_root(), env=env, capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    tag = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    assert tag.startswith("adplatform_auction:")
    bento_dir = tmp_path / "bentoml" / "bentos" / "adplatform_auction" / tag.split(":")[1]
    src = bento_dir / "src"
    for module in ("serving/bento/service.py", "serving/onnx_backend.py", "mlops/registry.py",
                   "adplatform/config.py"):
        assert (src / module).is_file(), module
    assert not (src / "tests").exists()

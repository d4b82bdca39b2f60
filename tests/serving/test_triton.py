"""TritonBackend against a real tritonserver (PyTriton's binary, in the Triton venv).

Two engines serve the same generated repository: ``pytriton`` (PyTriton's Python API)
and ``native`` (the bundled tritonserver binary running the repository's production
``auction/1/model.py`` BLS). The first start of the session creates ``.venv-triton``
when it is missing (pip install, under a minute with a warm cache).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adplatform.ports import free_ports
from serving.base import AuctionInputs, AuctionScores
from serving.errors import BackendTimeout, BackendUnavailable
from serving.onnx_backend import ModelFile, OnnxBackend
from serving.triton.client import TritonBackend
from serving.triton.repository import write_repository
from serving.triton.server import TritonProcess, start_server
from serving.triton.venv import ensure_venv
from tests.serving.test_triton_repository import contract_models, random_auction

pytestmark = pytest.mark.services

N_AUCTIONS = 1_000
K = 20
TOLERANCE = 1e-5
SLEEP_S = 1.5
VERSIONS = {"ctr": "3", "fraud": "1", "shading": "2"}


@pytest.fixture(scope="session")
def triton_venv() -> Path:
    return ensure_venv()


@pytest.fixture(scope="session")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("triton-onnx")
    files = contract_models(folder)
    files["ctr_v2"] = contract_models(folder / "v2", ctr_seed=5)["ctr"]
    return files


@pytest.fixture(scope="session")
def full_repo(onnx_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = {name: onnx_files[name] for name in VERSIONS}
    return write_repository(models, VERSIONS, tmp_path_factory.mktemp("triton") / "repo",
                            max_batch_size=64, instances=1)


@pytest.fixture(scope="session")
def reference(onnx_files: dict[str, Path]) -> Iterator[OnnxBackend]:
    backend = OnnxBackend([ModelFile(n, v, onnx_files[n]) for n, v in VERSIONS.items()])
    yield backend
    backend.close()


def _start(repo: Path, venv: Path, **options: Any) -> TritonProcess:
    http_port, grpc_port = free_ports(2)
    return start_server(repo, http_port, grpc_port, venv=venv, **options)


@pytest.fixture(scope="session")
def pytriton_server(full_repo: Path, triton_venv: Path) -> Iterator[TritonProcess]:
    proc = _start(full_repo, triton_venv, sleep_model_s=SLEEP_S)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def native_server(full_repo: Path, triton_venv: Path) -> Iterator[TritonProcess]:
    proc = _start(full_repo, triton_venv, engine="native")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(params=["pytriton", "native"])
def server(request: pytest.FixtureRequest) -> TritonProcess:
    proc: TritonProcess = request.getfixturevalue(f"{request.param}_server")
    return proc


def _url(proc: TritonProcess, protocol: str) -> str:
    return proc.grpc_url if protocol == "grpc" else proc.http_url


def _successes(proc: TritonProcess) -> dict[str, int]:
    stats = proc.statistics()["model_stats"]
    return {s["name"]: int(s["inference_stats"]["success"]["count"]) for s in stats}


def _max_diff(got: AuctionScores, want: AuctionScores) -> float:
    assert got.pctr.shape == want.pctr.shape and got.pctr.dtype == np.float32
    diff = float(np.max(np.abs(got.pctr - want.pctr)))
    if want.fraud is not None:
        assert got.fraud is not None
        diff = max(diff, abs(got.fraud - want.fraud))
    else:
        assert got.fraud is None
    if want.shading is not None:
        assert got.shading is not None and got.shading.shape == want.shading.shape
        diff = max(diff, float(np.max(np.abs(got.shading - want.shading))))
    else:
        assert got.shading is None
    return diff


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_parity_and_one_request_per_auction(server: TritonProcess, protocol: str,
                                            reference: OnnxBackend) -> None:
    backend = TritonBackend(_url(server, protocol), protocol, timeout_s=5.0)  # type: ignore[arg-type]
    client = backend._client()
    sent = {"count": 0}
    infer = client.infer

    def counting_infer(*args: Any, **kwargs: Any) -> Any:
        sent["count"] += 1
        return infer(*args, **kwargs)

    client.infer = counting_infer
    rng = np.random.default_rng(42)
    before = _successes(server)
    worst = 0.0
    try:
        for i in range(N_AUCTIONS):
            auction = random_auction(rng, K, fraud=i % 3 != 0, shading=i % 5 != 0)
            got = backend.score(auction)
            worst = max(worst, _max_diff(got, reference.score(auction)))
            assert got.versions == VERSIONS
    finally:
        backend.close()
    # Triton counts a request when it releases it, just after the response went out:
    # the last few may not be in the statistics yet when the client has its answer.
    deadline = time.monotonic() + 5.0
    after = _successes(server)
    while after["auction"] - before["auction"] < N_AUCTIONS and time.monotonic() < deadline:
        time.sleep(0.05)
        after = _successes(server)
    assert worst <= TOLERANCE
    assert sent["count"] == N_AUCTIONS                     # one request per score() ...
    assert after["auction"] - before["auction"] == N_AUCTIONS   # ... and one server round trip
    if server.engine == "pytriton":                        # nothing else reached the server
        assert {n: after[n] - before.get(n, 0) for n in after if n != "auction"} == \
            {n: 0 for n in after if n != "auction"}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_versions_from_the_server(server: TritonProcess, protocol: str) -> None:
    backend = TritonBackend(_url(server, protocol), protocol, timeout_s=5.0)  # type: ignore[arg-type]
    try:
        assert backend.versions() == VERSIONS
    finally:
        backend.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_slow_model_times_out_at_the_timeout(pytriton_server: TritonProcess,
                                             protocol: str, reference: OnnxBackend) -> None:
    backend = TritonBackend(_url(pytriton_server, protocol), protocol,  # type: ignore[arg-type]
                            timeout_s=0.3, model="auction_sleep")
    rng = np.random.default_rng(7)
    try:
        backend.versions()                                 # connect first: time only the call
        started = time.monotonic()
        with pytest.raises(BackendTimeout):
            backend.score(random_auction(rng))
        elapsed = time.monotonic() - started
        # Not before the timeout, and before the model's answer (SLEEP_S): the timeout
        # ended the call. No tighter bound: a loaded machine stretches any wall clock.
        assert 0.25 <= elapsed < SLEEP_S, elapsed
        # The late answer to the timed-out request must not leak into the next call.
        backend.timeout_s = 3 * SLEEP_S + 2
        auction = random_auction(rng)
        assert _max_diff(backend.score(auction), reference.score(auction)) <= TOLERANCE
    finally:
        backend.close()


@pytest.mark.parametrize("engine", ["pytriton", "native"])
def test_reload_follows_a_new_version_with_only_ctr(engine: str, onnx_files: dict[str, Path],
                                                    triton_venv: Path,
                                                    tmp_path: Path) -> None:
    repo_v1 = write_repository({"ctr": onnx_files["ctr"]}, {"ctr": "1"}, tmp_path / "v1")
    repo_v2 = write_repository({"ctr": onnx_files["ctr_v2"]}, {"ctr": "2"}, tmp_path / "v2")
    ref_v1 = OnnxBackend([ModelFile("ctr", "1", onnx_files["ctr"])])
    ref_v2 = OnnxBackend([ModelFile("ctr", "2", onnx_files["ctr_v2"])])
    rng = np.random.default_rng(3)
    auction = random_auction(rng)                          # fraud and shading sent, not served
    proc = _start(repo_v1, triton_venv, engine=engine)
    backend = TritonBackend(proc.grpc_url, "grpc", timeout_s=5.0)
    try:
        first = backend.score(auction)
        assert first.versions == {"ctr": "1"} and backend.versions() == {"ctr": "1"}
        assert first.fraud is None and first.shading is None
        assert _max_diff(first, ref_v1.score(AuctionInputs(ctr=auction.ctr))) <= TOLERANCE
        ports = (proc.http_port, proc.grpc_port)
        proc.reload(repo_v2)
        assert (proc.http_port, proc.grpc_port) == ports       # clients keep their URL
        deadline = time.monotonic() + 10
        while True:                                        # the channel reconnects by itself
            try:
                second = backend.score(auction)
                break
            except BackendUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert second.versions == {"ctr": "2"}
        assert _max_diff(second, ref_v2.score(AuctionInputs(ctr=auction.ctr))) <= TOLERANCE
        assert float(np.max(np.abs(second.pctr - first.pctr))) > 1e-3   # really the new model
    finally:
        backend.close()
        proc.stop()
        ref_v1.close()
        ref_v2.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_killed_server_is_unavailable_at_once(protocol: str, full_repo: Path,
                                              triton_venv: Path) -> None:
    proc = _start(full_repo, triton_venv, engine="native")
    backend = TritonBackend(_url(proc, protocol), protocol, timeout_s=5.0)  # type: ignore[arg-type]
    rng = np.random.default_rng(5)
    try:
        assert backend.score(random_auction(rng)).versions == VERSIONS
        proc.kill()
        assert not proc.alive()
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(BackendUnavailable):
                backend.score(random_auction(rng))
            assert time.monotonic() - started < 0.5
    finally:
        backend.close()
        proc.stop()

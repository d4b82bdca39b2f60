"""The alias watcher and its followers.

Unit tests drive :class:`AliasWatcher` with an in-memory registry; the rest use a
sandbox copy of the trained workspace's registry (see ``tests/mlops/test_promotion.py``)
and move ``ctr@champion`` for real.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adplatform.config import Settings
from mlops.registry import CHAMPION, configure, resolve
from serving.base import AuctionInputs
from serving.errors import ServingError
from serving.onnx_backend import ModelFile, OnnxBackend
from serving.watcher import (
    AliasWatcher,
    BentoFollower,
    OnnxFollower,
    TritonFollower,
    backoff_s,
    probe_model,
)
from tests.mlops.test_promotion import (
    constant_ctr_onnx,
    register_champion_copy,
    register_onnx,
    sandbox,
)

Move = tuple[str, str | None, str]


class FakeRegistry:
    """``(name, alias) -> version``; ``fail`` makes the next reads raise."""

    def __init__(self, **versions: str) -> None:
        self.versions: dict[str, str | None] = dict(versions)
        self.fail = 0
        self.reads = 0
        self.resets = 0

    def __call__(self, name: str, alias: str) -> str | None:
        self.reads += 1
        if self.fail > 0:
            self.fail -= 1
            raise ConnectionError("registry unreachable")
        return self.versions.get(name)

    def reset(self) -> None:
        self.resets += 1


class Recorder:
    def __init__(self, failures: int = 0) -> None:
        self.moves: list[Move] = []
        self.failures = failures
        self.calls = 0

    def __call__(self, name: str, old: str | None, new: str) -> None:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("swap failed")
        self.moves.append((name, old, new))


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        time.sleep(0.02)
    return time.monotonic() - t0


# ---------------------------------------------------------------------- unit


def test_subscribers_hear_moves_and_new_models() -> None:
    reg = FakeRegistry(ctr="1")
    watcher = AliasWatcher(["ctr", "fraud"], source=reg)
    served, adopter = Recorder(), Recorder()
    watcher.subscribe(served, {"ctr": "1", "fraud": None})
    watcher.subscribe(adopter)                      # no baseline: adopts what it first sees
    assert watcher.poll_once() == {"ctr": "1", "fraud": None}
    assert served.moves == [] and adopter.moves == []
    reg.versions["ctr"] = "2"
    watcher.poll_once()
    reg.versions["fraud"] = "1"
    watcher.poll_once()
    watcher.poll_once()                             # nothing moved: nobody is called again
    assert served.moves == [("ctr", "1", "2"), ("fraud", None, "1")]
    assert adopter.moves == [("ctr", "1", "2")]     # fraud: adopted, it was unknown before
    assert watcher.moves == 3


def test_a_failing_subscriber_is_retried_and_does_not_block_others() -> None:
    reg = FakeRegistry(ctr="1")
    watcher = AliasWatcher(["ctr"], source=reg, interval_s=0.01, max_backoff_s=0.05)
    flaky, steady = Recorder(failures=2), Recorder()
    watcher.subscribe(flaky, {"ctr": "1"})
    watcher.subscribe(steady, {"ctr": "1"})
    reg.versions["ctr"] = "2"
    deadline = time.monotonic() + 5
    while not flaky.moves and time.monotonic() < deadline:
        watcher.poll_once()
        time.sleep(0.005)
    assert flaky.moves == [("ctr", "1", "2")] and flaky.calls == 3
    assert steady.moves == [("ctr", "1", "2")] and steady.calls == 1


def test_thread_survives_registry_errors_and_stops(caplog: pytest.LogCaptureFixture) -> None:
    reg = FakeRegistry(ctr="1")
    reg.fail = 3
    rec = Recorder()
    watcher = AliasWatcher(["ctr"], source=reg, interval_s=0.01, max_backoff_s=0.05)
    watcher.subscribe(rec, {"ctr": "1"})
    with caplog.at_level(logging.WARNING, logger="serving.watcher"):
        with watcher:
            reg.versions["ctr"] = "7"
            wait_for(lambda: rec.moves == [("ctr", "1", "7")], 5, "the move after errors")
            assert watcher.running
        assert not watcher.running
    assert watcher.errors == 3 and reg.resets == 3
    assert "registry poll failed" in caplog.text


def test_a_removed_alias_keeps_what_is_served(caplog: pytest.LogCaptureFixture) -> None:
    reg = FakeRegistry(ctr="3")
    rec = Recorder()
    watcher = AliasWatcher(["ctr"], source=reg)
    watcher.subscribe(rec, {"ctr": "3"})
    watcher.poll_once()
    reg.versions["ctr"] = None
    with caplog.at_level(logging.WARNING, logger="serving.watcher"):
        watcher.poll_once()
    assert rec.moves == [] and "is gone" in caplog.text


def test_backoff_and_arguments() -> None:
    assert [backoff_s(n, 5.0, 60.0) for n in (1, 2, 3, 4, 5)] == [10, 20, 40, 60, 60]
    with pytest.raises(ValueError):
        AliasWatcher(["ctr"], source=FakeRegistry(), interval_s=0)
    with pytest.raises(ValueError):
        AliasWatcher(["ctr"])                       # neither settings nor source
    watcher = AliasWatcher(["ctr"], source=FakeRegistry()).start()
    with pytest.raises(RuntimeError):
        watcher.start()
    watcher.stop()


def test_importing_the_watcher_does_not_import_mlflow() -> None:
    code = ("import sys, serving.watcher; "
            "sys.exit(1 if 'mlflow' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ---------------------------------------------------------------------- real registry


@pytest.fixture(scope="module")
def reg_ws(trained_workspace: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return sandbox(trained_workspace, tmp_path_factory.mktemp("watcher") / "ws")


def _champion(settings: Settings) -> str:
    return resolve(settings, "ctr", CHAMPION).version


def _move(settings: Settings, version: str) -> None:
    configure(settings).set_registered_model_alias("ctr", CHAMPION, version)


def test_watcher_follows_the_mlflow_registry(reg_ws: Settings) -> None:
    start = _champion(reg_ws)
    rec = Recorder()
    watcher = AliasWatcher(["ctr"], settings=reg_ws, interval_s=0.2)
    watcher.subscribe(rec, {"ctr": start})
    with watcher:
        new = register_champion_copy(reg_ws)
        _move(reg_ws, new)
        wait_for(lambda: bool(rec.moves), 15, "the watcher to see the move")
        _move(reg_ws, start)
        wait_for(lambda: len(rec.moves) == 2, 15, "the move back")
    assert rec.moves == [("ctr", start, new), ("ctr", new, start)]
    assert watcher.errors == 0


def test_onnx_follower_swaps_under_load_without_failed_calls(reg_ws: Settings) -> None:
    start = _champion(reg_ws)
    backend = OnnxBackend([ModelFile("ctr", start, resolve(reg_ws, "ctr").onnx_path)])
    constant = register_onnx(reg_ws, constant_ctr_onnx(0.25), tags={})
    errors: list[BaseException] = []
    seen: dict[str, list[float]] = {}
    stop = threading.Event()
    rng = np.random.default_rng(0)
    auctions = [AuctionInputs(ctr=rng.normal(size=(20, 32)).astype(np.float32))
                for _ in range(64)]

    def score() -> None:
        i = 0
        while not stop.is_set():
            try:
                s = backend.score(auctions[i % len(auctions)])
                seen.setdefault(s.versions["ctr"], []).append(float(s.pctr.max()))
            except BaseException as exc:  # noqa: BLE001 - the test counts every failure
                errors.append(exc)
            i += 1

    worker = threading.Thread(target=score, daemon=True)
    watcher = AliasWatcher(["ctr"], settings=reg_ws, interval_s=0.2)
    watcher.subscribe(OnnxFollower(reg_ws, backend), backend.versions())
    worker.start()
    try:
        with watcher:
            time.sleep(0.3)
            _move(reg_ws, constant)
            wait_for(lambda: backend.versions()["ctr"] == constant, 20, "the swap")
            time.sleep(0.3)
    finally:
        stop.set()
        worker.join(10)
        _move(reg_ws, start)
        backend.close()
    assert errors == []
    assert len(seen[start]) > 0 and len(seen[constant]) > 0
    # OnnxBackend.score reads its sessions and its versions separately, so a call that
    # straddles the swap can score with the old session but report the new version: at
    # most a call or two. Every call after that scores with the new model.
    mislabelled = [p for p in seen[constant] if p != 0.25]
    assert len(mislabelled) <= 3
    assert set(seen[constant][len(mislabelled):]) == {0.25}


def test_onnx_follower_refuses_a_broken_model(reg_ws: Settings, tmp_path: Path) -> None:
    start = _champion(reg_ws)
    backend = OnnxBackend([ModelFile("ctr", start, resolve(reg_ws, "ctr").onnx_path)])
    wrong = register_onnx(reg_ws, constant_ctr_onnx(0.1, input_name="x"), tags={})
    narrow = register_onnx(reg_ws, constant_ctr_onnx(0.1, n_features=5), tags={})
    follower = OnnxFollower(reg_ws, backend)
    with pytest.raises(ServingError, match="contract"):
        follower("ctr", start, wrong)
    with pytest.raises(ServingError, match="features"):
        follower("ctr", start, narrow)
    assert backend.versions() == {"ctr": start}
    backend.close()
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not a model")
    with pytest.raises(ServingError, match="does not load"):
        probe_model("ctr", bogus)


class FakeTriton:
    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.reloads: list[Path] = []

    def reload(self, new_repo: Path, timeout_s: float = 180.0) -> FakeTriton:
        self.reloads.append(new_repo)
        self.repo = new_repo
        return self


def test_triton_follower_writes_a_new_repository_and_reloads(reg_ws: Settings,
                                                             tmp_path: Path) -> None:
    from serving.triton.repository import repository_from_registry

    start = _champion(reg_ws)
    root = tmp_path / "repos"
    first = repository_from_registry(reg_ws, root / "first")
    proc: Any = FakeTriton(first)
    follower = TritonFollower(reg_ws, proc, root, max_batch_size=64)
    follower("ctr", start, start)                   # serves it already: no reload
    assert proc.reloads == []
    new = register_champion_copy(reg_ws)
    _move(reg_ws, new)
    try:
        follower("ctr", start, new)
    finally:
        _move(reg_ws, start)
    assert len(proc.reloads) == 1
    assert (proc.repo / "ctr" / new / "model.onnx").is_file()
    assert not first.exists()                       # the old folder is cleaned up


class FakeBento:
    def __init__(self) -> None:
        self.port = 1
        self.url = "http://127.0.0.1:1"
        self.restarts: list[int | None] = []

    def is_running(self) -> bool:
        return True

    def restart(self, *, port: int | None = None, on_ready: Any = None,
                drain_s: float = 1.0) -> str:
        self.restarts.append(port)
        new = "http://127.0.0.1:2"
        if on_ready is not None:
            on_ready(new)
        self.url = new
        return new


class FakeClient:
    def __init__(self) -> None:
        self.urls: list[str] = []

    def set_url(self, url: str) -> None:
        self.urls.append(url)


def test_bento_follower_repoints_clients_once_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    proc, client = FakeBento(), FakeClient()
    follower = BentoFollower(proc, [client])  # type: ignore[arg-type, list-item]
    served = {"http://127.0.0.1:1": {"ctr": "1"}, "http://127.0.0.1:2": {"ctr": "2"}}
    monkeypatch.setattr(follower, "served_versions", lambda url: served[url])
    follower("ctr", "1", "1")
    assert proc.restarts == []
    follower("ctr", "1", "2")
    assert proc.restarts == [None] and client.urls == ["http://127.0.0.1:2"]
    same = BentoFollower(proc, [], same_port=True)  # type: ignore[arg-type]
    monkeypatch.setattr(same, "served_versions", lambda url: {"ctr": "1"})
    same("ctr", "1", "2")
    assert proc.restarts == [None, 1]


# ---------------------------------------------------------------------- real servers


@pytest.fixture
def bento_env(reg_ws: Settings) -> Iterator[dict[str, str]]:
    yield {"ADPLATFORM_HOME": str(reg_ws.workspace.root),
           "BENTOML_HOME": str(reg_ws.workspace.root / "bentoml")}


@pytest.mark.services
@pytest.mark.slow
def test_bento_blue_green_follow_without_failed_requests(reg_ws: Settings,
                                                         bento_env: dict[str, str]) -> None:
    from adplatform.ports import free_port
    from serving.bento import BentoBackend, start_bento
    from serving.watcher import watch_bento

    start = _champion(reg_ws)
    new = register_champion_copy(reg_ws)
    proc = start_bento(free_port(), bento_env, log_dir=reg_ws.workspace.root / "bento-logs")
    client = BentoBackend(proc.url, timeout_s=2.0)
    errors: list[BaseException] = []
    versions: list[str] = []
    stop = threading.Event()
    rng = np.random.default_rng(1)
    auction = AuctionInputs(ctr=rng.normal(size=(20, 32)).astype(np.float32))

    def load() -> None:
        while not stop.is_set():
            try:
                versions.append(client.score(auction).versions["ctr"])
            except BaseException as exc:  # noqa: BLE001 - every failure counts
                errors.append(exc)

    worker = threading.Thread(target=load, daemon=True)
    watcher = watch_bento(reg_ws, proc, [client], interval_s=0.5)
    worker.start()
    try:
        _move(reg_ws, new)
        wait_for(lambda: bool(versions) and versions[-1] == new, 120, "bento to serve the move")
        time.sleep(0.5)
    finally:
        stop.set()
        worker.join(10)
        watcher.stop()
        _move(reg_ws, start)
        client.close()
        proc.stop()
    assert errors == []
    assert versions[0] == start and versions[-1] == new


@pytest.mark.services
@pytest.mark.slow
def test_triton_follows_a_moved_alias(reg_ws: Settings, tmp_path: Path) -> None:
    from adplatform.ports import free_ports
    from serving.triton.client import TritonBackend
    from serving.triton.repository import repository_from_registry
    from serving.triton.server import start_server
    from serving.watcher import watch_triton

    start = _champion(reg_ws)
    new = register_champion_copy(reg_ws)
    root = tmp_path / "triton"
    http_port, grpc_port = free_ports(2)
    proc = start_server(repository_from_registry(reg_ws, root / "initial"), http_port, grpc_port)
    client = TritonBackend(proc.grpc_url, "grpc", timeout_s=2.0)
    watcher = watch_triton(reg_ws, proc, root, interval_s=0.5)
    try:
        assert client.versions()["ctr"] == start
        _move(reg_ws, new)
        auction = AuctionInputs(ctr=np.random.default_rng(2).normal(size=(20, 32))
                                .astype(np.float32))

        def serves_new() -> bool:
            try:
                return client.score(auction).versions.get("ctr") == new
            except ServingError:
                return False                        # restarting: the engine answers no-bid
        wait_for(serves_new, 180, "triton to serve the move")
        assert client.versions()["ctr"] == new
    finally:
        watcher.stop()
        _move(reg_ws, start)
        client.close()
        proc.stop()

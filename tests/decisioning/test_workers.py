"""Several worker processes on one port (:mod:`decisioning.workers`), over real sockets:
both workers get connections, SIGTERM drains and closes each, a dead worker is replaced,
a worker that cannot start stops the rest, and no worker outlives its supervisor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from adplatform.ports import free_port
from decisioning.buffered import next_part
from decisioning.workers import WorkerStartError, serve_workers
from tests.conftest import process_alive

ROOT = Path(__file__).resolve().parents[2]
FACTORY = "tests.decisioning.workers_app:app_factory"
WAIT_S = 120.0          # how long a step may take on a loaded CI machine (not a timing)


def _until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {WAIT_S:.0f} s")
        time.sleep(0.1)


def _who(port: int) -> dict[str, int]:
    # a new connection each time: the kernel spreads connections over the workers
    with httpx.Client(timeout=5.0) as c:
        return dict(c.get(f"http://127.0.0.1:{port}/who").json())


class Supervisor:
    def __init__(self, tmp: Path, workers: int = 2) -> None:
        self.port = free_port()
        self.out = tmp
        code = ("import sys; from decisioning.workers import serve_workers; "
                f"sys.exit(serve_workers({FACTORY!r}, ({str(tmp)!r},), workers={workers}, "
                f"port={self.port}, graceful_timeout_s=5))")
        self.log = (tmp / "supervisor.log").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def ready(self) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, (self.out / "supervisor.log").read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{self.port}/readyz",
                                 timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False
        _until("the workers listen", up)

    def pids(self, n: int) -> set[int]:
        """The worker pids seen over ``n`` fresh connections."""
        return {_who(self.port)["pid"] for _ in range(n)}

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=WAIT_S)
        self.log.close()
        return code


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    s = Supervisor(tmp_path)
    try:
        yield s
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


def test_part_numbers_of_workers_never_meet(tmp_path: Path) -> None:
    base = tmp_path / "decisions"
    assert [next_part(base, (i, 3)) for i in range(3)] == [0, 1, 2]
    (base / "date=2026-12-06").mkdir(parents=True)
    (base / "date=2026-12-06" / "part-00004.parquet").write_bytes(b"")
    # after a restart each worker starts past every part already there
    assert [next_part(base, (i, 2)) for i in range(2)] == [6, 5]
    assert next_part(base) == 5
    with pytest.raises(ValueError, match="worker"):
        next_part(base, (2, 2))


def test_two_workers_share_the_port_and_drain_on_sigterm(supervisor: Supervisor) -> None:
    supervisor.ready()
    seen = supervisor.pids(40)
    assert len(seen) == 2                   # 40 connections: both workers accept
    info = [_who(supervisor.port) for _ in range(10)]
    assert {i["count"] for i in info} == {2} and {i["index"] for i in info} <= {0, 1}
    assert supervisor.stop() == 0
    for pid in seen:
        assert not process_alive(pid)
        # uvicorn's graceful shutdown ran the lifespan, then the factory exited
        assert len(list(supervisor.out.glob(f"lifespan-*-{pid}"))) == 1
        assert len(list(supervisor.out.glob(f"exited-*-{pid}"))) == 1


def test_a_killed_worker_is_replaced(supervisor: Supervisor) -> None:
    supervisor.ready()
    first = supervisor.pids(40)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        # A connection the kernel queued on the killed worker's socket is reset as it
        # closes (an exchange retries it): not yet replaced, try again.
        try:
            return len(supervisor.pids(20) - first) == 1
        except httpx.TransportError:
            return False

    _until("a replacement worker answers", replaced)
    now = supervisor.pids(40)
    assert victim not in now and len(now) == 2
    assert supervisor.stop() == 0
    assert "starting a new one" in (supervisor.out / "supervisor.log").read_text()


def test_workers_leave_when_their_supervisor_is_killed(supervisor: Supervisor) -> None:
    supervisor.ready()
    pids = supervisor.pids(40)
    supervisor.proc.kill()
    supervisor.proc.wait()
    _until("orphaned workers exit", lambda: not any(process_alive(p) for p in pids))
    for pid in pids:             # and they left gracefully: lifespan and factory closed
        assert list(supervisor.out.glob(f"exited-*-{pid}"))


def test_a_worker_that_cannot_start_stops_them_all(tmp_path: Path) -> None:
    with pytest.raises(WorkerStartError, match="no model to serve"):
        serve_workers(FACTORY, (str(tmp_path), True), workers=2, port=free_port())


def test_a_port_already_served_by_another_program_fails_at_once() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            serve_workers(FACTORY, ("/nonexistent",), workers=2,
                          port=taken.getsockname()[1])

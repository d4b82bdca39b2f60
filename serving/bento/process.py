"""Run ``bentoml serve`` as a child process behind its readiness check.

:func:`start_bento` runs ``bentoml serve serving.bento.service:AuctionService --port P``
(with this interpreter, from the repository root), and returns once ``/readyz`` answers
200, which the service gives only after its models are loaded. A start that fails (no
``ctr`` model, port taken) is reported with the tail of the server log instead of
waiting: BentoML's supervisor would otherwise respawn a failing worker forever.

Alias moves are picked up by :meth:`BentoProcess.restart`, blue/green: a replacement
server starts on another port while the old one keeps serving; only once the
replacement's ``/readyz`` is 200 does ``on_ready(new_url)`` repoint the clients
(:meth:`serving.bento.client.BentoBackend.set_url`), then the old server drains for
``drain_s`` and stops gracefully (in-flight requests finish). If the replacement never
gets ready it is stopped and the old server keeps serving. Restarting onto the same
port cannot overlap (one listening socket per port), so it stops first and is
unavailable for the start-up time; clients see :class:`BackendUnavailable` meanwhile.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import psutil

from adplatform.ports import free_port
from serving.errors import BackendUnavailable

log = logging.getLogger(__name__)

SERVICE = "serving.bento.service:AuctionService"
STARTUP_FAILED = b"Application startup failed"
POLL_S = 0.1
LOG_TAIL_LINES = 40


def repo_root() -> Path:
    """The folder that holds the ``serving`` package (bentoml's working directory)."""
    return Path(__file__).resolve().parents[2]


@dataclass
class _Server:
    port: int
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]


class BentoProcess:
    """A running ``bentoml serve``; :meth:`restart` swaps it for a fresh one."""

    def __init__(self, server: _Server, *, host: str, env: Mapping[str, str],
                 log_dir: Path, ready_timeout_s: float) -> None:
        self._server = server
        self.host = host
        self.env = dict(env)
        self.log_dir = log_dir
        self.ready_timeout_s = ready_timeout_s

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._server.port}"

    @property
    def pid(self) -> int:
        return self._server.popen.pid

    @property
    def log_path(self) -> Path:
        return self._server.log_path

    def is_running(self) -> bool:
        return self._server.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit code once the server has exited, else None."""
        return self._server.popen.poll()

    def is_ready(self, timeout_s: float = 1.0) -> bool:
        return _ready(self.url, timeout_s)

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop gracefully (in-flight requests finish); kill what is left after ``grace_s``."""
        _stop(self._server, grace_s)

    def kill(self) -> None:
        """Kill the server and its workers at once, as a crash would."""
        _kill(self._server)

    def restart(self, *, port: int | None = None, on_ready: Callable[[str], None] | None = None,
                drain_s: float = 1.0, grace_s: float = 10.0) -> str:
        """Replace the server by a fresh one (which resolves the aliases again).

        Blue/green unless ``port`` is the current port: see the module docstring.
        ``drain_s`` covers a request that picked the old URL just before ``on_ready``
        and is still on its way; whatever reached the old server by then is finished by
        its graceful stop. Returns the new URL.
        """
        if port == self._server.port:
            _stop(self._server, grace_s)
            self._server = _start(port, self.host, self.env, self.log_dir, self.ready_timeout_s)
            if on_ready is not None:
                on_ready(self.url)
            return self.url
        new = _start(port or free_port(self.host), self.host, self.env, self.log_dir,
                     self.ready_timeout_s)
        new_url = f"http://{self.host}:{new.port}"
        if on_ready is not None:
            try:
                on_ready(new_url)
            except BaseException:
                _stop(new, grace_s)
                raise
        old, self._server = self._server, new
        log.info("bento on port %d is ready; draining port %d for %.1fs", new.port, old.port,
                 drain_s)
        time.sleep(drain_s)
        _stop(old, grace_s)
        return new_url

    def __enter__(self) -> BentoProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_bento(port: int, env: Mapping[str, str] | None = None, *, host: str = "127.0.0.1",
                ready_timeout_s: float = 120.0, log_dir: Path | None = None) -> BentoProcess:
    """Start ``bentoml serve`` on ``host:port`` and return once ``/readyz`` is 200.

    ``env`` is added to this process's environment (``ADPLATFORM_HOME``,
    ``ADPLATFORM_MLFLOW_TRACKING_URI``, ``ADPLATFORM_BENTO_ALIAS``, ``BENTOML_HOME``...).
    Raises :class:`BackendUnavailable` with the server log's tail when it cannot start.
    """
    merged = _child_env(env or {})
    logs = log_dir or Path(tempfile.gettempdir()) / "adplatform-bento"
    server = _start(port, host, merged, logs, ready_timeout_s)
    return BentoProcess(server, host=host, env=merged, log_dir=logs,
                        ready_timeout_s=ready_timeout_s)


def _child_env(env: Mapping[str, str]) -> dict[str, str]:
    merged = {**os.environ, **env}
    merged.setdefault("BENTOML_DO_NOT_TRACK", "true")
    merged.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")   # keeps the log readable
    if merged.get("ADPLATFORM_HOME"):     # the child runs from the repository root
        merged["ADPLATFORM_HOME"] = str(Path(merged["ADPLATFORM_HOME"]).resolve())
    paths = [str(repo_root()), *filter(None, merged.get("PYTHONPATH", "").split(os.pathsep))]
    merged["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return merged


def _start(port: int, host: str, env: Mapping[str, str], log_dir: Path,
           ready_timeout_s: float) -> _Server:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"bento-{port}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    log_file = log_path.open("wb")
    cmd = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", host,
           "--port", str(port), "--working-dir", str(repo_root())]
    t0 = time.monotonic()
    try:
        popen = subprocess.Popen(cmd, cwd=repo_root(), env=dict(env), stdin=subprocess.DEVNULL,
                                 stdout=log_file, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    except OSError:
        log_file.close()
        raise
    server = _Server(port=port, popen=popen, log_path=log_path, log_file=log_file)
    try:
        _wait_ready(server, f"http://{host}:{port}", ready_timeout_s)
    except BaseException:
        _kill(server)
        raise
    log.info("bentoml serve ready on %s:%d in %.1fs (pid %d, log %s)", host, port,
             time.monotonic() - t0, popen.pid, log_path)
    return server


def _wait_ready(server: _Server, url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        rc = server.popen.poll()
        if rc is not None:
            raise BackendUnavailable(f"bentoml serve on port {server.port} exited with code "
                                     f"{rc} before it was ready:\n{_tail(server.log_path)}")
        if STARTUP_FAILED in server.log_path.read_bytes():
            raise BackendUnavailable(f"bentoml serve on port {server.port} could not start "
                                     f"its service:\n{_tail(server.log_path)}")
        if _ready(url, min(1.0, max(deadline - time.monotonic(), POLL_S))):
            return
        if time.monotonic() > deadline:
            raise BackendUnavailable(f"bentoml serve on port {server.port} was not ready within "
                                     f"{timeout_s:.0f}s:\n{_tail(server.log_path)}")
        time.sleep(POLL_S)


def _ready(url: str, timeout_s: float) -> bool:
    """Whether ``/readyz`` answers 200; a refused or silent socket is "not yet"."""
    try:
        resp = httpx.get(f"{url}/readyz", timeout=timeout_s, trust_env=False)
    except httpx.TransportError as exc:
        log.debug("%s/readyz: %s", url, exc)
        return False
    return resp.status_code == 200


def _tail(path: Path) -> str:
    lines = path.read_text(errors="replace").splitlines()
    return "\n".join(lines[-LOG_TAIL_LINES:])


def _workers(server: _Server) -> list[psutil.Process]:
    """The server's worker processes, while its supervisor runs."""
    try:
        return psutil.Process(server.popen.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _stop(server: _Server, grace_s: float) -> None:
    workers = _workers(server)
    deadline = time.monotonic() + grace_s
    if server.popen.poll() is None:
        # The supervisor stops its workers; each finishes the requests it is serving.
        server.popen.send_signal(signal.SIGTERM)
        try:
            server.popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            log.warning("bentoml serve on port %d did not stop within %.0fs; killing it",
                        server.port, grace_s)
    _, alive = psutil.wait_procs(workers, timeout=max(deadline - time.monotonic(), 0.0))
    _finish(server, alive)


def _kill(server: _Server) -> None:
    _finish(server, _workers(server))


def _finish(server: _Server, workers: list[psutil.Process]) -> None:
    """Kill the supervisor and the given workers, reap them, close the log."""
    if server.popen.poll() is None:
        server.popen.kill()
    for proc in workers:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            log.debug("worker %d had already exited", proc.pid)
    psutil.wait_procs(workers, timeout=5.0)
    server.popen.wait(timeout=5.0)
    server.log_file.close()


__all__ = ["SERVICE", "BentoProcess", "repo_root", "start_bento"]

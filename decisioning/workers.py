"""Several worker processes serving one port: :func:`serve_workers`.

One Python process decides on one core (the GIL), so a bidder that must answer more
auctions than one core can runs several workers. Each worker is a spawned process that
builds its own app (``factory(i, n, *args)``: a context manager yielding the app, e.g.
:func:`mlops.serve.worker_app`) and listens on its own socket bound to the same port
with ``SO_REUSEPORT``: the kernel spreads new connections over the listening workers by
a hash of the connection's addresses. With one shared listening socket instead, the
first worker to wake accepts a whole burst of connections at once (asyncio accepts up
to its backlog per wake-up), and long-lived keep-alive connections then stay unevenly
spread for good.

* **Start-up**: the parent binds the port first (``SO_REUSEPORT``, not listening), so a
  port held by another program fails at once and port 0 picks one port for all. Every
  worker builds its app before any worker listens (a barrier), so the first
  connections are not all taken by whichever worker was ready first. A worker that
  fails during start-up stops all of them (:class:`WorkerStartError`).
* **Supervision**: a worker that dies later (a crash, an OOM kill) is logged and
  replaced; its connections are lost, the other workers' are not. More than
  ``max_restarts`` replacements within a minute stop everything.
* **Shutdown**: SIGTERM or SIGINT to the parent sends SIGTERM to every worker (uvicorn's
  graceful shutdown: stop accepting, finish in-flight requests, run the lifespan, which
  flushes the logs), waits ``graceful_timeout_s`` plus a margin, then SIGKILLs what is
  left. Workers run in their own process group (a terminal's Ctrl-C reaches only the
  parent, which stops them once) and poll their parent: a worker whose parent died shuts
  itself down gracefully instead of holding the port.

State the workers must share (budgets, caps, notice dedupe) cannot live in any one
worker's memory: :func:`decisioning.service.build_service` takes ``shared_state`` and
``worker=(i, n)`` for that (its module docstring has the table).
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from decisioning.errors import DecisionError

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Event

log = logging.getLogger(__name__)

# Seconds between a worker's checks that its parent is alive; also the supervisor's
# poll period (a dead worker is replaced within about this long).
POLL_S = 0.5


class WorkerStartError(DecisionError):
    """A worker could not build its app or listen, or died before it was ready."""


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``(host, port)`` with ``SO_REUSEPORT`` (not listening)."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise WorkerStartError("several workers need SO_REUSEPORT (Linux, BSD, macOS)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _load(factory: str) -> Any:
    module, _, name = factory.partition(":")
    return getattr(importlib.import_module(module), name)


def _watch_parent(parent: int) -> None:
    """Shut this worker down gracefully (uvicorn's SIGTERM handling) once ``parent`` is
    gone: the supervisor died without stopping its workers."""
    while os.getppid() == parent:
        time.sleep(POLL_S)
    log.warning("worker %d: the supervisor (pid %d) is gone; shutting down", os.getpid(),
                parent)
    os.kill(os.getpid(), signal.SIGTERM)


def _exit_now(signum: int, _frame: Any) -> None:
    raise SystemExit(0)


def _worker_main(factory: str, args: tuple[Any, ...], index: int, count: int, host: str,
                 port: int, parent: int, ready: Queue[tuple[int, str | None]],
                 go: Event, serve_kwargs: dict[str, Any]) -> None:
    """A worker process: build the app, report ready, wait for the barrier, serve."""
    os.setpgid(0, 0)                       # a terminal's Ctrl-C is the parent's to handle
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGTERM before serving stops the worker at once; while serving, uvicorn's handler
    # drains and flushes, then re-raises it on exit, and this one unwinds the factory.
    signal.signal(signal.SIGTERM, _exit_now)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True,
                     name="watch-supervisor").start()
    from decisioning.server import serve

    with ExitStack() as stack:
        try:
            cm: AbstractContextManager[Any] = _load(factory)(index, count, *args)
            app = stack.enter_context(cm)
            sock = stack.enter_context(bind_socket(host, port))
        except BaseException as exc:
            ready.put((index, f"{type(exc).__name__}: {exc}"))
            raise
        ready.put((index, None))
        go.wait()
        try:
            serve(app, host=host, port=port, sock=sock, **serve_kwargs)
        except SystemExit as exc:     # the SIGTERM uvicorn re-raised after draining
            if exc.code not in (0, None):
                raise


def serve_workers(factory: str, args: tuple[Any, ...] = (), *, workers: int,
                  host: str = "127.0.0.1", port: int = 8080, graceful_timeout_s: int = 10,
                  start_timeout_s: float = 600.0, max_restarts: int = 5,
                  serve_kwargs: dict[str, Any] | None = None) -> int:
    """Run ``workers`` processes serving ``factory``'s app on ``host:port`` until SIGTERM
    or SIGINT (see the module docstring); returns 0 after a requested stop, 1 after too
    many restarts.

    ``factory`` is ``"module:function"``, called in each worker as
    ``function(i, n, *args)`` and returning a context manager that yields the app
    (entered before serving, exited after). ``serve_kwargs`` go to
    :func:`decisioning.server.serve`.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    ctx = mp.get_context("spawn")
    holder = bind_socket(host, port)        # fails now if the port is taken; picks port 0
    port = holder.getsockname()[1]
    ready: Queue[tuple[int, str | None]] = ctx.Queue()
    go = ctx.Event()
    stop = threading.Event()
    procs: dict[int, BaseProcess] = {}
    kwargs = dict(serve_kwargs or {}, graceful_timeout_s=graceful_timeout_s)

    def start(i: int) -> None:
        p = ctx.Process(target=_worker_main, name=f"adplatform-worker-{i}",
                        args=(factory, args, i, workers, host, port, os.getpid(), ready, go,
                              kwargs))
        p.start()
        procs[i] = p

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for i in range(workers):
            start(i)
        _await_ready(procs, ready, stop, start_timeout_s)
        go.set()
        log.info("%d workers serve on %s:%d", workers, host, port)
        return _supervise(procs, start, stop, max_restarts, ready)
    finally:
        _stop_all(procs, graceful_timeout_s + 15.0)
        holder.close()
        for s, h in previous.items():
            signal.signal(s, h)


def _await_ready(procs: dict[int, BaseProcess], ready: Queue[tuple[int, str | None]],
                 stop: threading.Event, timeout_s: float) -> None:
    import queue

    waiting = set(procs)
    deadline = time.monotonic() + timeout_s
    while waiting and not stop.is_set():
        try:
            index, error = ready.get(timeout=POLL_S)
        except queue.Empty:
            dead = [i for i in waiting if not procs[i].is_alive()]
            if dead:
                raise WorkerStartError(f"worker {dead[0]} exited during start-up "
                                       f"(exit code {procs[dead[0]].exitcode})") from None
            if time.monotonic() > deadline:
                raise WorkerStartError(f"workers {sorted(waiting)} not ready after "
                                       f"{timeout_s:.0f} s") from None
            continue
        if error is not None:
            raise WorkerStartError(f"worker {index} failed to start: {error}")
        waiting.discard(index)


def _supervise(procs: dict[int, BaseProcess], start: Callable[[int], None],
               stop: threading.Event,
               max_restarts: int, ready: Queue[tuple[int, str | None]]) -> int:
    import queue

    restarts: deque[float] = deque()
    while not stop.wait(POLL_S):
        while True:                          # a replacement's ready message: not waited on
            try:
                index, error = ready.get_nowait()
            except queue.Empty:
                break
            if error is not None:
                log.error("replacement worker %d failed to start: %s", index, error)
        for i, p in list(procs.items()):
            if p.is_alive():
                continue
            now = time.monotonic()
            while restarts and restarts[0] < now - 60.0:
                restarts.popleft()
            if len(restarts) >= max_restarts:
                log.error("worker %d exited (code %s); %d restarts within a minute: "
                          "stopping", i, p.exitcode, len(restarts))
                return 1
            log.error("worker %d (pid %s) exited with code %s; starting a new one", i,
                      p.pid, p.exitcode)
            restarts.append(now)
            start(i)
    return 0


def _stop_all(procs: dict[int, BaseProcess], timeout_s: float) -> None:
    for p in procs.values():
        if p.is_alive() and p.pid is not None:
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
    deadline = time.monotonic() + timeout_s
    for p in procs.values():
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            log.error("worker pid %s still running %.0f s after SIGTERM: killing it", p.pid,
                      timeout_s)
            p.kill()
            p.join(5.0)


__all__ = ["POLL_S", "WorkerStartError", "bind_socket", "serve_workers"]

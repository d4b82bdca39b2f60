"""Open-loop HTTP load generator (runs in its own process).

Requests are sent on a fixed schedule whatever the replies: request i is due at
``start + i / rate`` and its latency is measured from that scheduled time, so a slow
server cannot hide queueing delay by slowing the sender down (no coordinated
omission).

The generator is a plain ``select()`` loop over non-blocking keep-alive sockets, on
``time.perf_counter``, because the schedule has to be kept to well under a millisecond
for sub-millisecond latencies to mean anything:

* ``select()`` takes its timeout in microseconds. asyncio's default selector (epoll)
  rounds every timeout up to a whole millisecond, so an asyncio generator woken by a
  reply between two due times slept past the next one, and sent it up to 1 ms late;
  uvloop's timers and ``loop.time()`` count whole milliseconds. That lateness was
  charged to the server as latency.
* How late each request actually left is recorded (:attr:`LoadResult.send_lag_ms`), so
  the generator's own accuracy is part of every result.
* ``warm_conns`` keep-alive connections are opened before the schedule starts, as an
  exchange holds a pool of them open to its bidders; more are opened when all are
  busy (:attr:`LoadResult.conns_opened` counts those). Opening them on demand put TCP
  set-up and the server's new-connection work on the first requests of every run.
* An idle connection is taken from the pool most-recently-used first (``pool="lifo"``,
  as most HTTP clients do), or in turn (``"fifo"``): with several server workers, each
  holding the connections the kernel gave it, only ``"fifo"`` spreads a light load over
  all of them.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import select
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np


@dataclass
class Episode:
    """Slow answers close together in a run (:meth:`LoadResult.slow_episodes`): the due
    times of the first and the last, in seconds after the schedule's start."""

    start_s: float
    end_s: float
    answers: int
    worst_ms: float


# Slow answers due this close together belong to one episode: at 1,000/s, 50 requests.
EPISODE_GAP_S = 0.05


@dataclass
class LoadResult:
    rate: float
    duration_s: float
    sent: int = 0
    errors: int = 0                          # connection errors and 5xx
    latencies_ms: list[float] = field(default_factory=list)
    status_each: list[int] = field(default_factory=list)   # each answer's status, in order
    # Each answer's due time in seconds after the schedule's start (the same order as
    # latencies_ms): when in the run the slow answers were (slow_episodes).
    due_s: list[float] = field(default_factory=list)
    # Each answer's milliseconds from the moment its request actually left (its latency
    # less the generator's own lateness in sending it; after a retry, from the retry):
    # what the server and the network took, even when the generator itself was late.
    from_send_ms: list[float] = field(default_factory=list)
    # How late each request left after its due time: the generator's own accuracy
    # (already inside its latency; a large value means the generator, not the server,
    # could not keep up).
    send_lag_ms: list[float] = field(default_factory=list)
    warm_conns: int = 0                      # opened before the schedule started
    conns_opened: int = 0                    # opened during the run (all busy, or retries)
    # The schedule's start and the run's end on time.perf_counter (CLOCK_MONOTONIC, the
    # same clock in every process): the window run_load measures steal over.
    started: float = float("nan")
    ended: float = float("nan")
    # CPU time the hypervisor took from the machine during the run (bench.steal), in %
    # of all CPUs' time: over the run and over its worst half second; None: not measured.
    steal_pct: float | None = None
    steal_peak_pct: float | None = None

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def statuses(self) -> dict[int, int]:
        """Answers per HTTP status, in the order each status first came."""
        counts: dict[int, int] = {}
        for st in self.status_each:
            counts[st] = counts.get(st, 0) + 1
        return counts

    def answered_after(self, ms: float, status: int | None = None, *,
                       from_send: bool = False) -> int:
        """Answers (with ``status``, or any) that came more than ``ms`` after their due
        time: past an auction's ``tmax`` the exchange has already moved on. With
        ``from_send``, more than ``ms`` after their request left instead: those the
        generator's own late sending (a stall of the machine it shares) does not
        explain."""
        times = self.from_send_ms if from_send else self.latencies_ms
        return sum(1 for lat, st in zip(times, self.status_each, strict=True)
                   if lat > ms and (status is None or st == status))

    def slow_episodes(self, over_ms: float, gap_s: float = EPISODE_GAP_S) -> list[Episode]:
        """The answers slower than ``over_ms``, grouped into episodes by due time: a slow
        answer due within ``gap_s`` of the last one's joins its episode. One stall of the
        server (or the machine) makes every request due during it and its backlog slow,
        so the count of episodes and their size say whether a p99 comes from a few
        stalls or from slowness throughout."""
        slow = sorted((due, lat) for due, lat in zip(self.due_s, self.latencies_ms, strict=True)
                      if lat > over_ms)
        episodes: list[Episode] = []
        for due, lat in slow:
            last = episodes[-1] if episodes else None
            if last is not None and due - last.end_s <= gap_s:
                last.end_s, last.answers = due, last.answers + 1
                last.worst_ms = max(last.worst_ms, lat)
            else:
                episodes.append(Episode(start_s=due, end_s=due, answers=1, worst_ms=lat))
        return episodes

    def send_lag(self, q: float) -> float:
        return float(np.percentile(self.send_lag_ms, q)) if self.send_lag_ms else float("nan")

    @property
    def achieved_rps(self) -> float:
        return len(self.latencies_ms) / self.duration_s if self.duration_s else 0.0


# Connections opened before a run: more than an open-loop run at up to a few thousand
# requests/s has in flight at once on a keeping-up server (each answer takes ~1 ms).
WARM_CONNS = 8


class _Conn:
    __slots__ = ("sock", "buf", "index", "due", "sent", "reused", "retried")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.index = 0          # the request in flight on this connection
        self.due = 0.0
        self.reused = False     # sent on a connection that sat idle in the pool before
        self.retried = False
        self.sent = 0.0         # when the request in flight left (clock)


def parse_response(buf: bytes) -> tuple[int, int, bool] | None:
    """``(status, length, close)`` of the complete response at the start of ``buf``, or
    None while it is incomplete. Replies must carry Content-Length (or have no body)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buf[:end].split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, close = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            close = value.strip().lower() == b"close"
        elif name == b"transfer-encoding":
            raise ValueError("chunked replies are not supported by the load generator")
    total = end + 4 + length
    return (status, total, close) if len(buf) >= total else None


def _run(host: str, port: int, path: str, bodies: list[bytes], rate: float,
         duration_s: float, headers: dict[str, str], max_conns: int,
         warm_conns: int = 0, pool: Literal["lifo", "fifo"] = "lifo") -> LoadResult:
    """One open-loop run, with the cyclic garbage collector off: the generator must not
    pause. With it on, full collections took 30-45 ms each (three or four in 15 s at
    1,000/s, timed with a ``gc.callbacks`` hook in the generator while profiling), and
    every request in flight or due meanwhile was charged with the pause as if the
    server had been slow. What the run allocates is freed by reference counting; the
    collector runs again after it."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        return _open_loop(host, port, path, bodies, rate, duration_s, headers, max_conns,
                          warm_conns, pool)
    finally:
        gc.enable()
        gc.unfreeze()


def _open_loop(host: str, port: int, path: str, bodies: list[bytes], rate: float,
               duration_s: float, headers: dict[str, str], max_conns: int,
               warm_conns: int, pool: Literal["lifo", "fifo"] = "lifo") -> LoadResult:
    result = LoadResult(rate=rate, duration_s=duration_s)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    raws = [(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
             f"{extra}Content-Length: {len(b)}\r\n\r\n").encode() + b for b in bodies]
    clock = time.perf_counter
    idle: deque[_Conn] = deque()
    take = idle.popleft if pool == "fifo" else idle.pop
    busy: dict[socket.socket, _Conn] = {}
    open_conns = 0

    def connect() -> _Conn:
        nonlocal open_conns
        sock = socket.create_connection((host, port), timeout=5.0)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        open_conns += 1
        return _Conn(sock)

    for _ in range(min(warm_conns, max_conns)):
        try:
            conn = connect()
        except OSError:
            break                             # refused: dispatch counts the failures
        conn.reused = True                    # an idle pooled connection, like any other
        idle.append(conn)
    result.warm_conns = len(idle)

    def dispatch(index: int, due: float, retried: bool) -> None:
        nonlocal open_conns
        conn = take() if idle and not retried else None   # a retry: a fresh one
        if conn is None:
            if open_conns >= max_conns:
                result.errors += 1            # counted as a failure: the pool is exhausted
                return
            try:
                conn = connect()
            except OSError:
                result.errors += 1
                return
            result.conns_opened += 1
        else:
            conn.reused = True
        conn.index, conn.due, conn.retried, conn.buf = index, due, retried, b""
        conn.sent = clock()
        if not retried:
            result.send_lag_ms.append((conn.sent - due) * 1000.0)
        try:
            conn.sock.sendall(raws[index % len(raws)])   # one request: fits the buffer
        except OSError:
            conn.sock.close()
            open_conns -= 1
            result.errors += 1
            return
        busy[conn.sock] = conn

    def drop(conn: _Conn) -> None:
        nonlocal open_conns
        del busy[conn.sock]
        conn.sock.close()
        open_conns -= 1

    n = int(rate * duration_s)
    i = 0
    start = clock() + 0.2
    result.started = start
    deadline = float("inf")
    while i < n or busy:
        now = clock()
        while i < n and start + i / rate <= now:
            dispatch(i, start + i / rate, False)
            result.sent += 1
            i += 1
        if i < n:
            timeout = max(0.0, start + i / rate - clock())
        elif not busy:
            break
        else:
            if deadline == float("inf"):
                deadline = clock() + 30.0
            timeout = deadline - clock()
            if timeout <= 0:
                result.errors += len(busy)        # never answered
                for conn in list(busy.values()):
                    drop(conn)
                break
        ready, _, _ = select.select(list(busy), [], [], timeout)
        for sock in ready:
            conn = busy[sock]
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            t = clock()
            if not data:
                # The server had closed this keep-alive connection while it sat idle,
                # before reading the request: a client retries that once on a fresh one
                # (as HTTP clients do); the latency still counts from the due time.
                drop(conn)
                if conn.reused and not conn.buf and not conn.retried:
                    dispatch(conn.index, conn.due, True)
                else:
                    result.errors += 1
                continue
            conn.buf += data
            try:
                parsed = parse_response(conn.buf)
            except (ValueError, IndexError):
                drop(conn)
                result.errors += 1
                continue
            if parsed is None:
                continue
            status, _, close = parsed
            result.latencies_ms.append((t - conn.due) * 1000.0)
            result.due_s.append(conn.due - start)
            result.from_send_ms.append((t - conn.sent) * 1000.0)
            result.status_each.append(status)
            if status >= 500:
                result.errors += 1
            if close:
                drop(conn)
            else:
                del busy[sock]
                idle.append(conn)
    result.ended = clock()
    for conn in idle:
        conn.sock.close()
    return result


def _worker(q: mp.Queue, args: tuple) -> None:  # type: ignore[type-arg]
    q.put(_run(*args))


def run_load(host: str, port: int, path: str, bodies: list[bytes], *, rate: float,
             duration_s: float, headers: dict[str, str] | None = None,
             max_conns: int = 256, warm_conns: int = WARM_CONNS,
             pool: Literal["lifo", "fifo"] = "lifo") -> LoadResult:
    """Run one open-loop load in a separate process and return its measurements
    (``warm_conns`` connections opened before the schedule starts; ``pool``: which idle
    connection the next request takes, see the module docstring), with the machine's
    steal during the run (:mod:`bench.steal`, sampled in this process)."""
    from bench.steal import StealMonitor

    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    args = (host, port, path, bodies, rate, duration_s, headers or {}, max_conns, warm_conns,
            pool)
    p = ctx.Process(target=_worker, args=(q, args), daemon=True)
    with StealMonitor() as monitor:
        p.start()
        res: LoadResult = q.get(timeout=duration_s + 90)
    p.join(timeout=10)
    steal = monitor.between(res.started, res.ended)
    if steal is not None:
        res.steal_pct, res.steal_peak_pct = steal.pct, steal.peak_pct
    return res


def wait_until_healthy(url: str, timeout_s: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not healthy after {timeout_s}s")


__all__ = ["EPISODE_GAP_S", "WARM_CONNS", "Episode", "LoadResult", "parse_response", "run_load",
           "wait_until_healthy"]

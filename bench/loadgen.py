"""Open-loop HTTP load generator (runs in its own process).

Requests are sent on a fixed schedule whatever the replies: request i is due at
``start + i / rate`` and its latency is measured from that scheduled time, so a slow
server cannot hide queueing delay by slowing the sender down (no coordinated
omission). A minimal HTTP/1.1 keep-alive client over asyncio streams keeps the
generator's own cost well below the server's.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing as mp
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    rate: float
    duration_s: float
    sent: int = 0
    errors: int = 0                          # connection errors and 5xx
    statuses: dict[int, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def achieved_rps(self) -> float:
        return len(self.latencies_ms) / self.duration_s if self.duration_s else 0.0


class _StaleConnection(ConnectionError):
    """The server had closed the connection before answering (nothing was read)."""


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def request(self, raw: bytes) -> int:
        self.writer.write(raw)
        try:
            status_line = await self.reader.readline()
        except ConnectionResetError as exc:
            raise _StaleConnection(str(exc)) from exc
        if not status_line:
            raise _StaleConnection("server closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            if line[:15].lower() == b"content-length:":
                length = int(line[15:].strip())
        if length:
            await self.reader.readexactly(length)
        return status


async def _run(host: str, port: int, path: str, bodies: list[bytes], rate: float,
               duration_s: float, headers: dict[str, str], max_conns: int) -> LoadResult:
    """One open-loop run, with the cyclic garbage collector off: the generator must not
    pause. With it on, full collections over the finished tasks took 30-45 ms each
    (three or four in 15 s at 1,000/s, timed with a ``gc.callbacks`` hook in the
    generator while profiling), and every request in flight or due meanwhile
    was charged with the pause as if the server had been slow. What the run allocates
    is freed by reference counting; the collector runs again after it."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        return await _open_loop(host, port, path, bodies, rate, duration_s, headers,
                                max_conns)
    finally:
        gc.enable()
        gc.unfreeze()


async def _open_loop(host: str, port: int, path: str, bodies: list[bytes], rate: float,
                     duration_s: float, headers: dict[str, str], max_conns: int
                     ) -> LoadResult:
    result = LoadResult(rate=rate, duration_s=duration_s)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    raws = [(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
             f"{extra}Content-Length: {len(b)}\r\n\r\n").encode() + b for b in bodies]
    idle: list[_Conn] = []
    open_conns = 0
    n = int(rate * duration_s)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2
    tasks = []

    async def one(i: int, due: float) -> None:
        nonlocal open_conns
        for attempt in range(2):
            reused = bool(idle)
            conn = idle.pop() if idle else None
            if conn is None:
                if open_conns >= max_conns:
                    result.errors += 1        # counted as a failure: the pool is exhausted
                    return
                open_conns += 1
                try:
                    conn = _Conn(*await asyncio.open_connection(host, port))
                except OSError:
                    open_conns -= 1
                    result.errors += 1
                    return
            try:
                status = await conn.request(raws[i % len(raws)])
            except _StaleConnection:
                # The server closed this keep-alive connection while it sat idle in the
                # pool, before reading the request: a client retries that on a fresh one
                # (as HTTP clients do); the latency still counts from the due time.
                open_conns -= 1
                if reused and attempt == 0:
                    continue
                result.errors += 1
                return
            except (OSError, ConnectionError, ValueError, IndexError):
                open_conns -= 1
                result.errors += 1
                return
            result.latencies_ms.append((loop.time() - due) * 1000.0)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status >= 500:
                result.errors += 1
            idle.append(conn)
            return

    for i in range(n):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i, due)))
        result.sent += 1
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
    for c in idle:
        c.writer.close()
    return result


def _worker(q: mp.Queue, args: tuple) -> None:  # type: ignore[type-arg]
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    q.put(asyncio.run(_run(*args)))


def run_load(host: str, port: int, path: str, bodies: list[bytes], *, rate: float,
             duration_s: float, headers: dict[str, str] | None = None,
             max_conns: int = 256) -> LoadResult:
    """Run one open-loop load in a separate process and return its measurements."""
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    args = (host, port, path, bodies, rate, duration_s, headers or {}, max_conns)
    p = ctx.Process(target=_worker, args=(q, args), daemon=True)
    p.start()
    res: LoadResult = q.get(timeout=duration_s + 60)
    p.join(timeout=10)
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


__all__ = ["LoadResult", "run_load", "wait_until_healthy"]

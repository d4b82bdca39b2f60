"""The bid routes answered inside the HTTP protocol (``decisioning.server``), over real
sockets: the same answers as the ASGI path, keep-alive, HTTP/1.0, pipelining."""

from __future__ import annotations

import json
import math
import re
import socket
import sys
import threading
import time
from typing import Any

import httpx
import pytest

from decisioning import create_app, server
from decisioning.server import DEFAULT_JIFFY_MS, jiffy_ms, kernel_wait_s

from .conftest import ThreadServer

BID_26 = "/openrtb/2.6/bid"
BID_25 = "/openrtb/2.5/bid"
BID = {"id": "f", "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}]}


class CountingHandler:
    """The app's bid handler, counting the requests the protocol answered itself."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.limit, self.calls = inner, inner.limit, 0
        self.in_threadpool = inner.in_threadpool

    def complete(self, *args: Any) -> Any:
        self.calls += 1
        return self.inner.complete(*args)

    async def __call__(self, *args: Any) -> Any:         # the ASGI path
        return await self.inner(*args)


def _answers(url: str) -> list[tuple[int, str | None, str | None, str | None, Any]]:
    def chunked() -> Any:
        for _ in range(10):
            yield b" " * 60                                   # 600 bytes, no content-length

    cases: list[tuple[str, Any, dict[str, str]]] = [
        (BID_26, json.dumps(BID), {"x-api-key": "k"}),                           # 200
        (BID_25, json.dumps(BID), {"authorization": "Bearer k"}),                # 200
        (BID_26, json.dumps({"id": "n", "imp": [{"id": "1"}]}), {"x-api-key": "k"}),  # 204
        (BID_26, '{"id": "x", "imp": []}', {"x-api-key": "k"}),                  # 400
        (BID_26, "", {"x-api-key": "k"}),                                        # 400
        (BID_26, json.dumps(BID), {}),                                           # 401
        (BID_26, json.dumps(BID) + " " * 600, {"x-api-key": "k"}),               # 413
        (BID_26, chunked(), {"x-api-key": "k"}),                                 # 413
    ]
    out = []
    with httpx.Client(base_url=url) as c:                 # one keep-alive connection
        for path, body, headers in cases:
            r = c.post(path, content=body, headers=headers)
            doc = r.json() if r.content else None
            for b in (doc or {}).get("seatbid", [{}])[0].get("bid", []):
                b.pop("id")                               # random per engine
            out.append((r.status_code, r.headers.get("content-type"),
                        r.headers.get("x-openrtb-version"), r.headers.get("content-length"),
                        doc))
        assert c.get("/healthz").json() == {"status": "ok"}   # other routes: the ASGI path
    return out


def test_protocol_answers_like_the_asgi_path(make_engine: Any) -> None:
    results = []
    for fast in (True, False):
        app = create_app(make_engine(), api_keys=["k"], max_body_bytes=500)
        counting = CountingHandler(app.state.bid_handler)
        app.state.bid_handler = counting
        with ThreadServer(app, fast_bid=fast) as srv:
            results.append(_answers(srv.url))
        # The ASGI path calls the handler's __call__, not complete().
        assert counting.calls == (8 if fast else 0)
    fast_answers, asgi_answers = results
    assert [a[0] for a in fast_answers] == [200, 200, 204, 400, 400, 401, 413, 413]
    assert fast_answers == asgi_answers
    assert fast_answers[2][3] is None                     # 204: no content-length


def _raw(port: int, payload: bytes) -> bytes:
    """Send ``payload`` on one connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def _request(path: str, body: bytes, *, version: str = "1.1", close: bool = False,
             method: str = "POST") -> bytes:
    head = [f"{method} {path} HTTP/{version}", "host: t", "x-api-key: k",
            f"content-length: {len(body)}"]
    if close:
        head.append("connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def test_http_10_pipelining_and_connection_close(make_engine: Any) -> None:
    app = create_app(make_engine(), api_keys=["k"])
    counting = CountingHandler(app.state.bid_handler)
    app.state.bid_handler = counting
    body = json.dumps(BID).encode()
    with ThreadServer(app) as srv:
        # HTTP/1.0 without keep-alive: one answer, then the server closes.
        raw = _raw(srv.port, _request(BID_26, body, version="1.0"))
        assert raw.startswith(b"HTTP/1.1 200 ") and raw.count(b"HTTP/1.1 ") == 1
        assert b"connection: close" in raw.lower()
        # Three pipelined requests (bid, health, bid), the last asking to close: three
        # answers, in order.
        raw = _raw(srv.port, _request(BID_26, body)
                   + b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n"
                   + _request(BID_25, body, close=True))
        statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)
        assert statuses == [b"200", b"200", b"200"]
        assert raw.index(b'"seatbid"') < raw.index(b'{"status":"ok"}') < raw.rindex(b"seatbid")
        assert raw.lower().count(b"x-openrtb-version: 2.5") == 1
    # The third request arrived while /healthz was still in flight on the ASGI path, so
    # it queued behind it there (uvicorn's pipeline) instead of jumping the queue.
    assert counting.calls == 2


class _Socket:
    """A stand-in socket whose TCP_INFO cannot be read (closing)."""

    def getsockopt(self, *args: Any) -> bytes:
        raise OSError(107, "Transport endpoint is not connected")


needs_tcp_info = pytest.mark.skipif(not hasattr(socket, "TCP_INFO"),
                                    reason="TCP_INFO is Linux's")


class _InfoSocket:
    """A stand-in socket whose TCP_INFO says the last data came ``ms`` ago."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def getsockopt(self, *args: Any) -> bytes:
        return bytes(8 + 11 * 4) + self.ms.to_bytes(4, sys.byteorder) + bytes(104 - 56)


@needs_tcp_info
def test_one_kernel_tick_is_taken_off_each_reading() -> None:
    tick = jiffy_ms()
    assert 1 <= tick <= 100
    if sys.platform.startswith("linux"):     # the coarse clock's resolution: one tick
        assert tick == math.ceil(time.clock_getres(6) * 1000.0 - 1e-9)
    assert kernel_wait_s(_InfoSocket(tick)) == 0.0
    assert kernel_wait_s(_InfoSocket(tick + 250)) == pytest.approx(0.25)


def test_the_tick_is_10_ms_where_the_clock_cannot_say(monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    def unavailable(clock: int) -> float:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(server.time, "clock_getres", unavailable)
    server.jiffy_ms.cache_clear()
    try:
        assert jiffy_ms() == DEFAULT_JIFFY_MS == 10
    finally:
        server.jiffy_ms.cache_clear()


@needs_tcp_info
def test_kernel_wait_is_the_time_data_sat_unread_and_not_idle_time() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        client = socket.create_connection(srv.getsockname())
        conn, _ = srv.accept()
        with client, conn:
            client.sendall(b"x")                  # on loopback: queued when sendall returns
            time.sleep(0.3)
            waited = kernel_wait_s(conn)
            conn.recv(1)
            # Idle for a second, then data that is read at once: the idle time is not a wait.
            time.sleep(1.0)
            client.sendall(b"y")
            fresh = kernel_wait_s(conn)
    assert waited >= 0.3 - (jiffy_ms() + 10) / 1000.0
    assert fresh < 0.9
    assert kernel_wait_s(None) == 0.0 and kernel_wait_s(_Socket()) == 0.0


class _BlockingHandler(CountingHandler):
    """Blocks the server's event loop for ``block_s`` while it answers request ``slow``,
    and records the arrival stamp each request got and when its answer began."""

    def __init__(self, inner: Any, block_s: float) -> None:
        super().__init__(inner)
        self.block_s = block_s
        self.started = threading.Event()
        self.stamps: dict[str, tuple[float, float]] = {}

    def complete(self, headers: Any, chunks: list[bytes], size: int, version: str,
                 perf: float | None) -> Any:
        rid = json.loads(b"".join(chunks))["id"]
        self.stamps[rid] = (perf if perf is not None else float("nan"), time.perf_counter())
        if rid == "slow":
            self.started.set()
            time.sleep(self.block_s)               # the loop thread: nothing else is read
        return super().complete(headers, chunks, size, version, perf)


@needs_tcp_info
def test_a_request_that_waited_in_the_kernel_past_its_tmax_is_shed(campaign_file: Any) -> None:
    from decisioning import DecisionEngine, FileCampaignStore, MemorySink

    from .conftest import FixedBackend, ZeroFeaturizer

    sink = MemorySink()
    engine = DecisionEngine(featurizer=ZeroFeaturizer(), models=FixedBackend(),
                            campaigns=FileCampaignStore(campaign_file), sink=sink)
    app = create_app(engine, api_keys=["k"])           # the system clock: stamps are used
    handler = _BlockingHandler(app.state.bid_handler, block_s=0.4)
    app.state.bid_handler = handler

    def bid(rid: str, tmax: int) -> bytes:
        return _request(BID_26, json.dumps({**BID, "id": rid, "tmax": tmax}).encode())

    with ThreadServer(app) as srv, \
            socket.create_connection(("127.0.0.1", srv.port), timeout=10) as busy, \
            socket.create_connection(("127.0.0.1", srv.port), timeout=10) as other:
        busy.sendall(bid("slow", 2000))
        assert handler.started.wait(10)
        other.sendall(bid("late", 100))            # read only when the loop is free again
        answers = [_read_answer(busy), _read_answer(other)]
        other.sendall(bid("fresh", 100))           # the loop is free: no wait to count
        answers.append(_read_answer(other))
    assert [a[:12] for a in answers] == [b"HTTP/1.1 200", b"HTTP/1.1 204", b"HTTP/1.1 200"]
    reasons = {r.request_id: r.reason for r in sink.records}
    assert reasons == {"slow": "bid", "late": "deadline", "fresh": "bid"}
    # The late request's arrival was stamped when its bytes reached the kernel, before
    # the loop read them (at least the block less the send delay and the jiffy slack).
    perf, begun = handler.stamps["late"]
    assert begun - perf >= 0.1
    assert engine.stats()["shed"] == 1


def _read_answer(sock: socket.socket) -> bytes:
    """One whole answer (head and content-length body) from a keep-alive connection."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, _, body = buf.partition(b"\r\n\r\n")
    m = re.search(rb"content-length: (\d+)", head.lower())
    need = int(m.group(1)) if m else 0
    while len(body) < need:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


class _ConnectionCountingHandler(_BlockingHandler):
    """Also records how many connections the server had set up when each request was
    decided (``server``: the uvicorn server, set once it runs)."""

    server: Any = None

    def __init__(self, inner: Any, block_s: float) -> None:
        super().__init__(inner, block_s)
        self.connections: dict[str, int] = {}

    def complete(self, headers: Any, chunks: list[bytes], size: int, version: str,
                 perf: float | None) -> Any:
        rid = json.loads(b"".join(chunks))["id"]
        self.connections[rid] = len(self.server.server_state.connections)
        return super().complete(headers, chunks, size, version, perf)


def test_connections_opened_while_the_loop_was_busy_are_all_accepted_at_once(
        campaign_file: Any) -> None:
    """An exchange opens connections when its pool is busy, which is when the service
    is: uvloop's own server accepted one per loop iteration, so they waited in the
    kernel's accept queue (for seconds under overload). The service's listener accepts
    every pending one as soon as the loop is free: the first request decided after the
    stall finds all of them set up."""
    from decisioning import DecisionEngine, FileCampaignStore, MemorySink

    from .conftest import FixedBackend, ZeroFeaturizer

    engine = DecisionEngine(featurizer=ZeroFeaturizer(), models=FixedBackend(),
                            campaigns=FileCampaignStore(campaign_file), sink=MemorySink())
    app = create_app(engine, api_keys=["k"])
    handler = _ConnectionCountingHandler(app.state.bid_handler, block_s=0.3)
    app.state.bid_handler = handler
    n = 16

    def bid(rid: str) -> bytes:
        return _request(BID_26, json.dumps({**BID, "id": rid, "tmax": 5000}).encode())

    with ThreadServer(app) as srv, \
            socket.create_connection(("127.0.0.1", srv.port), timeout=10) as busy:
        handler.server = srv.server
        busy.sendall(bid("slow"))
        assert handler.started.wait(10)
        fresh = [socket.create_connection(("127.0.0.1", srv.port), timeout=10)
                 for _ in range(n)]                # queued: the loop is blocked
        try:
            for i, s in enumerate(fresh):
                s.sendall(bid(f"q{i}"))
            answers = [_read_answer(s)[:12] for s in (busy, *fresh)]
        finally:
            for s in fresh:
                s.close()
    assert answers == [b"HTTP/1.1 200"] * (n + 1)
    assert handler.connections["slow"] == 1
    assert {handler.connections[f"q{i}"] for i in range(n)} == {n + 1}

"""The bid routes answered inside the HTTP protocol (``decisioning.server``), over real
sockets: the same answers as the ASGI path, keep-alive, HTTP/1.0, pipelining."""

from __future__ import annotations

import json
import re
import socket
from typing import Any

import httpx

from decisioning import create_app

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

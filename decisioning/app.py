"""The HTTP shell around a :class:`DecisionEngine` (and a :class:`NoticeService`).

Routes::

    POST /openrtb/2.6/bid      200 BidResponse JSON | 204 no bid | 400 {"error", "detail"}
    POST /openrtb/2.5/bid      the same; 2.5 ext locations are read by the parser
    GET|POST /notice/win       win notice (nurl)      200 {"status": recorded|duplicate}
    GET|POST /notice/bill      billing notice (burl); /notice/billing is the same route
    GET|POST /notice/loss      loss notice (lurl)     400 bad parameter | 503 store down
    GET  /healthz              liveness
    GET  /readyz               readiness: campaigns loaded, model versions known (503 if not)
    GET  /metrics              Prometheus text format (see decisioning.metrics)
    GET  /docs, /openapi.json  OpenAPI documentation

Arrival time: :mod:`decisioning.server` stamps each request when uvicorn parses its
first bytes (``scope["adplatform.received_perf"]``); without it (another ASGI server,
tests) a middleware stamps it with the engine's clock on entry. The engine compares it
with the request's ``tmax``: a request that waited in the queue past its budget is shed
at once with a no-bid (still logged).

The bid routes are answered before FastAPI's routing (:class:`_DecisionAPI`): on raw
ASGI messages, the handler reads the body (bounded), parses it once, calls
``engine.decide`` and writes the response with the response model's Rust serialiser.
Under :func:`decisioning.server.serve` the same handler answers them one layer lower,
inside the HTTP protocol (``_BidHandler.complete``), with no ASGI messages at all.
By default ``decide`` runs on the event-loop thread: with the in-process ONNX backend,
the online reader and an in-memory ledger it is CPU-only (``python -m bench decision``,
engine alone on 20,000 distinct requests, three runs on 2026-12-06 on a 2-core machine
after the reader's memory-mapped SQLite connection and the log's writer process:
p50 0.40-0.42 ms, p99 0.67-0.79 ms). When the featurizer, backend or ledger talk to
the network (Redis, Triton, BentoML), pass ``decide_in_threadpool=True`` so one slow
call does not stall every other request (notices then run in the pool too).
The lifespan starts the log writers' child processes before serving, and closes the engine
and the notice service (flushing their logs) on shutdown.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl

import anyio.to_thread
import orjson
from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from decisioning.clock import Clock, SystemClock
from decisioning.engine import DecisionEngine
from decisioning.errors import InvalidRequest
from decisioning.metrics import DecisionCollector, WorkerMetrics, metric_values
from decisioning.notices import (
    InvalidNotice,
    NoticeKind,
    NoticeService,
    NoticeStoreUnavailable,
)
from decisioning.openapi import BID_RESPONSES, NOTICE_RESPONSES, bid_request_body, openapi_with
from decisioning.openrtb import BidRequest, parse_request
from decisioning.openrtb_response import BidResponse

_JSON = "application/json"
RECEIVED_PERF = "adplatform.received_perf"      # set by decisioning.server's protocol
RECEIVED_AT = "adplatform.received_at"          # engine-clock stamp used by the routes
#: The bid routes (path -> OpenRTB version), answered before routing.
BID_PATHS = {"/openrtb/2.6/bid": "2.6", "/openrtb/2.5/bid": "2.5"}

logger = logging.getLogger(__name__)


def _json(content: object, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type=_JSON)


def _error(status: int, message: str, detail: object = None) -> Response:
    return Response(_error_body(message, detail), status_code=status, media_type=_JSON)


def _error_body(message: str, detail: object = None) -> bytes:
    return orjson.dumps({"error": message, "detail": detail})


def _arrival(scope: Scope, clock: Clock, system_clock: bool) -> float:
    """When the request arrived, in the engine clock: a stamp already in the scope, else
    the server's parse-time stamp (perf_counter, the :class:`SystemClock`'s clock) when
    the clock is the system clock, else now."""
    stamp = scope.get(RECEIVED_AT)
    if stamp is None:
        perf = scope.get(RECEIVED_PERF)
        stamp = perf if perf is not None and system_clock else clock.monotonic()
    return float(stamp)


class ReceiveStamp:
    """ASGI middleware: ``scope[RECEIVED_AT]`` = when the request arrived (engine clock).

    The server's parse-time stamp (perf_counter, the :class:`SystemClock`'s monotonic
    clock) is used when present and the clock is the system clock; otherwise now. A
    stamp already in the scope (an outer layer's, in the engine clock) is kept.
    """

    def __init__(self, app: ASGIApp, clock: Clock) -> None:
        self.app = app
        self.clock = clock
        self._system = isinstance(clock, SystemClock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and RECEIVED_AT not in scope:
            scope[RECEIVED_AT] = _arrival(scope, self.clock, self._system)
        await self.app(scope, receive, send)


_Headers = list[tuple[bytes, bytes]]
_Answer = tuple[int, _Headers, bytes]     # status, headers, body


class _BidHandler:
    """The bid route: stamp, authorise, read the body (bounded), parse, decide,
    serialise; returns (status, headers, body). ``__call__`` reads raw ASGI messages;
    :meth:`complete` takes a body the HTTP protocol already collected."""

    def __init__(self, engine: DecisionEngine, *, keys: tuple[bytes, ...],
                 max_body_bytes: int, in_threadpool: bool) -> None:
        self.engine, self.keys, self.limit = engine, keys, max_body_bytes
        self.in_threadpool = in_threadpool
        self.system_clock = isinstance(engine.clock, SystemClock)
        self.too_large = _error_body(f"bid request larger than {max_body_bytes} bytes")

    def authorised(self, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        given = b""
        for name, value in headers:
            if name == b"x-api-key":
                given = value.strip()
                break
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
        return bool(given) and any(hmac.compare_digest(given, k) for k in self.keys)

    def refuse(self, headers: Sequence[tuple[bytes, bytes]]) -> _Answer | None:
        """401 or 413 from the headers alone, else None."""
        if self.keys and not self.authorised(headers):
            return 401, _JSON_HEADERS, _error_body("missing or unknown API key")
        for name, value in headers:
            if name == b"content-length":
                if value.isdigit() and int(value) > self.limit:
                    return 413, _JSON_HEADERS, self.too_large
                break
        return None

    def arrival(self, perf: float | None) -> float:
        """The engine-clock arrival of a request the server stamped at ``perf``."""
        if perf is not None and self.system_clock:
            return perf
        return float(self.engine.clock.monotonic())

    @staticmethod
    def parse(body: bytes) -> BidRequest | _Answer:
        """The request, or the 400 answer that names its problems."""
        try:
            return parse_request(body)
        except InvalidRequest as exc:
            detail = [{"path": p, "message": m} for p, m in exc.problems]
            return 400, _JSON_HEADERS, _error_body(str(exc), detail)

    def answer(self, body: bytes, version: str, received_at: float) -> _Answer:
        """Parse, decide (on this thread) and serialise one complete body."""
        req = self.parse(body)
        if isinstance(req, tuple):
            return req
        return self.respond(self.engine.decide(req, received_at), version)

    @staticmethod
    def respond(resp: BidResponse | None, version: str) -> _Answer:
        version_header = (b"x-openrtb-version", version.encode())
        if resp is None:
            return 204, [version_header], b""
        return 200, [*_JSON_HEADERS, version_header], resp.to_json()

    def complete(self, headers: Sequence[tuple[bytes, bytes]], chunks: list[bytes],
                 size: int, version: str, perf: float | None) -> _Answer:
        """The answer to a whole request the HTTP protocol collected itself
        (:func:`decisioning.server.stamping_protocol`): ``chunks`` hold the body's first
        :attr:`limit` bytes of ``size``; ``perf`` is the parse-time stamp."""
        received_at = self.arrival(perf)
        try:
            refused = self.refuse(headers)
            if refused is not None:
                return refused
            if size > self.limit:
                return 413, _JSON_HEADERS, self.too_large
            return self.answer(chunks[0] if len(chunks) == 1 else b"".join(chunks), version,
                               received_at)
        except Exception:   # noqa: BLE001 - what the ASGI path's guard does
            return _internal_error()

    async def __call__(self, scope: Scope, receive: Receive, version: str) -> _Answer:
        received_at = _arrival(scope, self.engine.clock, self.system_clock)
        refused = self.refuse(scope["headers"])
        if refused is not None:
            return refused
        chunks: list[bytes] = []
        size = 0
        while True:                                 # bounded even without content-length
            message = await receive()
            if message["type"] == "http.disconnect":
                return 400, _JSON_HEADERS, _error_body("client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return 413, _JSON_HEADERS, self.too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if not self.in_threadpool:
            return self.answer(body, version, received_at)
        req = self.parse(body)
        if isinstance(req, tuple):
            return req
        return self.respond(await run_in_threadpool(self.engine.decide, req, received_at),
                            version)


class _DecisionAPI(FastAPI):
    """FastAPI with the two bid routes answered before routing.

    ``POST /openrtb/2.x/bid`` is the hot path (every auction): it goes straight to the
    :class:`_BidHandler` from here, skipping Starlette's middleware stack, router and
    FastAPI's dependency machinery. Every other path, and the bid paths under a root
    path, take the normal routes, which call the same handler.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            version = BID_PATHS.get(scope["path"])
            handle: _BidHandler | None = getattr(self.state, "bid_handler", None)
            if version is not None and handle is not None and not scope.get("root_path"):
                await _answer(send, *await _guarded(handle, scope, receive, version))
                return
        await super().__call__(scope, receive, send)


async def _guarded(handle: _BidHandler, scope: Scope, receive: Receive,
                   version: str) -> tuple[int, _Headers, bytes]:
    try:
        return await handle(scope, receive, version)
    except Exception:   # noqa: BLE001 - what ServerErrorMiddleware does on the slow path
        return _internal_error()


def _internal_error() -> _Answer:
    """Log the exception being handled; the 500 both bid paths answer with."""
    logger.exception("bid handler failed")
    return 500, _JSON_HEADERS, _error_body("internal error")


async def _answer(send: Send, status: int, headers: _Headers, body: bytes) -> None:
    if status != 204:          # a 204 carries no body and no content-length (RFC 9110)
        headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_JSON_HEADERS: _Headers = [(b"content-type", _JSON.encode())]


def create_app(engine: DecisionEngine, *, api_keys: Sequence[str] = (),
               decide_in_threadpool: bool = False, max_body_bytes: int = 1 << 20,
               notices: NoticeService | None = None, docs: bool = True,
               worker_metrics: WorkerMetrics | None = None) -> FastAPI:
    """The decision API over ``engine`` (and ``notices`` when given).

    ``worker_metrics``: this process is one of several workers serving the port;
    ``/metrics`` answers for all of them (:class:`decisioning.metrics.WorkerMetrics`).

    ``api_keys``: when given, bid routes need ``X-API-Key: <key>`` or
    ``Authorization: Bearer <key>`` (401 otherwise); health and notice routes stay open
    (exchanges and browsers fire notices without our keys).
    """
    keys = tuple(k.encode() for k in api_keys if k)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(DecisionCollector(engine, notices, worker_metrics))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # The log writers' child processes start before the first auction, not at the
        # first flush in the middle of traffic (their start-up stalled answers).
        await anyio.to_thread.run_sync(engine.start)
        if notices is not None:
            await anyio.to_thread.run_sync(notices.start)
        if worker_metrics is not None:
            worker_metrics.start(lambda: metric_values(engine, notices))
        yield
        try:
            await anyio.to_thread.run_sync(engine.close)
        finally:
            try:
                if notices is not None:
                    await anyio.to_thread.run_sync(notices.close)
            finally:
                if worker_metrics is not None:      # the final counts, for the others
                    await anyio.to_thread.run_sync(worker_metrics.close)

    app = _DecisionAPI(title="AdPlatform decisioning", lifespan=lifespan,
                  docs_url="/docs" if docs else None, redoc_url=None,
                  openapi_url="/openapi.json" if docs else None,
                  description="OpenRTB 2.5/2.6 bidder: bid requests in, bids out; "
                              "win/billing/loss notices; health and metrics.")
    app.state.engine = engine
    app.state.notices = notices
    app.add_middleware(ReceiveStamp, clock=engine.clock)

    handle = _BidHandler(engine, keys=keys, max_body_bytes=max_body_bytes,
                         in_threadpool=decide_in_threadpool)
    app.state.bid_handler = handle

    def bid_route(version: str) -> Callable[[Request], Awaitable[Response]]:
        # Reached only when the fast path in _DecisionAPI.__call__ does not match (an app
        # mounted under a root path); the same handler answers either way.
        async def bid(request: Request) -> Response:
            status, headers, body = await handle(request.scope, request.receive, version)
            return Response(body, status_code=status,
                            headers={k.decode(): v.decode() for k, v in headers})

        bid.__name__ = f"bid_{version.replace('.', '_')}"
        return bid

    for version in ("2.6", "2.5"):
        app.add_api_route(f"/openrtb/{version}/bid", bid_route(version), methods=["POST"],
                          summary=f"Decide an OpenRTB {version} bid request",
                          responses=BID_RESPONSES, openapi_extra=bid_request_body())

    if notices is not None:
        _add_notice_routes(app, notices, in_threadpool=decide_in_threadpool)

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz", summary="Readiness: campaigns and model versions")
    def readyz() -> Response:
        report = engine.readiness()
        return _json(report, 200 if report["ready"] else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    if docs:
        app.openapi = openapi_with(app)     # type: ignore[method-assign]
    return app


def _add_notice_routes(app: FastAPI, notices: NoticeService, *, in_threadpool: bool) -> None:
    def handler(kind: NoticeKind) -> Callable[[Request], Awaitable[Response]]:
        async def notice(request: Request) -> Response:
            params: dict[str, Any] = dict(request.query_params)
            if request.method == "POST" and request.headers.get("content-type", "").startswith(
                    "application/x-www-form-urlencoded"):
                body = await request.body()
                params.update(parse_qsl(body.decode("utf-8", "replace")))
            try:
                if in_threadpool:
                    result = await run_in_threadpool(notices.handle, kind, params)
                else:
                    result = notices.handle(kind, params)
            except InvalidNotice as exc:
                return _error(400, str(exc))
            except NoticeStoreUnavailable as exc:
                resp = _error(503, f"notice not recorded, retry: {exc}")
                resp.headers["retry-after"] = "1"
                return resp
            return _json({"status": result.status})

        notice.__name__ = f"notice_{kind}"
        return notice

    for path, kind in (("win", "win"), ("bill", "billing"), ("billing", "billing"),
                       ("loss", "loss")):
        for method in ("GET", "POST"):
            app.add_api_route(f"/notice/{path}", handler(kind),  # type: ignore[arg-type]
                              methods=[method], summary=f"{kind} notice",
                              operation_id=f"notice_{path}_{method.lower()}",
                              responses=NOTICE_RESPONSES, include_in_schema=path != "bill")


__all__ = ["RECEIVED_AT", "RECEIVED_PERF", "ReceiveStamp", "create_app"]

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

The bid route reads the raw body, parses it once, calls ``engine.decide`` and writes
the response with the response model's Rust serialiser. By default ``decide`` runs on
the event-loop thread: with the in-process ONNX backend, a cached online reader and an
in-memory ledger it is CPU-only and well under a millisecond. When the featurizer,
backend or ledger talk to the network (Redis, Triton, BentoML), pass
``decide_in_threadpool=True`` so one slow call does not stall every other request
(notices then run in the pool too). The lifespan closes the engine and the notice
service (flushing their logs) on shutdown.
"""

from __future__ import annotations

import hmac
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
from decisioning.metrics import DecisionCollector
from decisioning.notices import (
    InvalidNotice,
    NoticeKind,
    NoticeService,
    NoticeStoreUnavailable,
)
from decisioning.openapi import BID_RESPONSES, NOTICE_RESPONSES, bid_request_body, openapi_with
from decisioning.openrtb import parse_request

_JSON = "application/json"
RECEIVED_PERF = "adplatform.received_perf"      # set by decisioning.server's protocol
RECEIVED_AT = "adplatform.received_at"          # engine-clock stamp used by the routes


def _json(content: object, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type=_JSON)


def _error(status: int, message: str, detail: object = None) -> Response:
    return _json({"error": message, "detail": detail}, status)


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
            perf = scope.get(RECEIVED_PERF)
            scope[RECEIVED_AT] = perf if perf is not None and self._system \
                else self.clock.monotonic()
        await self.app(scope, receive, send)


def create_app(engine: DecisionEngine, *, api_keys: Sequence[str] = (),
               decide_in_threadpool: bool = False, max_body_bytes: int = 1 << 20,
               notices: NoticeService | None = None, docs: bool = True) -> FastAPI:
    """The decision API over ``engine`` (and ``notices`` when given).

    ``api_keys``: when given, bid routes need ``X-API-Key: <key>`` or
    ``Authorization: Bearer <key>`` (401 otherwise); health and notice routes stay open
    (exchanges and browsers fire notices without our keys).
    """
    keys = tuple(k.encode() for k in api_keys if k)
    too_large = f"bid request larger than {max_body_bytes} bytes"
    registry = CollectorRegistry(auto_describe=True)
    registry.register(DecisionCollector(engine, notices))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        try:
            await anyio.to_thread.run_sync(engine.close)
        finally:
            if notices is not None:
                await anyio.to_thread.run_sync(notices.close)

    app = FastAPI(title="AdPlatform decisioning", lifespan=lifespan,
                  docs_url="/docs" if docs else None, redoc_url=None,
                  openapi_url="/openapi.json" if docs else None,
                  description="OpenRTB 2.5/2.6 bidder: bid requests in, bids out; "
                              "win/billing/loss notices; health and metrics.")
    app.state.engine = engine
    app.state.notices = notices
    app.add_middleware(ReceiveStamp, clock=engine.clock)
    clock = engine.clock

    def authorised(request: Request) -> bool:
        given = request.headers.get("x-api-key")
        if given is None:
            auth = request.headers.get("authorization", "")
            if auth[:7].lower() == "bearer ":
                given = auth[7:].strip()
        if not given:
            return False
        raw = given.encode()
        return any(hmac.compare_digest(raw, k) for k in keys)

    def bid_route(version: str) -> Callable[[Request], Awaitable[Response]]:
        headers = {"x-openrtb-version": version}

        async def bid(request: Request) -> Response:
            received_at = request.scope.get(RECEIVED_AT)
            if received_at is None:
                received_at = clock.monotonic()
            if keys and not authorised(request):
                return _error(401, "missing or unknown API key")
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_body_bytes:
                return _error(413, too_large)
            chunks: list[bytes] = []
            size = 0
            async for chunk in request.stream():    # bounded even without content-length
                size += len(chunk)
                if size > max_body_bytes:
                    return _error(413, too_large)
                chunks.append(chunk)
            try:
                req = parse_request(b"".join(chunks))
            except InvalidRequest as exc:
                detail = [{"path": p, "message": m} for p, m in exc.problems]
                return _error(400, str(exc), detail)
            if decide_in_threadpool:
                resp = await run_in_threadpool(engine.decide, req, received_at)
            else:
                resp = engine.decide(req, received_at)
            if resp is None:
                return Response(status_code=204, headers=headers)
            return Response(resp.to_json(), media_type=_JSON, headers=headers)

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

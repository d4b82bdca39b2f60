"""The HTTP shell around a :class:`DecisionEngine`.

Routes::

    POST /openrtb/2.6/bid   200 BidResponse JSON | 204 no bid | 400 {"error", "detail"}
    POST /openrtb/2.5/bid   the same; 2.5 ext locations are read by the parser
    GET  /healthz           liveness
    GET  /readyz            readiness: campaigns loaded, model versions known (503 if not)
    GET  /metrics           engine counters, Prometheus text format

The bid route reads the raw body, parses it once, calls ``engine.decide`` and writes
the response with the response model's Rust serialiser. By default ``decide`` runs on
the event-loop thread: with the in-process ONNX backend and a cached online reader it
is CPU-only and well under a millisecond, and a thread hop would cost more than it
saves. When the featurizer or backend blocks on the network (Redis online store,
Triton, BentoML), pass ``decide_in_threadpool=True`` so one slow call does not stall
every other request. The lifespan closes the engine (flushing the decision log) on
shutdown.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager

import anyio.to_thread
import orjson
from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from starlette.concurrency import run_in_threadpool

from decisioning.engine import DecisionEngine
from decisioning.errors import InvalidRequest
from decisioning.openrtb import parse_request

_JSON = "application/json"


def _json(content: object, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type=_JSON)


def _error(status: int, message: str, detail: object = None) -> Response:
    return _json({"error": message, "detail": detail}, status)


class _EngineCollector:
    """Exposes :meth:`DecisionEngine.stats` as Prometheus counters."""

    def __init__(self, engine: DecisionEngine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        stats = self._engine.stats()
        req = CounterMetricFamily("adplatform_bid_requests", "bid requests decided")
        req.add_metric([], stats.get("requests", 0))
        yield req
        dec = CounterMetricFamily("adplatform_decisions", "decisions by outcome",
                                  labels=["outcome"])
        fb = CounterMetricFamily("adplatform_fallbacks", "degraded dependency calls",
                                 labels=["kind"])
        dec.add_metric(["bid"], stats.get("bids", 0))
        for key, n in sorted(stats.items()):
            if key.startswith("nobid."):
                dec.add_metric([key.removeprefix("nobid.")], n)
            elif key.startswith("fallback."):
                fb.add_metric([key.removeprefix("fallback.")], n)
        yield dec
        yield fb


def create_app(engine: DecisionEngine, *, api_keys: Sequence[str] = (),
               decide_in_threadpool: bool = False,
               max_body_bytes: int = 1 << 20) -> FastAPI:
    """The decision API over ``engine``.

    ``api_keys``: when given, bid routes need ``X-API-Key: <key>`` or
    ``Authorization: Bearer <key>`` (401 otherwise); health routes stay open.
    """
    keys = tuple(k.encode() for k in api_keys if k)
    too_large = f"bid request larger than {max_body_bytes} bytes"
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_EngineCollector(engine))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await anyio.to_thread.run_sync(engine.close)

    app = FastAPI(title="AdPlatform decisioning", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.engine = engine

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
            received_at = engine.clock.monotonic()
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
            body = b"".join(chunks)
            try:
                req = parse_request(body)
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

    app.add_api_route("/openrtb/2.6/bid", bid_route("2.6"), methods=["POST"])
    app.add_api_route("/openrtb/2.5/bid", bid_route("2.5"), methods=["POST"])

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        report = engine.readiness()
        return _json(report, 200 if report["ready"] else 503)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    return app


__all__ = ["create_app"]

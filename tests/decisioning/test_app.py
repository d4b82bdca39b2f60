"""The HTTP app: spec examples end to end, errors, auth, health, lifespan, fuzzing."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from decisioning import (
    BidResponse,
    DecisionEngine,
    EngineConfig,
    FileCampaignStore,
    ManualClock,
    MemorySink,
    ParquetDecisionSink,
    create_app,
    parse_request,
)

from .conftest import DownBackend, FixedBackend, ZeroFeaturizer, serve

pytestmark = pytest.mark.anyio

BID_26 = "/openrtb/2.6/bid"
BID_25 = "/openrtb/2.5/bid"


def _check_response(body: bytes, request: dict[str, Any]) -> BidResponse:
    resp = BidResponse.model_validate_json(body)
    assert resp.id == str(request["id"])     # numeric ids are read as strings
    imps = {str(i["id"]): i for i in request["imp"]}
    bids = resp.bids()
    assert bids and len({b.id for b in bids}) == len(bids)
    for b in bids:
        assert b.impid in imps
        assert b.price >= float(imps[b.impid].get("bidfloor", 0.0))
    return resp


@pytest.mark.realdata
async def test_answers_every_26_example(client: httpx.AsyncClient, sink: MemorySink,
                                        iab26: Path) -> None:
    answered: dict[str, int] = {}
    n_imps = 0
    for path in sorted(iab26.glob("request_*.json")):
        request = json.loads(path.read_bytes())
        n_imps += len(request["imp"])
        r = await client.post(BID_26, content=path.read_bytes(),
                              headers={"content-type": "application/json"})
        assert r.status_code in (200, 204), (path.name, r.text)
        assert r.headers["x-openrtb-version"] == "2.6"
        if r.status_code == 200:
            assert r.headers["content-type"] == "application/json"
            _check_response(r.content, request)
        else:
            assert r.content == b""
        answered[path.stem] = r.status_code
    assert answered["request_1_simple_banner"] == 200
    assert answered["request_3_mobile_app"] == 200
    assert answered["request_4_video"] == 200            # the 640x480 video creative
    assert answered["request_5_pmp_direct_deal"] == 204  # private auction, no deals
    assert len(sink.records) == n_imps                   # one decision per imp


@pytest.mark.realdata
async def test_answers_25_examples(client: httpx.AsyncClient, sink: MemorySink,
                                   spec_examples: Path) -> None:
    folder = spec_examples / "mxmCherry_openrtb_testdata/openrtb2/testdata/bid-request/2.5"
    for path in sorted(folder.glob("*.json")):
        r = await client.post(BID_25, content=path.read_bytes())
        assert r.status_code in (200, 204), (path.name, r.text)
        if r.status_code == 200:
            _check_response(r.content, json.loads(path.read_bytes()))
    mobile = json.loads((folder / "mobile.json").read_bytes())
    recs = [r for r in sink.records if r.request_id == mobile["id"]]
    assert [(r.imp_id, r.reason) for r in recs] == [("1", "bid"), ("2", "no_candidates")]


@pytest.mark.parametrize(("body", "words"), [
    (b"{oops", "malformed JSON"),
    (b'{"imp": [{"id": "1"}]}', "id: required"),
    (b'{"id": "x", "imp": []}', "imp: must not be empty"),
    (b'{"id": "x"}', "imp: required"),
    (b'{"id": "x", "imp": [{"id": "1", "banner": {"w": "big"}}]}', "imp[0].banner.w"),
])
async def test_bad_requests_get_400_json(client: httpx.AsyncClient, sink: MemorySink,
                                         body: bytes, words: str) -> None:
    r = await client.post(BID_26, content=body)
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert words in doc["error"], doc
    assert isinstance(doc["detail"], list) and {"path", "message"} <= set(doc["detail"][0])
    assert sink.records == []


async def test_oversized_body_is_413(engine: DecisionEngine) -> None:
    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 30

    async with serve(create_app(engine, max_body_bytes=100)) as c:
        r = await c.post(BID_26, content=b"{" + b" " * 200 + b"}")
        assert r.status_code == 413 and "larger than 100 bytes" in r.json()["error"]
        r = await c.post(BID_26, content=chunked())         # no content-length
        assert r.status_code == 413


async def test_api_keys(engine: DecisionEngine) -> None:
    body = json.dumps({"id": "k", "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}]})
    async with serve(create_app(engine, api_keys=["s3cret", "other"])) as c:
        assert (await c.post(BID_26, content=body)).status_code == 401
        bad = await c.post(BID_26, content=body, headers={"x-api-key": "nope"})
        assert bad.status_code == 401 and bad.json()["error"] == "missing or unknown API key"
        ok = await c.post(BID_26, content=body, headers={"x-api-key": "s3cret"})
        assert ok.status_code == 200
        bearer = await c.post(BID_25, content=body,
                              headers={"authorization": "Bearer other"})
        assert bearer.status_code == 200
        assert (await c.get("/healthz")).status_code == 200


async def test_health_readiness_and_metrics(client: httpx.AsyncClient,
                                            make_engine: Any) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    await client.post(BID_26, content=b'{"id": "m", "imp": [{"id": "1", "banner": '
                                      b'{"w": 300, "h": 250}}, {"id": "2"}]}')
    text = (await client.get("/metrics")).text
    assert 'adplatform_decisions_total{outcome="bid"} 1.0' in text
    assert 'adplatform_decisions_total{outcome="no_candidates"} 1.0' in text
    assert "adplatform_bid_requests_total 1.0" in text

    class NoVersions(FixedBackend):
        def versions(self) -> dict[str, str]:
            from serving.errors import BackendUnavailable
            raise BackendUnavailable("no registry")

    async with serve(create_app(make_engine(models=NoVersions()))) as c:
        r = await c.get("/readyz")
        assert r.status_code == 503 and r.json()["problems"] == ["models: no registry"]


async def test_dependency_failures_never_give_5xx(make_engine: Any, sink: MemorySink) -> None:
    async with serve(create_app(make_engine(models=DownBackend()))) as c:
        r = await c.post(BID_26, content=b'{"id": "d", "imp": [{"id": "1", "banner": '
                                         b'{"w": 300, "h": 250}}]}')
    assert r.status_code == 204 and sink.records[0].reason == "model_unavailable"


async def test_threadpool_mode_and_shutdown_flush(tmp_path: Path, campaign_file: Path) -> None:
    sink = ParquetDecisionSink(tmp_path / "log", flush_every=10_000, flush_interval_s=None)
    engine = DecisionEngine(featurizer=ZeroFeaturizer(), models=FixedBackend(),
                            campaigns=FileCampaignStore(campaign_file), sink=sink,
                            clock=ManualClock(), config=EngineConfig())
    async with serve(create_app(engine, decide_in_threadpool=True)) as c:
        for i in range(5):
            r = await c.post(BID_26, content=json.dumps(
                {"id": f"t{i}", "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}]}))
            assert r.status_code == 200
        assert sink.pending == 5
    assert sink.pending == 0 and len(sink.files_written) == 1   # flushed by the lifespan


async def test_the_lifespan_starts_the_log_writers_before_the_first_request(
        tmp_path: Path, campaign_file: Path) -> None:
    """The parquet logs' writer processes are spawned at start-up: spawned at the first
    flush instead, mid-traffic, their start stalled answers for half a second."""
    from decisioning.budget import InMemoryBudgetLedger
    from decisioning.notices import (
        InMemoryNoticeDedupe,
        NoticeService,
        ParquetNoticeSink,
    )

    sink = ParquetDecisionSink(tmp_path / "log", flush_every=10_000, flush_interval_s=None)
    shadow = ParquetDecisionSink(tmp_path / "log" / "shadow", flush_every=10_000,
                                 flush_interval_s=None)
    notice_sink = ParquetNoticeSink(tmp_path / "log", flush_every=10_000,
                                    flush_interval_s=None)
    engine = DecisionEngine(featurizer=ZeroFeaturizer(), models=FixedBackend(),
                            campaigns=FileCampaignStore(campaign_file), sink=sink,
                            shadow_sink=shadow, clock=ManualClock(), config=EngineConfig())
    notices = NoticeService(ledger=InMemoryBudgetLedger(), dedupe=InMemoryNoticeDedupe(),
                            sink=notice_sink)
    writers = [s._process for s in (sink, shadow, notice_sink)]
    assert all(w is not None and w._pool is None for w in writers)   # nothing spawned yet
    async with serve(create_app(engine, notices=notices)):
        assert all(w is not None and w._pool is not None for w in writers)
        assert sink.files_written == []                  # started, not flushed
    assert all(s._process is None or s._process._closed for s in (sink, shadow, notice_sink))


# --------------------------------------------------------------------------- fuzzing

_scalar = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8))
_json = st.recursive(_scalar, lambda c: st.lists(c, max_size=3)
                     | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=8)
_sizes = st.sampled_from([(300, 250), (728, 90), (320, 50), (640, 480), (0, 0)])
_banner = st.builds(lambda wh, fmt: {"w": wh[0], "h": wh[1],
                                     "format": [{"w": w, "h": h} for w, h in fmt]},
                    _sizes, st.lists(_sizes, max_size=2))
_video = _sizes.map(lambda wh: {"w": wh[0], "h": wh[1], "mimes": ["video/mp4"]})
_imp = st.fixed_dictionaries({"id": st.text("123ab", min_size=1, max_size=2)}, optional={
    "banner": _banner, "video": _video, "native": st.just({"request": "{}"}),
    "bidfloor": st.floats(0, 7), "bidfloorcur": st.sampled_from(["USD", "GBP"]),
    "pmp": st.fixed_dictionaries({"private_auction": st.integers(0, 1)})})
_required: dict[str, st.SearchStrategy[Any]] = {
    "id": st.text(min_size=1, max_size=6),
    "imp": st.lists(_imp, min_size=1, max_size=4, unique_by=lambda i: i["id"])}
_valid = st.fixed_dictionaries(_required, optional={
    "tmax": st.integers(0, 500), "at": st.integers(1, 3),
    "cur": st.lists(st.sampled_from(["USD", "EUR"]), max_size=2),
    "bcat": st.lists(st.sampled_from(["IAB18", "IAB25", "IAB2-1"]), max_size=2),
    "badv": st.lists(st.sampled_from(["apple.com", "acmeshoes.example"]), max_size=2),
    "device": st.fixed_dictionaries({}, optional={
        "ua": st.text(max_size=10), "ip": st.just("10.0.0.1"), "ifa": st.text(max_size=5),
        "devicetype": st.integers(0, 7), "geo": st.fixed_dictionaries(
            {}, optional={"country": st.sampled_from(["USA", "GBR"])})}),
    "user": st.fixed_dictionaries({}, optional={
        "id": st.text(max_size=5), "consent": st.text(max_size=5),
        "data": st.just([{"segment": [{"id": "s1"}]}])}),
    "regs": st.fixed_dictionaries({}, optional={
        "coppa": st.integers(0, 1), "gdpr": st.integers(0, 1),
        "ext": st.fixed_dictionaries({"gdpr": st.integers(0, 1)})}),
    "site": st.fixed_dictionaries({}, optional={"domain": st.text(max_size=8),
                                                "page": st.text(max_size=12)}),
    "app": st.fixed_dictionaries({}, optional={"bundle": st.text(max_size=8)})})


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    items = node.items() if isinstance(node, dict) else (
        enumerate(node) if isinstance(node, list) else ())
    for k, v in items:
        out.extend(_paths(v, (*prefix, k)))
    return out


@st.composite
def _mutated(draw: st.DrawFn) -> dict[str, Any]:
    """A valid request with 0-2 values (anywhere in the tree) replaced by random JSON."""
    req: dict[str, Any] = copy.deepcopy(draw(_valid))    # never mutate a drawn value
    for _ in range(draw(st.integers(0, 2))):
        path = draw(st.sampled_from(_paths(req)))
        parent: Any = req
        for k in path[:-1]:
            parent = parent[k]
        parent[path[-1]] = draw(_json)
    return req


_body = (_mutated().map(lambda d: json.dumps(d).encode())
         | _json.map(lambda d: json.dumps(d).encode()) | st.binary(max_size=64))


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=_body)
async def test_fuzzed_bodies_never_give_5xx(client: httpx.AsyncClient, body: bytes) -> None:
    for path in (BID_26, BID_25):
        r = await client.post(path, content=body)
        event(f"status {r.status_code}")
        assert r.status_code in (200, 204, 400), (r.status_code, r.text, body)
        if r.status_code == 200:
            _check_response(r.content, json.loads(body))
            parse_request(body)                     # 200 only for valid requests
        elif r.status_code == 400:
            assert r.json()["error"]


async def test_fast_path_answers_like_the_routed_path(make_engine: Any) -> None:
    """The bid routes are answered before routing; under a root path the request takes
    FastAPI's routes instead. Both give the same statuses, headers and bodies."""
    bid = {"id": "f", "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}]}
    cases = [
        (BID_26, json.dumps(bid), {"x-api-key": "k"}),                          # 200
        (BID_25, json.dumps(bid), {"authorization": "Bearer k"}),               # 200
        (BID_26, json.dumps({"id": "n", "imp": [{"id": "1"}]}), {"x-api-key": "k"}),  # 204
        (BID_26, '{"id": "x", "imp": []}', {"x-api-key": "k"}),                 # 400
        (BID_26, json.dumps(bid), {}),                                          # 401
        (BID_26, json.dumps(bid) + " " * 600, {"x-api-key": "k"}),              # 413
    ]

    async def answers(root_path: str) -> list[tuple[int, str | None, str | None, Any]]:
        app = create_app(make_engine(), api_keys=["k"], max_body_bytes=500)
        out = []
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, root_path=root_path)
            async with httpx.AsyncClient(transport=transport, base_url="http://b") as c:
                for path, body, headers in cases:
                    r = await c.post(path, content=body, headers=headers)
                    doc = r.json() if r.content else None
                    for b in (doc or {}).get("seatbid", [{}])[0].get("bid", []):
                        b.pop("id")                     # random per engine
                    out.append((r.status_code, r.headers.get("content-type"),
                                r.headers.get("x-openrtb-version"), doc))
        return out

    fast, routed = await answers(""), await answers("/behind-a-proxy")
    assert [s for s, *_ in fast] == [200, 200, 204, 400, 401, 413]
    assert fast == routed


async def test_worker_metrics_answer_for_every_worker(make_engine: Any, tmp_path: Path
                                                      ) -> None:
    from decisioning.metrics import WorkerMetrics

    folder = tmp_path / "metrics"
    body = b'{"id": "%d", "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}]}'
    # two workers of one service: one app each, one metrics folder
    app0 = create_app(make_engine(), worker_metrics=WorkerMetrics(folder, 0, interval_s=60))
    app1 = create_app(make_engine(), worker_metrics=WorkerMetrics(folder, 1, interval_s=60))
    async with serve(app1) as c1:
        for i in range(3):
            assert (await c1.post(BID_26, content=body % i)).status_code == 200
    # worker 1 stopped: its final values were published on shutdown
    async with serve(app0) as c0:
        assert (await c0.post(BID_26, content=body % 9)).status_code == 200
        text = (await c0.get("/metrics")).text
        assert "adplatform_bid_requests_total 4.0" in text        # 1 live + 3 published
        assert 'adplatform_decisions_total{outcome="bid"} 4.0' in text
        assert 'adplatform_decision_latency_seconds_count 4.0' in text
    # a replacement for worker 1 starts from its predecessor's counts: no fall
    again = create_app(make_engine(), worker_metrics=WorkerMetrics(folder, 1, interval_s=60))
    async with serve(again) as c:
        text = (await c.get("/metrics")).text
        assert "adplatform_bid_requests_total 4.0" in text

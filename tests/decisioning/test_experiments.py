"""Experiments (variants, alias sets, policies, shadow), exploration, fallbacks, shedding."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httpx
import numpy as np
import pytest

from adplatform.errors import ConfigError
from decisioning import (
    DecisionEngine,
    EngineConfig,
    Experiment,
    ManualClock,
    MemorySink,
    ShadeFactorPricer,
    Variant,
    create_app,
    parse_request,
)
from decisioning.app import RECEIVED_PERF
from decisioning.experiments import ShadowRunner

from .conftest import DownBackend, EngineFactory, FixedBackend, serve


def _req(rid: str, user: str | None = None, w: int = 300, h: int = 250) -> Any:
    body: dict[str, Any] = {"id": rid, "at": 1,
                            "imp": [{"id": "1", "banner": {"w": w, "h": h}}]}
    if user is not None:
        body["user"] = {"id": user}
    return parse_request(json.dumps(body))


def test_assignment_is_salted_deterministic_and_weighted() -> None:
    exp = Experiment("ctr-v4", [Variant("control", 0.8), Variant("treatment", 0.2)])
    users = [f"u{i}" for i in range(20_000)]
    first = [exp.assign(u).name for u in users]
    assert first == [exp.assign(u).name for u in users]               # sticky
    share = Counter(first)["treatment"] / len(users)
    assert 0.18 < share < 0.22
    other = Experiment("ctr-v4", exp.variants, salt="2024-06")
    moved = sum(a != other.assign(u).name for a, u in zip(first, users, strict=True))
    assert moved > 1000                                               # a new salt re-randomises
    for bad in ([], [Variant("a"), Variant("a")], [Variant("a", -1.0)]):
        with pytest.raises(ConfigError):
            Experiment("x", bad)


def test_variants_pick_backends_and_policies_and_are_logged(make_engine: EngineFactory,
                                                            sink: MemorySink) -> None:
    champion, challenger = FixedBackend(pctr=0.01), FixedBackend(pctr=0.02)
    exp = Experiment("e", [Variant("control", 1, models="champion"),
                           Variant("treatment", 1, models="challenger",
                                   policy=ShadeFactorPricer(0.5))])
    engine = make_engine(models=champion, experiment=exp,
                         backends={"champion": champion, "challenger": challenger})
    for i in range(200):
        engine.decide(_req(f"r{i}", user=f"user{i}"), engine.clock.monotonic())
    by_variant: dict[str, set[tuple[str, float]]] = {}
    for r in sink.records:
        by_variant.setdefault(r.variant, set()).add((r.policy, round(r.price, 6)))
    assert by_variant == {"control": {("shade_factor_0.7", 5.6)},          # 0.01×800×0.7
                          "treatment": {("shade_factor_0.5", 8.0)}}        # 0.02×800×0.5
    assert len(champion.inputs) + len(challenger.inputs) == 200
    # One user stays in one variant; without consent the unit is the request instead.
    sink.records.clear()
    for i in range(40):
        engine.decide(_req(f"same{i}", user="carol"), engine.clock.monotonic())
        coppa = _req(f"kid{i}", user="carol").model_copy(
            update={"regs": parse_request(json.dumps(
                {"id": "x", "imp": [{"id": "1"}], "regs": {"coppa": 1}})).regs})
        engine.decide(coppa, engine.clock.monotonic())
    assert len({r.variant for r in sink.records if r.request_id.startswith("same")}) == 1
    assert len({r.variant for r in sink.records if r.request_id.startswith("kid")}) == 2
    with pytest.raises(ConfigError, match="alias set 'nope'"):
        make_engine(experiment=Experiment("e", [Variant("v", models="nope")]))


def test_shadow_scores_are_logged_apart_and_never_bid(make_engine: EngineFactory,
                                                      sink: MemorySink) -> None:
    champion, challenger = FixedBackend(pctr=0.01), FixedBackend(pctr=0.5)
    shadow = MemorySink()
    engine = make_engine(models=champion, backends={"challenger": challenger},
                         experiment=Experiment("s", [Variant("all", shadow="challenger")]),
                         shadow_sink=shadow)
    resp = engine.decide(_req("r1", user="u"), engine.clock.monotonic())
    assert resp is not None and resp.bids()[0].price == pytest.approx(5.6)   # champion's
    engine.drain_shadow()
    (live,) = sink.records
    (shade,) = shadow.records
    assert live.variant == "all" and live.pctr == pytest.approx(0.01)
    assert shade.variant == "all:shadow:challenger" and shade.pctr == pytest.approx(0.5)
    assert shade.bid and shade.price == pytest.approx(280.0) and shade.request_id == "r1"
    engine.close()
    assert shadow.closed


def test_shadow_runner_drops_when_full_and_survives_failures() -> None:
    seen: list[int] = []

    def work(i: int) -> None:
        if i == 1:
            raise RuntimeError("boom")
        seen.append(i)

    runner: ShadowRunner[int] = ShadowRunner(work, maxsize=1000)
    for i in range(5):
        assert runner.submit(i)
    runner.drain()
    assert seen == [0, 2, 3, 4] and runner.failed == 1
    runner.close()
    assert not runner.submit(9)


def test_exploration_propensities_match_choice_frequencies(make_engine: EngineFactory,
                                                           sink: MemorySink) -> None:
    """IPS check: for every candidate k, mean(1[chosen = k] / propensity) ≈ 1."""
    engine = make_engine(config=EngineConfig(exploration_share=0.3, seed=5))
    n = 6000
    for i in range(n):
        engine.decide(_req(f"r{i}", w=728, h=90), engine.clock.monotonic())
    props: dict[str, float] = {}
    counts: Counter[str] = Counter()
    for r in sink.records:
        counts[r.creative_id] += 1
        props[r.creative_id] = r.propensity
    assert sorted(counts) == ["cr01b", "cr03b", "cr04b"]
    assert props["cr04b"] == pytest.approx(0.7 + 0.1) and props["cr01b"] == pytest.approx(0.1)
    for crid, c in counts.items():
        assert c / props[crid] / n == pytest.approx(1.0, abs=0.08)
    assert sum(props.values()) == pytest.approx(1.0)


def test_fallback_backend_scores_when_the_primary_is_down(make_engine: EngineFactory,
                                                          sink: MemorySink) -> None:
    fallback = FixedBackend(pctr=0.005)
    engine = make_engine(models=DownBackend(), fallback_models=fallback)
    resp = engine.decide(_req("r"), engine.clock.monotonic())
    assert resp is not None and resp.bids()[0].price == pytest.approx(2.8)
    assert engine.stats()["fallback.model_unavailable"] == 1

    class AlsoDown(FixedBackend):
        def score(self, inputs: Any) -> Any:
            raise ValueError("broken too")

    engine2 = make_engine(models=DownBackend(), fallback_models=AlsoDown())
    assert engine2.decide(_req("r2"), engine2.clock.monotonic()) is None
    assert [r.reason for r in sink.records] == ["bid", "model_unavailable"]


@pytest.mark.anyio
async def test_requests_queued_past_their_budget_are_shed(make_engine: EngineFactory,
                                                          clock: ManualClock,
                                                          sink: MemorySink) -> None:
    from decisioning.app import RECEIVED_AT

    engine = make_engine(config=EngineConfig(margin_ms=10))
    app = create_app(engine)
    body = json.dumps({"id": "q", "tmax": 50, "imp": [{"id": "1", "banner": {"w": 300,
                                                                              "h": 250}}]})
    queued = {"s": 0.0}

    async def queue(scope: Any, receive: Any, send: Any) -> None:
        # An outer layer stamps arrival on the engine clock, then the request waits.
        scope[RECEIVED_AT] = clock.monotonic()
        clock.advance(queued["s"])
        await app(scope, receive, send)

    async with serve(app):
        transport = httpx.ASGITransport(app=queue)
        async with httpx.AsyncClient(transport=transport, base_url="http://b") as c:
            queued["s"] = 0.039                             # budget 40 ms: still in time
            assert (await c.post("/openrtb/2.6/bid", content=body)).status_code == 200
            queued["s"] = 0.041                             # waited past its budget
            assert (await c.post("/openrtb/2.6/bid", content=body)).status_code == 204
    assert [r.reason for r in sink.records] == ["bid", "deadline"]
    assert sink.records[1].latency_ms == pytest.approx(41.0)
    assert engine.stats()["shed"] == 1


@pytest.mark.anyio
async def test_server_stamp_is_used_with_the_system_clock(campaign_file: Any) -> None:
    import time

    from decisioning import FileCampaignStore
    from decisioning.app import ReceiveStamp

    from .conftest import ZeroFeaturizer

    sink = MemorySink()
    engine = DecisionEngine(featurizer=ZeroFeaturizer(), models=FixedBackend(),
                            campaigns=FileCampaignStore(campaign_file), sink=sink)
    app = create_app(engine)
    body = json.dumps({"id": "q", "tmax": 50, "imp": [{"id": "1", "banner": {"w": 300,
                                                                              "h": 250}}]})

    async def stamped(scope: Any, receive: Any, send: Any) -> None:
        scope[RECEIVED_PERF] = time.perf_counter() - 0.2      # parsed 200 ms ago
        await app(scope, receive, send)

    async with serve(app):
        transport = httpx.ASGITransport(app=stamped)
        async with httpx.AsyncClient(transport=transport, base_url="http://b") as c:
            r = await c.post("/openrtb/2.6/bid", content=body)
    assert r.status_code == 204 and sink.records[0].reason == "deadline"
    assert sink.records[0].latency_ms >= 200 and engine.stats()["shed"] == 1
    assert isinstance(app.user_middleware[0].cls, type)
    assert app.user_middleware[0].cls is ReceiveStamp


@pytest.mark.anyio
async def test_openapi_and_metrics(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    bid = doc["paths"]["/openrtb/2.6/bid"]["post"]
    assert bid["requestBody"]["content"]["application/json"]["schema"]["$ref"] == \
        "#/components/schemas/BidRequest"
    assert {"BidRequest", "BidResponse", "Imp", "Bid"} <= set(doc["components"]["schemas"])
    assert {"200", "204", "400", "401", "413"} <= set(bid["responses"])
    assert (await client.get("/docs")).status_code == 200
    await client.post("/openrtb/2.6/bid", content=b'{"id": "m", "imp": [{"id": "1", '
                                                  b'"banner": {"w": 300, "h": 250}}]}')
    text = (await client.get("/metrics")).text
    assert "adplatform_decision_latency_seconds_count 1.0" in text
    assert 'adplatform_decision_latency_seconds_bucket{le="+Inf"} 1.0' in text
    assert "adplatform_shed_total 0.0" in text


def test_latency_histogram_buckets() -> None:
    from decisioning.metrics import LatencyHistogram

    h = LatencyHistogram((0.001, 0.01))
    for s in (0.0005, 0.001, 0.005, 2.0):
        h.observe(s)
    buckets, total = h.snapshot()
    assert buckets == [("0.001", 2.0), ("0.01", 3.0), ("+Inf", 4.0)]
    assert total == pytest.approx(2.0065)
    assert np.isfinite(total)

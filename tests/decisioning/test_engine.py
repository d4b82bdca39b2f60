"""The decision engine with fake featurizer/backends and a manual clock."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adplatform.errors import ConfigError
from decisioning import (
    DECISION_COLUMNS,
    NO_BID_REASONS,
    BidRequest,
    BidResponse,
    DecisionEngine,
    EngineConfig,
    ManualClock,
    MemorySink,
    parse_request,
)
from serving.base import AuctionInputs, AuctionScores

from .conftest import DownBackend, DownFeaturizer, EngineFactory, FixedBackend, ZeroFeaturizer


def _req(body: dict[str, Any]) -> BidRequest:
    return parse_request(json.dumps(body))


def _banner(w: int = 300, h: int = 250, floor: float = 0.03, **extra: Any) -> BidRequest:
    return _req({"id": "r1", "at": 1,
                 "imp": [{"id": "1", "bidfloor": floor, "banner": {"w": w, "h": h}}], **extra})


def _decide(engine: DecisionEngine, req: BidRequest) -> BidResponse | None:
    return engine.decide(req, engine.clock.monotonic())


def _reasons(sink: MemorySink) -> list[str]:
    return [r.reason for r in sink.records]


@pytest.mark.realdata
def test_bids_on_simple_banner(engine: DecisionEngine, sink: MemorySink, iab26: Path) -> None:
    req = parse_request((iab26 / "request_1_simple_banner.json").read_bytes())
    resp = _decide(engine, req)
    assert resp is not None and resp.id == req.id and resp.cur == "USD"
    (bid,) = resp.bids()
    # pCTR 0.01 × CPC 0.8 × 1000 = 8 CPM value; first price (at=1): 0.7 × 8.
    assert bid.impid == "1" and bid.price == pytest.approx(5.6) and bid.price >= 0.03
    assert (bid.cid, bid.crid, bid.adid, bid.w, bid.h) == ("c01", "cr01a", "cr01a", 300, 250)
    assert bid.adomain == ["acmeshoes.example"] and bid.cat == ["IAB18"] and bid.mtype == 1
    assert bid.adm == "<div>cr01a</div>"
    (rec,) = sink.records
    assert (rec.request_id, rec.imp_id, rec.bid, rec.reason) == (req.id, "1", True, "bid")
    assert (rec.campaign_id, rec.creative_id, rec.price) == ("c01", "cr01a", bid.price)
    assert rec.pctr == pytest.approx(0.01) and rec.value == pytest.approx(8.0)
    assert rec.propensity == 1.0 and rec.policy == "shade_factor_0.7"
    assert rec.variant == "default" and rec.model_version == "ctr=3"
    assert rec.feature_service == "test_fs" and rec.latency_ms >= 0.0
    assert rec.ts == engine.clock.now()


@pytest.mark.realdata
def test_mobile_app_respects_bcat_badv_and_bids_truthfully_in_second_price(
        engine: DecisionEngine, sink: MemorySink, iab26: Path) -> None:
    req = parse_request((iab26 / "request_3_mobile_app.json").read_bytes())
    resp = _decide(engine, req)
    assert resp is not None
    (bid,) = resp.bids()
    # c04 (apple.com, in badv) and c03 (IAB25-3, under bcat IAB25) are worth more.
    assert bid.crid == "cr01b" and (bid.w, bid.h) == (728, 90)
    assert req.at == 2 and bid.price == pytest.approx(8.0) and bid.price >= 0.5
    without_blocks = req.model_copy(update={"bcat": None, "badv": None, "id": "r2"})
    resp2 = _decide(engine, without_blocks)
    assert resp2 is not None and resp2.bids()[0].crid == "cr04b"


def test_value_for_cpa_campaigns(engine: DecisionEngine, sink: MemorySink) -> None:
    req = _req({"id": "v", "at": 1, "imp": [{"id": "1", "video": {"w": 640, "h": 480}}]})
    resp = _decide(engine, req)
    assert resp is not None
    (bid,) = resp.bids()
    # pCTR 0.01 × p_conv 0.05 × CPA 20 × 1000 = 10 CPM; × 0.7 shading.
    assert bid.crid == "cr02v" and bid.mtype == 2 and bid.price == pytest.approx(7.0)
    assert sink.records[0].value == pytest.approx(10.0)


def test_below_floor_is_a_no_bid_with_value(engine: DecisionEngine, sink: MemorySink) -> None:
    assert _decide(engine, _banner(floor=6.0)) is None
    (rec,) = sink.records
    assert (rec.bid, rec.reason, rec.price, rec.campaign_id) == (False, "below_floor", 0.0, "")
    assert rec.value == pytest.approx(8.0) and rec.model_version == "ctr=3"


def test_one_record_per_imp_and_unique_bid_ids(engine: DecisionEngine,
                                               sink: MemorySink) -> None:
    req = _req({"id": "multi", "at": 1, "imp": [
        {"id": "a", "banner": {"w": 300, "h": 250}},
        {"id": "b", "banner": {"w": 728, "h": 90}},
        {"id": "c", "banner": {"w": 1, "h": 1}},
        {"id": "d", "video": {"w": 640, "h": 480}},
        {"id": "e"}]})
    resp = _decide(engine, req)
    assert resp is not None
    bids = resp.bids()
    assert sorted(b.impid for b in bids) == ["a", "b", "d"]
    assert len({b.id for b in bids}) == len(bids)
    assert [(r.imp_id, r.reason) for r in sink.records] == [
        ("a", "bid"), ("b", "bid"), ("c", "no_candidates"), ("d", "bid"),
        ("e", "no_candidates")]
    again = _decide(engine, req)
    assert again is not None and not {b.id for b in bids} & {b.id for b in again.bids()}
    assert engine.stats()["decisions"] == 10 and engine.stats()["bids"] == 6


def test_deadline_before_start(make_engine: EngineFactory, clock: ManualClock,
                               sink: MemorySink) -> None:
    engine = make_engine(config=EngineConfig(margin_ms=10, default_tmax_ms=100))
    late = clock.monotonic() - 0.095          # received 95 ms ago; budget is 90 ms
    assert engine.decide(_banner(), late) is None
    assert _reasons(sink) == ["deadline"]
    assert engine.stats()["nobid.deadline"] == 1


def test_deadline_uses_request_tmax(make_engine: EngineFactory, clock: ManualClock,
                                    sink: MemorySink) -> None:
    engine = make_engine(config=EngineConfig(margin_ms=10, default_tmax_ms=100))
    received = clock.monotonic() - 0.095
    assert engine.decide(_banner(tmax=300), received) is not None    # 290 ms budget
    assert engine.decide(_banner(tmax=50), clock.monotonic() - 0.045) is None
    assert _reasons(sink) == ["bid", "deadline"]


def test_deadline_during_feature_reads(make_engine: EngineFactory, clock: ManualClock,
                                       sink: MemorySink) -> None:
    engine = make_engine(featurizer=ZeroFeaturizer(clock, delay_s=0.2))
    assert _decide(engine, _banner()) is None
    assert _reasons(sink) == ["deadline"]


def test_deadline_during_scoring_turns_bids_into_no_bids(
        make_engine: EngineFactory, clock: ManualClock, sink: MemorySink) -> None:
    engine = make_engine(models=FixedBackend(clock=clock, delay_s=0.2))
    req = _req({"id": "r", "imp": [{"id": "1", "banner": {"w": 300, "h": 250}},
                                   {"id": "2", "banner": {"w": 728, "h": 90}}]})
    assert _decide(engine, req) is None
    assert _reasons(sink) == ["deadline", "deadline"]
    assert all(r.latency_ms >= 200 for r in sink.records)
    assert all(not r.bid and r.campaign_id == "" for r in sink.records)


def test_feature_store_down_falls_back_to_defaults(make_engine: EngineFactory,
                                                   sink: MemorySink) -> None:
    featurizer = DownFeaturizer()
    engine = make_engine(featurizer=featurizer)
    assert _decide(engine, _banner()) is not None
    assert featurizer.default_calls == 1
    (rec,) = sink.records
    assert rec.bid and rec.feature_service == "defaults"
    assert engine.stats()["fallback.features_unavailable"] == 1


def test_featurizer_bug_falls_back_then_no_bids(make_engine: EngineFactory,
                                                sink: MemorySink) -> None:
    class Broken(ZeroFeaturizer):
        def build(self, ctx: Any, ads: Any) -> AuctionInputs:
            raise KeyError("bug")

    class VeryBroken(Broken):
        def defaults(self, ctx: Any, ads: Any) -> AuctionInputs:
            raise RuntimeError("worse")

    assert _decide(make_engine(featurizer=Broken()), _banner()) is not None
    assert _decide(make_engine(featurizer=VeryBroken()), _banner()) is None
    assert _reasons(sink) == ["bid", "features_error"]


def test_model_unavailable_is_a_counted_no_bid(make_engine: EngineFactory,
                                               sink: MemorySink) -> None:
    engine = make_engine(models=DownBackend())
    assert _decide(engine, _banner()) is None
    assert _reasons(sink) == ["model_unavailable"]
    assert sink.records[0].feature_service == "test_fs"
    assert engine.stats()["nobid.model_unavailable"] == 1


def test_model_errors_degrade_to_no_bid(make_engine: EngineFactory, sink: MemorySink) -> None:
    class WrongShape(FixedBackend):
        def score(self, inputs: AuctionInputs) -> AuctionScores:
            return AuctionScores(pctr=np.zeros(inputs.ctr.shape[0] + 1))

    class Crashes(FixedBackend):
        def score(self, inputs: AuctionInputs) -> AuctionScores:
            raise ValueError("onnxruntime bug")

    class NaNs(FixedBackend):
        def score(self, inputs: AuctionInputs) -> AuctionScores:
            return AuctionScores(pctr=np.full(inputs.ctr.shape[0], np.nan))

    for backend in (WrongShape(), Crashes(), NaNs()):
        assert _decide(make_engine(models=backend), _banner()) is None
    assert _reasons(sink) == ["model_error", "model_error", "below_floor"]


def test_fraud_screen(make_engine: EngineFactory, sink: MemorySink) -> None:
    assert _decide(make_engine(models=FixedBackend(fraud=0.9)), _banner()) is None
    assert _decide(make_engine(models=FixedBackend(fraud=0.1)), _banner()) is not None
    off = make_engine(models=FixedBackend(fraud=0.9),
                      config=EngineConfig(fraud_threshold=None))
    assert _decide(off, _banner()) is not None
    assert _reasons(sink) == ["fraud", "bid", "bid"]


def test_currencies(make_engine: EngineFactory, sink: MemorySink) -> None:
    engine = make_engine(config=EngineConfig(fx_rates={"GBP": 1.25}))
    assert _decide(engine, _banner(cur=["EUR"])) is None                 # cannot bid in EUR
    gbp = _req({"id": "g", "at": 1, "cur": ["usd"], "imp": [
        {"id": "1", "bidfloor": 4.0, "bidfloorcur": "GBP", "banner": {"w": 300, "h": 250}},
        {"id": "2", "bidfloor": 5.0, "bidfloorcur": "GBP", "banner": {"w": 300, "h": 250}},
        {"id": "3", "bidfloor": 1.0, "bidfloorcur": "JPY", "banner": {"w": 300, "h": 250}}]})
    resp = _decide(engine, gbp)
    # Floors 4 GBP = 5 USD (< 5.6: bid) and 5 GBP = 6.25 USD (> 5.6: no bid); JPY unknown.
    assert resp is not None and [b.impid for b in resp.bids()] == ["1"]
    assert _reasons(sink) == ["currency", "bid", "below_floor", "currency"]


def test_private_auction_without_deals_is_a_no_bid(engine: DecisionEngine,
                                                   sink: MemorySink) -> None:
    req = _req({"id": "p", "imp": [{"id": "1", "banner": {"w": 300, "h": 250},
                                    "pmp": {"private_auction": 1, "deals": [{"id": "d"}]}}]})
    assert _decide(engine, req) is None and _reasons(sink) == ["private_auction"]


def test_notice_urls_carry_macros(make_engine: EngineFactory) -> None:
    engine = make_engine(config=EngineConfig(notice_base_url="https://bidder.example/n/",
                                             seat="adplatform"))
    resp = _decide(engine, _banner())
    assert resp is not None and resp.seatbid[0].seat == "adplatform"
    (bid,) = resp.bids()
    assert bid.nurl is not None and bid.burl is not None and bid.lurl is not None
    assert bid.nurl.startswith("https://bidder.example/n/win?id=${AUCTION_ID}")
    assert "price=${AUCTION_PRICE}" in bid.nurl and "crid=cr01a" in bid.nurl
    assert "price=${AUCTION_PRICE}" in bid.burl and "/bill?" in bid.burl
    assert "loss=${AUCTION_LOSS}" in bid.lurl
    assert _decide(make_engine(), _banner()).bids()[0].nurl is None  # type: ignore[union-attr]


def test_spend_is_recorded_and_budget_stops_bidding(make_engine: EngineFactory,
                                                    campaign_file: Path) -> None:
    doc = json.loads(campaign_file.read_text())
    doc["campaigns"][0]["daily_budget"] = 0.01      # 5.6 CPM → 0.0056 per bid
    campaign_file.write_text(json.dumps(doc))
    engine = make_engine()
    assert _decide(engine, _banner()) is not None
    assert _decide(engine, _banner()) is not None
    assert _decide(engine, _banner()) is None       # 0.0112 spent ≥ 0.01


def test_exploration_logs_propensities(make_engine: EngineFactory, sink: MemorySink) -> None:
    engine = make_engine(config=EngineConfig(exploration_share=0.5, seed=3),
                         models=FixedBackend(pctr=0.01))
    for i in range(400):
        _decide(engine, _banner(728, 90).model_copy(update={"id": f"r{i}"}))
    chosen = [r.creative_id for r in sink.records]
    props = {r.creative_id: r.propensity for r in sink.records}
    # Three eligible candidates: best with 0.5 + 0.5/3, others 0.5/3.
    assert props["cr04b"] == pytest.approx(0.5 + 0.5 / 3)
    assert props["cr03b"] == pytest.approx(0.5 / 3) == props["cr01b"]
    assert 0.55 < chosen.count("cr04b") / len(chosen) < 0.78


def test_records_have_the_decisions_schema(engine: DecisionEngine, sink: MemorySink) -> None:
    _decide(engine, _banner())
    _decide(engine, _banner(floor=100))
    frame = sink.frame()
    from adplatform.eventlog import SCHEMAS, to_arrow

    assert tuple(frame.columns) == DECISION_COLUMNS == tuple(SCHEMAS["decisions"].names)
    table = to_arrow("decisions", frame)
    assert table.num_rows == 2
    assert set(frame["reason"]) <= {"bid", *NO_BID_REASONS}


def test_config_is_validated() -> None:
    for bad in ({"shade_factor": 0.0}, {"exploration_share": 1.0}, {"max_candidates": 0},
                {"margin_ms": -1}, {"fx_rates": {"GBP": 0.0}}):
        with pytest.raises(ConfigError):
            EngineConfig(**bad)  # type: ignore[arg-type]


def test_readiness_and_close(make_engine: EngineFactory, sink: MemorySink,
                             campaign_file: Path) -> None:
    backend = FixedBackend()
    engine = make_engine(models=backend)
    report = engine.readiness()
    assert report["ready"] and report["campaigns"] == 5 and report["models"] == {"ctr": "3"}
    engine.close()
    assert sink.closed and backend.closed
    from decisioning import IndexedCampaignStore

    empty = make_engine(campaigns=IndexedCampaignStore())
    assert not empty.readiness()["ready"]

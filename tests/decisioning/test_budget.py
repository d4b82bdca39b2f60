"""Money in micro-dollars, reservations, pacing and frequency caps (in-process)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from adplatform.errors import ConfigError
from decisioning import (
    BudgetUnavailable,
    EngineConfig,
    FileCampaignStore,
    InMemoryBudgetLedger,
    InMemoryFrequencyCounter,
    InvalidAmount,
    ManualClock,
    MemorySink,
    Pacer,
    cpm_to_micros,
    parse_request,
    to_micros,
)
from decisioning.budget import micros_to_dollars

from .conftest import EngineFactory, reserve_in_threads

DAY = date(2024, 1, 1)


def _banner(rid: str = "r", user: str | None = None, floor: float = 0.03) -> Any:
    body: dict[str, Any] = {"id": rid, "at": 1, "imp": [{"id": "1", "bidfloor": floor,
                                                         "banner": {"w": 300, "h": 250}}]}
    if user:
        body["user"] = {"id": user}
    return parse_request(json.dumps(body))


def test_money_conversions_are_exact() -> None:
    assert cpm_to_micros("1.234") == 1234                # 1.234 CPM = $0.001234 each
    assert cpm_to_micros("0.0005") == 1                  # half a micro rounds half-up
    assert cpm_to_micros(Decimal("5.6")) == 5600 and cpm_to_micros(5.6) == 5600
    assert to_micros(0.1) == 100_000 and to_micros("2000") == 2_000_000_000
    assert micros_to_dollars(1234) == Decimal("0.001234")
    # A thousand 0.1-dollar charges: floats drift, micros do not.
    assert sum([0.1] * 1000) != 100.0
    assert sum(to_micros(0.1) for _ in range(1000)) == to_micros(100)
    for bad in ("abc", "-1", "nan", "inf", ""):
        with pytest.raises(InvalidAmount):
            cpm_to_micros(bad)


def test_reserve_settle_release_and_expiry() -> None:
    clock = ManualClock()
    ledger = InMemoryBudgetLedger(clock=clock, reservation_ttl_s=60)
    assert ledger.reserve("c", "b1", 400, DAY, budget_micros=1000)
    assert ledger.reserve("c", "b1", 400, DAY, budget_micros=1000)      # idempotent
    assert ledger.reserve("c", "b2", 700, DAY, budget_micros=1000)      # 400 < budget
    assert ledger.committed_micros("c", DAY) == 1100
    assert not ledger.reserve("c", "b3", 1, DAY, budget_micros=1000)    # reached: refused
    assert ledger.settle("c", "b1", 250, DAY) == 250                    # paid less than bid
    assert ledger.committed_micros("c", DAY) == 950 and ledger.spent_micros("c", DAY) == 250
    ledger.release("c", "b2")
    assert ledger.committed_micros("c", DAY) == 250
    assert ledger.reserve("c", "b4", 500, DAY, budget_micros=1000)
    clock.advance(61)                                                   # never billed
    assert ledger.committed_micros("c", DAY) == 250 and ledger.reserved_micros("c") == 0
    assert ledger.reserve("c", "b5", 100, DAY, budget_micros=None, spend=True)
    assert ledger.spent_micros("c", DAY) == 350 and ledger.spent("c", DAY) == 0.00035
    with pytest.raises(InvalidAmount):
        ledger.reserve("c", "b6", -1, DAY, budget_micros=None)


def test_concurrent_reservations_never_pass_the_budget_by_more_than_one() -> None:
    ledger = InMemoryBudgetLedger()
    granted = reserve_in_threads(ledger, DAY, threads=8, per_thread=500, amount=7,
                                 budget=10_000)
    assert 10_000 <= granted < 10_000 + 7


def test_pacer_follows_the_expected_traffic_curve() -> None:
    pacer = Pacer(slack=0.1, seed=1)
    noon = datetime(2024, 1, 1, 12, tzinfo=UTC)
    assert pacer.expected_fraction(noon) == pytest.approx(0.5)
    assert pacer.pass_probability(400, 1000, noon) == 1.0           # behind the curve
    assert pacer.pass_probability(550, 1000, noon) == pytest.approx(0.5)
    assert pacer.pass_probability(600, 1000, noon) == 0.0           # allowance ahead
    assert 0.4 < sum(pacer.allow(550, 1000, noon) for _ in range(2000)) / 2000 < 0.6
    night = Pacer([0.0] * 6 + [1.0] * 18)                           # no traffic 0-6h
    assert night.expected_fraction(datetime(2024, 1, 1, 6, tzinfo=UTC)) == 0.0
    assert night.expected_fraction(datetime(2024, 1, 1, 15, tzinfo=UTC)) == pytest.approx(0.5)
    for bad in ({"hourly_shares": [1.0] * 23}, {"hourly_shares": [0.0] * 24}, {"slack": 0}):
        with pytest.raises(ConfigError):
            Pacer(**bad)  # type: ignore[arg-type]


def _doc(campaign_file: Path, **changes: Any) -> None:
    doc = json.loads(campaign_file.read_text())
    doc["campaigns"][0].update(changes)
    campaign_file.write_text(json.dumps(doc))


def test_pacing_throttles_a_campaign_ahead_of_its_curve(
        make_engine: EngineFactory, campaign_file: Path, sink: MemorySink,
        clock: ManualClock) -> None:
    _doc(campaign_file, daily_budget=1.0)
    ledger = InMemoryBudgetLedger(clock=clock)
    store = FileCampaignStore(campaign_file, ledger=ledger, pacer=Pacer(slack=0.01, seed=2))
    clock.set(datetime(2024, 1, 1, 6, tzinfo=UTC))                 # a quarter of the day
    engine = make_engine(campaigns=store)
    assert engine.decide(_banner("a"), clock.monotonic()) is not None
    ledger.charge("c01", 0.26, clock.now().date())                  # 0.2656 > 0.25 + 0.01
    assert engine.decide(_banner("b"), clock.monotonic()) is None
    clock.set(datetime(2024, 1, 1, 12, tzinfo=UTC))                 # the curve caught up
    assert engine.decide(_banner("c"), clock.monotonic()) is not None
    assert [r.reason for r in sink.records] == ["bid", "no_candidates", "bid"]


def test_bids_reserve_until_billing_and_budget_refusals_are_logged(
        make_engine: EngineFactory, campaign_file: Path, sink: MemorySink,
        clock: ManualClock) -> None:
    _doc(campaign_file, daily_budget=0.01)                          # 5.6 CPM → 5600 µ$ a bid
    ledger = InMemoryBudgetLedger(clock=clock)
    store = FileCampaignStore(campaign_file, ledger=ledger)
    engine = make_engine(campaigns=store,
                         config=EngineConfig(notice_base_url="https://b.example/notice"))
    day = clock.now().date()
    first = engine.decide(_banner("a"), clock.monotonic())
    second = engine.decide(_banner("b"), clock.monotonic())
    assert first is not None and second is not None
    assert ledger.spent_micros("c01", day) == 0 and ledger.committed_micros("c01", day) == 11200
    assert engine.decide(_banner("c"), clock.monotonic()) is None   # committed ≥ budget
    b1 = first.bids()[0]
    ledger.settle("c01", b1.id, 3000, day)                          # billed below the bid
    ledger.release("c01", second.bids()[0].id)                      # lost
    assert ledger.committed_micros("c01", day) == 3000
    assert engine.decide(_banner("d"), clock.monotonic()) is not None
    assert engine.reserved_micros() == {"c01": 16800}
    assert [r.reason for r in sink.records] == ["bid", "bid", "no_candidates", "bid"]


def test_a_refused_or_unreachable_ledger_is_a_counted_no_bid(
        make_engine: EngineFactory, campaign_file: Path, sink: MemorySink) -> None:
    class Refusing(InMemoryBudgetLedger):
        def reserve(self, *a: Any, **k: Any) -> bool:
            return False

    class Down(InMemoryBudgetLedger):
        def reserve(self, *a: Any, **k: Any) -> bool:
            raise BudgetUnavailable("redis down")

    for ledger in (Refusing(), Down()):
        engine = make_engine(campaigns=FileCampaignStore(campaign_file, ledger=ledger))
        assert engine.decide(_banner(), engine.clock.monotonic()) is None
    assert [r.reason for r in sink.records] == ["budget", "budget_unavailable"]
    assert all(not r.bid and r.campaign_id == "" for r in sink.records)
    assert engine.stats()["fallback.budget_unavailable"] == 1


def test_unbudgeted_campaigns_bid_without_reservations(make_engine: EngineFactory,
                                                       campaign_file: Path) -> None:
    _doc(campaign_file, daily_budget=None)

    class Down(InMemoryBudgetLedger):
        def reserve(self, *a: Any, **k: Any) -> bool:
            raise BudgetUnavailable("redis down")

    engine = make_engine(campaigns=FileCampaignStore(campaign_file, ledger=Down()),
                         config=EngineConfig(notice_base_url="https://b.example/n"))
    assert engine.decide(_banner(), engine.clock.monotonic()) is not None


def test_frequency_caps_use_billing_counts_of_the_pseudonymous_user(
        make_engine: EngineFactory, campaign_file: Path, sink: MemorySink) -> None:
    _doc(campaign_file, frequency_cap=2)
    counter = InMemoryFrequencyCounter()
    engine = make_engine(frequency=counter, config=EngineConfig(
        notice_base_url="https://b.example/notice", id_salt="s3cret"))
    resp = engine.decide(_banner("a", user="alice"), engine.clock.monotonic())
    assert resp is not None
    burl = resp.bids()[0].burl or ""
    key = burl.split("&u=")[1]
    assert "alice" not in burl and len(key) == 16
    day = engine.clock.now().date()
    counter.increment(key, "c01", day)
    counter.increment(key, "c01", day)
    assert engine.decide(_banner("b", user="alice"), engine.clock.monotonic()) is None
    assert engine.decide(_banner("c", user="bob"), engine.clock.monotonic()) is not None
    assert engine.decide(_banner("d"), engine.clock.monotonic()) is not None  # no user: no cap
    assert [r.reason for r in sink.records] == ["bid", "no_candidates", "bid", "bid"]


def test_frequency_store_down_skips_capped_campaigns(make_engine: EngineFactory,
                                                     campaign_file: Path,
                                                     sink: MemorySink) -> None:
    from decisioning import FrequencyUnavailable

    _doc(campaign_file, frequency_cap=2)

    class Down(InMemoryFrequencyCounter):
        def counts(self, *a: Any, **k: Any) -> list[int]:
            raise FrequencyUnavailable("redis down")

    engine = make_engine(frequency=Down())
    assert engine.decide(_banner("a", user="alice"), engine.clock.monotonic()) is None
    assert engine.stats()["fallback.frequency_unavailable"] == 1


def test_spend_on_billing_needs_notice_urls() -> None:
    with pytest.raises(ConfigError, match="notice_base_url"):
        EngineConfig(spend_on="billing")

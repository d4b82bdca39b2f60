"""Win/billing/loss notices: parsing, dedupe, exact spend, the log, the join, the routes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from decisioning import (
    BidResponse,
    DecisionEngine,
    EngineConfig,
    FileCampaignStore,
    InMemoryBudgetLedger,
    InMemoryFrequencyCounter,
    InMemoryNoticeDedupe,
    InvalidNotice,
    ManualClock,
    MemoryNoticeSink,
    MemorySink,
    NoticeService,
    NoticeStoreUnavailable,
    ParquetDecisionSink,
    ParquetNoticeSink,
    create_app,
)
from decisioning.notices import NoticeUrls, parse_notice
from decisioning.outcomes import (
    join_outcomes,
    orphan_notices,
    read_notices,
    summary_by_variant,
)

from .conftest import FixedBackend, ZeroFeaturizer, serve

pytestmark = pytest.mark.anyio

BASE = "http://bidder/notice"
DAY = datetime(2024, 1, 1, tzinfo=UTC).date()


def _params(**kw: str) -> dict[str, str]:
    base = {"id": "r1", "imp": "1", "bid": "b1", "cid": "c01", "crid": "cr01a",
            "price": "1.5", "cur": "USD"}
    base.update(kw)
    return base


def _service(ledger: InMemoryBudgetLedger | None = None, **kw: Any) -> NoticeService:
    return NoticeService(ledger=ledger or InMemoryBudgetLedger(), dedupe=InMemoryNoticeDedupe(),
                         sink=kw.pop("sink", MemoryNoticeSink()), clock=ManualClock(), **kw)


def _fill(url: str, price: str = "1.25", **extra: str) -> tuple[str, dict[str, str]]:
    """What an exchange does: substitute the macros, then call the URL."""
    subs = {"${AUCTION_ID}": "r1", "${AUCTION_IMP_ID}": "1", "${AUCTION_PRICE}": price,
            "${AUCTION_CURRENCY}": "USD", "${AUCTION_LOSS}": extra.get("loss", "102"),
            "${AUCTION_MIN_TO_WIN}": extra.get("mtw", "2.5")}
    for k, v in subs.items():
        url = url.replace(k, v)
    parts = urlsplit(url)
    return parts.path, dict(parse_qsl(parts.query))


def test_notice_urls() -> None:
    nurl, burl, lurl = NoticeUrls(BASE + "/").for_bid("c 1", "cr/1", "b-9", "abc")
    assert nurl.startswith(f"{BASE}/win?id=${{AUCTION_ID}}&imp=${{AUCTION_IMP_ID}}")
    assert "cid=c%201&crid=cr%2F1&bid=b-9&price=${AUCTION_PRICE}" in nurl
    assert burl.startswith(f"{BASE}/bill?") and burl.endswith("&u=abc")
    assert "loss=${AUCTION_LOSS}&mtw=${AUCTION_MIN_TO_WIN}" in lurl and "u=" not in lurl


@pytest.mark.parametrize(("kind", "params", "words"), [
    ("billing", _params(price="${AUCTION_PRICE}"), "'price' still holds the macro"),
    ("billing", _params(price="cheap"), "'price' must be a decimal"),
    ("billing", _params(price="-1"), "'price' must be a decimal"),
    ("win", {k: v for k, v in _params().items() if k != "bid"}, "'bid' is missing"),
    ("billing", _params(cur="JPY"), "currency 'JPY'"),
    ("loss", _params(loss="x"), "'loss' must be an integer"),
    ("refund", _params(), "unknown notice kind"),
])
def test_invalid_notices_name_the_parameter(kind: Any, params: dict[str, str],
                                            words: str) -> None:
    with pytest.raises(InvalidNotice, match=words):
        parse_notice(kind, params)


def test_notice_parsing_and_fx() -> None:
    n = parse_notice("billing", _params(price="2.000", cur="gbp"), fx_rates={"GBP": 1.25})
    assert n.cost_micros == 2500 and n.currency == "GBP" and str(n.price) == "2.000"
    loss = parse_notice("loss", _params(price="${AUCTION_PRICE}", loss="102", mtw="3.1"))
    assert loss.price is None and loss.loss_code == 102 and str(loss.min_to_win) == "3.1"
    assert loss.cost_micros == 0
    unsubstituted = parse_notice("loss", _params(loss="${AUCTION_LOSS}"))
    assert unsubstituted.loss_code is None


def test_billing_spend_is_exact_and_repeats_count_once() -> None:
    ledger = InMemoryBudgetLedger()
    sink = MemoryNoticeSink()
    svc = _service(ledger, sink=sink)
    day = svc.clock.now().date()
    for i in range(3000):
        assert svc.handle("billing", _params(bid=f"b{i}", price="0.333")).status == "recorded"
    for i in range(100):                                     # the exchange retries
        assert svc.handle("billing", _params(bid=f"b{i}", price="0.333")).status == "duplicate"
    assert ledger.spent_micros("c01", day) == 3000 * 333     # $0.999 exactly
    assert svc.spend_micros == {"c01": 999_000}
    assert len(sink.records) == 3000
    assert svc.stats() == {"billing.recorded": 3000, "billing.duplicate": 100}
    # win and billing of one bid are different notices; loss releases the reservation
    assert ledger.reserve("c01", "w1", 5000, day, budget_micros=None)
    assert svc.handle("win", _params(bid="w1")).status == "recorded"
    assert ledger.committed_micros("c01", day) == 999_000 + 5000
    assert svc.handle("loss", _params(bid="w1", loss="102")).status == "recorded"
    assert ledger.committed_micros("c01", day) == 999_000


def test_billing_counts_frequency_impressions() -> None:
    counter = InMemoryFrequencyCounter()
    svc = _service(frequency=counter)
    svc.handle("billing", _params(u="k1"))
    svc.handle("billing", _params(u="k1"))                      # duplicate: not counted
    svc.handle("billing", _params(bid="b2", u="k1"))
    svc.handle("billing", _params(bid="b3"))                    # no user key
    assert counter.counts("k1", ["c01"], svc.clock.now().date()) == [2]


def test_unreachable_stores_raise_and_the_retry_counts() -> None:
    from decisioning import BudgetUnavailable

    class Flaky(InMemoryBudgetLedger):
        down = True

        def settle(self, *a: Any, **k: Any) -> int:
            if self.down:
                raise BudgetUnavailable("redis down")
            return super().settle(*a, **k)

    ledger = Flaky()
    svc = _service(ledger)
    with pytest.raises(NoticeStoreUnavailable):
        svc.handle("billing", _params())
    ledger.down = False
    assert svc.handle("billing", _params()).status == "recorded"       # not a duplicate
    assert ledger.spent_micros("c01", svc.clock.now().date()) == 1500


def test_in_memory_dedupe_expires_and_is_bounded() -> None:
    now = [0.0]
    d = InMemoryNoticeDedupe(ttl_s=10, max_keys=3, clock=lambda: now[0])
    assert d.first("a") and not d.first("a")
    now[0] = 11
    assert d.first("a")                                          # expired
    for k in "bcd":
        assert d.first(k)
    assert d.first("a")                                          # evicted (bounded)


def test_notice_log_and_outcome_join(tmp_path: Path) -> None:
    from .test_decision_log import _rec

    clock = ManualClock(datetime(2024, 3, 1, 12, tzinfo=UTC))
    sink = ParquetNoticeSink(tmp_path, flush_interval_s=None)
    svc = NoticeService(ledger=InMemoryBudgetLedger(), dedupe=InMemoryNoticeDedupe(),
                        sink=sink, clock=clock)
    svc.handle("win", _params(id="r000000", bid="x", price="2.0"))
    svc.handle("billing", _params(id="r000000", bid="x", price="2.0"))
    svc.handle("billing", _params(id="r000000", bid="x", price="2.0"))    # duplicate
    svc.handle("loss", _params(id="r000002", bid="y", loss="102", mtw="4.5"))
    svc.handle("billing", _params(id="elsewhere", bid="z"))
    svc.close()
    assert [p.relative_to(tmp_path).as_posix() for p in sink.files_written] == [
        "notices/date=2024-03-01/part-00000.parquet"]
    notices = read_notices(tmp_path)
    assert len(notices) == 4 and notices["cost_micros"].sum() == 2000 + 1500
    decisions = ParquetDecisionSink(tmp_path / "d", flush_interval_s=None)
    decisions.extend([_rec(0), _rec(1), _rec(2)])
    decisions.close()
    from adplatform.eventlog import read_events

    out = join_outcomes(read_events(tmp_path / "d", "decisions"), notices)
    assert len(out) == 3
    row = out.set_index("request_id").loc
    assert row["r000000", "won"] and row["r000000", "billed"]
    assert row["r000000", "cost_micros"] == 2000 and row["r000000", "paid_price"] == 2.0
    assert not row["r000001", "won"] and row["r000001", "cost_micros"] == 0
    assert row["r000002", "lost"] and row["r000002", "loss_code"] == 102
    assert row["r000002", "min_to_win"] == 4.5
    assert orphan_notices(read_events(tmp_path / "d", "decisions"), notices) == 1
    summary = summary_by_variant(out)
    assert summary.loc["default", "spend_micros"] == 2000 and summary.loc["default", "wins"] == 1
    assert read_notices(tmp_path / "none").empty
    assert len(read_notices(tmp_path, start=(clock.now() + timedelta(days=1)).date())) == 0


async def test_notice_routes_end_to_end(campaign_file: Path) -> None:
    clock = ManualClock()
    ledger = InMemoryBudgetLedger(clock=clock)
    engine = DecisionEngine(featurizer=ZeroFeaturizer(), models=FixedBackend(),
                            campaigns=FileCampaignStore(campaign_file, ledger=ledger),
                            sink=MemorySink(), clock=clock,
                            config=EngineConfig(notice_base_url=BASE))
    notices = NoticeService(ledger=ledger, dedupe=InMemoryNoticeDedupe(),
                            sink=MemoryNoticeSink(), clock=clock)
    day = clock.now().date()
    async with serve(create_app(engine, notices=notices, api_keys=["k"])) as c:
        r = await c.post("/openrtb/2.6/bid", headers={"x-api-key": "k"}, content=json.dumps(
            {"id": "r1", "at": 1, "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}]}))
        bid = BidResponse.model_validate_json(r.content).bids()[0]
        assert ledger.committed_micros("c01", day) == 5600          # reserved at bid
        path, params = _fill(bid.burl or "", price="1.25")
        assert path == "/notice/bill"
        first = await c.get(path, params=params)                    # no API key needed
        again = await c.post("/notice/billing", data=params)        # form-encoded POST
        assert first.json() == {"status": "recorded"} and again.json() == {"status": "duplicate"}
        assert ledger.spent_micros("c01", day) == 1250
        assert ledger.committed_micros("c01", day) == 1250          # reservation settled
        path, params = _fill(bid.nurl or "")
        assert (await c.get(path, params=params)).json() == {"status": "recorded"}
        path, params = _fill(bid.lurl or "")
        assert (await c.post(path, params=params)).json() == {"status": "recorded"}
        bad = await c.get("/notice/bill", params={**params, "price": "${AUCTION_PRICE}"})
        assert bad.status_code == 400 and "'price'" in bad.json()["error"]
        text = (await c.get("/metrics")).text
        assert 'adplatform_budget_spent_micros_total{campaign="c01"} 1250.0' in text
        assert 'adplatform_notices_total{kind="billing",result="duplicate"} 1.0' in text
        assert 'adplatform_notice_errors_total{kind="invalid"} 1.0' in text


async def test_notice_store_down_is_503(engine: DecisionEngine) -> None:
    class Down(InMemoryNoticeDedupe):
        def first(self, key: str) -> bool:
            raise NoticeStoreUnavailable("redis down")

    notices = NoticeService(ledger=InMemoryBudgetLedger(), dedupe=Down(),
                            sink=MemoryNoticeSink())
    async with serve(create_app(engine, notices=notices, decide_in_threadpool=True)) as c:
        r = await c.get("/notice/win", params=_params())
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert notices.stats() == {"unavailable": 1}


async def test_without_a_notice_service_there_are_no_notice_routes(
        client: httpx.AsyncClient) -> None:
    assert (await client.get("/notice/win", params=_params())).status_code == 404


@pytest.mark.parametrize("writer", ["process", "thread"])
def test_notice_parts_are_the_same_from_the_child_process_and_the_thread(
        tmp_path: Path, writer: str) -> None:
    """The encoded notice rows decode to the table the records make (nulls, large
    integers, naive timestamps), whichever side writes the part."""
    import pyarrow.parquet as pq

    from adplatform.partwriter import rows_table
    from decisioning.notices import NOTICE_SCHEMA, NoticeRecord, encode_notice, notices_table

    t = datetime(2024, 3, 1, 12, 0, 0, 123_456, tzinfo=UTC)
    recs = [NoticeRecord(t, "billing", "r1", "1", "b1", "c1", "cr1", 2.5, "USD", 2_500,
                         None, None),
            NoticeRecord(t.replace(tzinfo=None), "loss", "r2 ü", "2", "b2", "c1", "cr1", None,
                         "EUR", 0, 102, 4.25),
            NoticeRecord(t, "win", "r3", "1", "b3", "c2", "cr2", 1e-7, "USD", 2**53, None, 0.0)]
    expected = notices_table(recs)
    assert rows_table(NOTICE_SCHEMA, b",".join(encode_notice(r) for r in recs)).equals(expected)
    sink = ParquetNoticeSink(tmp_path, flush_interval_s=None, writer=writer)  # type: ignore[arg-type]
    sink.extend(recs)
    sink.close()
    [path] = sink.files_written
    assert pq.read_table(path).equals(expected.sort_by([("ts", "ascending"),
                                                        ("request_id", "ascending"),
                                                        ("imp_id", "ascending"),
                                                        ("kind", "ascending")]))

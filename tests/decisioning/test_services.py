"""Against the real servers on 127.0.0.1: Redis (budgets, caps, dedupe), PostgreSQL
(campaign store and CLI), NATS JetStream (decision log). Each test isolates itself
with a unique key prefix, schema or stream, and removes it afterwards."""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from adplatform.config import Settings
from decisioning import (
    BudgetUnavailable,
    Campaign,
    CampaignError,
    DecisionEngine,
    EngineConfig,
    ManualClock,
    MemoryNoticeSink,
    MemorySink,
    NoticeService,
    NoticeStoreUnavailable,
    parse_request,
)
from decisioning.campaign_repo import PostgresCampaignRepository, PostgresCampaignStore
from decisioning.frequency import FrequencyUnavailable, RedisFrequencyCounter
from decisioning.notices import RedisNoticeDedupe
from decisioning.redis_budget import RedisBudgetLedger, redis_client

from .conftest import (
    FixedBackend,
    ZeroFeaturizer,
    campaign_doc,
    check_budget_refusals,
    delete_stream,
    nats_or_skip,
)

pytestmark = pytest.mark.services

REDIS = "redis://127.0.0.1:6379/0"
PG = "postgresql://postgres@127.0.0.1:5432/postgres"
NATS = "nats://127.0.0.1:4222"
DAY = date(2024, 1, 1)


@pytest.fixture
def prefix() -> Iterator[str]:
    import redis

    p = f"test-{uuid.uuid4().hex[:10]}"
    try:
        redis.Redis.from_url(REDIS).ping()
    except redis.ConnectionError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    yield p
    r = redis.Redis.from_url(REDIS)
    keys = list(r.scan_iter(f"{p}:*"))
    if keys:
        r.delete(*keys)


def _reserve_many(prefix: str, worker: int, n: int, amount: int, budget: int) -> int:
    ledger = RedisBudgetLedger(redis_client(REDIS, timeout_s=2.0), prefix=prefix)
    return sum(amount for i in range(n)
               if ledger.reserve("c", f"{worker}-{i}", amount, DAY, budget_micros=budget))


def test_redis_ledger_holds_the_budget_across_processes(prefix: str) -> None:
    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        granted = pool.starmap(_reserve_many, [(prefix, w, 300, 7, 5000) for w in range(4)])
    assert 5000 <= sum(granted) < 5000 + 7
    ledger = RedisBudgetLedger(redis_client(REDIS), prefix=prefix)
    assert ledger.reserved_micros("c") == sum(granted)


def test_redis_ledger_reservations_settle_release_and_expire(prefix: str) -> None:
    now = [1_000_000]
    ledger = RedisBudgetLedger(redis_client(REDIS), prefix=prefix, reservation_ttl_s=60,
                               wall_ms=lambda: now[0])
    assert ledger.reserve("c", "b1", 400, DAY, budget_micros=1000)
    assert ledger.reserve("c", "b1", 400, DAY, budget_micros=1000)         # idempotent
    assert ledger.reserve("c", "b2", 700, DAY, budget_micros=1000)
    assert not ledger.reserve("c", "b3", 1, DAY, budget_micros=1000)
    assert ledger.settle("c", "b1", 250, DAY) == 250
    ledger.release("c", "b2")
    assert ledger.spent_micros("c", DAY) == 250 and ledger.reserved_micros("c") == 0
    assert ledger.reserve("c", "b4", 500, DAY, budget_micros=1000)
    now[0] += 61_000
    assert ledger.reserved_micros("c") == 0                                # expired
    assert ledger.reserve("c", "b5", 10, DAY, budget_micros=None, spend=True)
    ledger.charge("c", 0.001, DAY)
    assert ledger.spent_micros("c", DAY) == 250 + 10 + 1000
    # the snapshot: unknown at first (0, tracked), exact after a refresh
    assert ledger.committed_micros("c", DAY) == 0
    ledger.refresh()
    assert ledger.committed_micros("c", DAY) == 1260
    assert ledger.reserve("c", "b6", 40, DAY, budget_micros=None)
    assert ledger.committed_micros("c", DAY) == 1300                       # own at once
    ledger.close()


def test_redis_down_is_budget_unavailable() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                     # nothing listens there
    ledger = RedisBudgetLedger(redis_client(f"redis://127.0.0.1:{port}/0"), prefix="x")
    with pytest.raises(BudgetUnavailable):
        ledger.reserve("c", "b", 1, DAY, budget_micros=10)
    assert not ledger.healthy
    with pytest.raises(FrequencyUnavailable):
        RedisFrequencyCounter(redis_client(f"redis://127.0.0.1:{port}/0")).counts("u", ["c"],
                                                                                  DAY)
    with pytest.raises(NoticeStoreUnavailable):
        RedisNoticeDedupe(redis_client(f"redis://127.0.0.1:{port}/0")).first("k")


def test_redis_caps_dedupe_and_notices_shared_by_two_processes(prefix: str) -> None:
    client = redis_client(REDIS, timeout_s=2.0)
    counter = RedisFrequencyCounter(client, prefix=prefix)
    assert counter.counts("u1", ["a", "b"], DAY) == [0, 0]
    assert counter.increment("u1", "a", DAY) == 1 and counter.increment("u1", "a", DAY) == 2
    assert counter.counts("u1", ["a", "b"], DAY) == [2, 0] and counter.counts("u1", [], DAY) == []
    ledger = RedisBudgetLedger(client, prefix=prefix)

    def service() -> NoticeService:              # one per decision process
        return NoticeService(ledger=ledger, dedupe=RedisNoticeDedupe(client, prefix=prefix),
                             sink=MemoryNoticeSink(), frequency=counter, clock=ManualClock())

    s1, s2 = service(), service()
    params = {"id": "r", "imp": "1", "bid": "b", "cid": "c01", "price": "0.75", "u": "u9"}
    assert s1.handle("billing", params).status == "recorded"
    assert s2.handle("billing", params).status == "duplicate"
    assert ledger.spent_micros("c01", ManualClock().now().date()) == 750
    assert counter.counts("u9", ["c01"], ManualClock().now().date()) == [1]


def test_engine_with_the_redis_ledger(prefix: str, campaign_file: Path) -> None:
    clock = ManualClock()
    ledger = RedisBudgetLedger(redis_client(REDIS), prefix=prefix, refresh_s=0.01)
    check_budget_refusals(
        ledger, campaign_file,
        lambda campaigns: DecisionEngine(
            featurizer=ZeroFeaturizer(), models=FixedBackend(), campaigns=campaigns,
            sink=MemorySink(), clock=clock,
            config=EngineConfig(notice_base_url="http://b/notice")),
        clock)


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def pg_repo() -> Iterator[PostgresCampaignRepository]:
    import psycopg

    try:
        psycopg.connect(PG, connect_timeout=3).close()
    except psycopg.OperationalError:
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    repo = PostgresCampaignRepository(PG, schema=f"t_{uuid.uuid4().hex[:12]}")
    yield repo
    repo.drop()


def test_postgres_repository_and_store(pg_repo: PostgresCampaignRepository) -> None:
    campaigns = [Campaign.model_validate(c) for c in campaign_doc()["campaigns"]]
    for c in campaigns:
        pg_repo.create(c)
    assert [c.campaign_id for c in pg_repo.list()] == ["c01", "c02", "c03", "c04", "c05"]
    with pytest.raises(CampaignError, match="exists"):
        pg_repo.create(campaigns[0])
    clash = campaigns[1].model_copy(update={"campaign_id": "c09"})
    with pytest.raises(CampaignError, match="creative_id 'cr02v' is already used by campaign"):
        pg_repo.create(clash)
    with pytest.raises(CampaignError, match="cpc: Input should be greater than 0"):
        pg_repo.update("c01", {"cpc": -1})
    with pytest.raises(CampaignError, match="no campaign 'zz'"):
        pg_repo.get("zz")
    store = PostgresCampaignStore(pg_repo)
    assert len(store) == 5 and not store.reload_if_changed()
    from decisioning import Blocklist
    from decisioning.request_context import request_facts

    req = parse_request(json.dumps({"id": "r", "imp": [{"id": "1", "banner": {"w": 300,
                                                                               "h": 250}}]}))
    ids = [c.creative.creative_id for c in store.candidates(req.imp[0], request_facts(req),
                                                            Blocklist(), DAY, 10)]
    assert ids == ["cr01a"]
    pg_repo.update("c05", {"status": "active"})                   # c05 pays more
    assert store.reload_if_changed()
    ids = [c.creative.creative_id for c in store.candidates(req.imp[0], request_facts(req),
                                                            Blocklist(), DAY, 10)]
    assert ids == ["cr05a", "cr01a"]
    store.watch(0.05)
    pg_repo.update("c05", {"status": "paused"})
    import time

    deadline = time.monotonic() + 10
    while len(store.candidates(req.imp[0], request_facts(req), Blocklist(), DAY, 10)) != 1:
        assert time.monotonic() < deadline, "the watcher did not reload"
        time.sleep(0.05)
    store.close()


def test_campaign_cli_on_postgres(pg_repo: PostgresCampaignRepository, tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from decisioning.campaign_cli import register

    settings = Settings(home=tmp_path / "ws", profile="services",  # type: ignore[call-arg]
                        postgres_dsn=PG)
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """root"""

    register(app, settings=lambda: settings)
    run = CliRunner().invoke
    base = ["--schema", pg_repo.schema]
    r = run(app, ["campaign", "create", "--id", "p1", "--adomain", "p.example", "--goal",
                  "cpa", "--cpa", "12", "--creative", "p1a:native", *base])
    assert r.exit_code == 0, r.output
    r = run(app, ["campaign", "pause", "p1", *base])
    assert r.exit_code == 0 and pg_repo.get("p1").status == "paused"
    r = run(app, ["campaign", "update", "p1", "--cpa", "0", *base])
    assert r.exit_code == 2 and "cpa: Input should be greater than 0" in r.output
    r = run(app, ["campaign", "list", *base])
    assert "p1" in r.output and "paused" in r.output


def test_campaign_cli_schema_defaults_to_the_settings(pg_repo: PostgresCampaignRepository,
                                                      tmp_path: Path) -> None:
    """Without --schema the commands edit ADPLATFORM_POSTGRES_SCHEMA, the schema
    `adplatform serve` reads."""
    import typer
    from typer.testing import CliRunner

    from decisioning.campaign_cli import register

    settings = Settings(home=tmp_path / "ws", profile="services",  # type: ignore[call-arg]
                        postgres_dsn=PG, postgres_schema=pg_repo.schema)
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """root"""

    register(app, settings=lambda: settings)
    r = CliRunner().invoke(app, ["campaign", "create", "--id", "s1", "--adomain", "s.example",
                                 "--goal", "cpc", "--cpc", "1", "--creative", "s1a:native"])
    assert r.exit_code == 0, r.output
    assert [c.campaign_id for c in pg_repo.list()] == ["s1"]


# --------------------------------------------------------------------------- NATS


def test_nats_sink_publishes_once_per_decision_and_flushes_on_close() -> None:
    from decisioning.nats_sink import NatsDecisionSink, read_stream

    from .test_decision_log import _rec

    nats_or_skip()
    tag = uuid.uuid4().hex[:8]
    stream, subject = f"TEST_DECISIONS_{tag}", f"test.decisions.{tag}"
    sink = NatsDecisionSink(NATS, stream=stream, subject=subject, batch=64)
    try:
        records = [_rec(i) for i in range(500)]
        for i in range(0, 500, 7):
            sink.extend(records[i:i + 7])
        sink.extend(records[:50])                      # a replay: deduplicated by Msg-Id
        sink.close()                                   # SIGTERM path: drain and wait
        assert sink.published == 550 and sink.duplicates == 50 and sink.lost == 0
        got: list[dict[str, Any]] = asyncio.run(read_stream(NATS, stream, subject))
        assert len(got) == 500
        assert {g["request_id"] for g in got} == {r.request_id for r in records}
        assert got[0]["variant"] == "default" and got[0]["ts"].startswith("2024-03-01T23:59")
        # A stream that carries another subject too: only this subject's records count.
        other = f"{subject}.other"
        asyncio.run(_add_subject_and_publish(stream, subject, other, count=3))
        assert len(asyncio.run(read_stream(NATS, stream, subject, timeout_s=5.0))) == 500
        assert len(asyncio.run(read_stream(NATS, stream, other, timeout_s=5.0))) == 3
        assert asyncio.run(read_stream(NATS, stream, f"{subject}.none", timeout_s=5.0)) == []
    finally:
        asyncio.run(delete_stream(stream))


async def _add_subject_and_publish(stream: str, subject: str, other: str, *,
                                   count: int) -> None:
    import nats

    nc = await nats.connect(NATS)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        await js.update_stream(info.config.evolve(subjects=[subject, other]))
        for i in range(count):
            await js.publish(other, orjson.dumps({"n": i}))
    finally:
        await nc.close()


def test_nats_down_spills_to_the_fallback_sink() -> None:
    import socket

    from decisioning.nats_sink import NatsDecisionSink

    from .test_decision_log import _rec

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spill = MemorySink()
    sink = NatsDecisionSink(f"nats://127.0.0.1:{port}", spill=spill, close_timeout_s=1.0,
                            connect_timeout_s=0.2, max_pending=5)
    sink.extend([_rec(i) for i in range(8)])           # 3 overflow at once
    assert sink.spilled == 3
    sink.close()
    assert len(spill.records) == 8 and spill.closed and sink.lost == 0

"""``adplatform serve --workers 2`` with the services profile, on the trained workspace:
features in Feast's Redis online store, campaigns in PostgreSQL, budgets, caps and notice
dedupe in Redis, the decision log on NATS JetStream. The two processes decide, log every
decision once between them, share budgets and notice dedupe (a notice reaches whichever
worker its connection landed on), and answer every ``/metrics`` scrape for both.

The test keeps to its own Redis database (flushed before and after), PostgreSQL schema and
JetStream stream, and removes them afterwards."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from adplatform.config import Settings
from adplatform.ports import free_port
from decisioning.outcomes import read_notices
from mlops.demo import ServiceProcess

from ._workers import Traffic, send_auctions_and_notices

pytestmark = [pytest.mark.slow, pytest.mark.services]

log = logging.getLogger(__name__)

# A database no other test uses (0: decisioning services, 13: Feast on Redis and the
# features bench, 14: audience, 15: streaming); flushed here before and after, so Feast's
# keys and the ledger's cannot meet anyone else's.
REDIS_URL = "redis://127.0.0.1:6379/12"
PG = "postgresql://postgres@127.0.0.1:5432/postgres"
NATS = "nats://127.0.0.1:4222"


def _servers_or_skip() -> None:
    import psycopg
    import redis

    try:
        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2) as client:
            client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis on 127.0.0.1:6379: {exc}")
    try:
        psycopg.connect(PG, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432: {exc}")
    try:
        socket.create_connection(("127.0.0.1", 4222), timeout=2).close()
    except OSError as exc:
        pytest.skip(f"no NATS on 127.0.0.1:4222: {exc}")


async def _delete_stream(name: str) -> None:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(NATS)
    try:
        await nc.jetstream().delete_stream(name)
    except NotFoundError:
        pass                                  # the service never got as far as creating it
    finally:
        await nc.close()


@pytest.fixture
def services_workspace(trained_workspace: Settings, tmp_path: Path) -> Iterator[Settings]:
    """The trained workspace's events, features and campaigns in a workspace of its own
    on the services profile: Feast's online store in a Redis database of its own,
    campaigns in a fresh PostgreSQL schema, a fresh stream and subject, and models from
    the trained workspace's registry. Everything it made is removed afterwards."""
    import redis

    from decisioning.campaign_cli import repository
    from decisioning.campaign_repo import PostgresCampaignRepository
    from decisioning.campaigns import load_campaigns
    from features.ops import materialize

    _servers_or_skip()
    tag = uuid.uuid4().hex[:10]
    src = trained_workspace.workspace
    home = tmp_path / "ws"
    # A workspace of its own: Feast's registry (materialization intervals included) and
    # the logs live under the home, and the session's trained workspace must not change.
    for part in ("events", "world"):
        shutil.copytree(src.root / part, home / part)
    services = trained_workspace.model_copy(update={
        "home": home, "profile": "services", "redis_url": REDIS_URL, "postgres_dsn": PG,
        "nats_url": NATS, "redis_prefix": f"t{tag}", "postgres_schema": f"t_{tag}",
        "nats_stream": f"TEST_WORKERS_{tag}", "nats_subject": f"test.workers.{tag}",
        # read-only: the champion the session's workspace registered
        "mlflow_tracking_uri": trained_workspace.tracking_uri})
    db = redis.Redis.from_url(REDIS_URL)
    db.flushdb()                              # a crashed earlier run's leftovers
    try:
        t0 = time.perf_counter()
        materialize(services)                 # apply + the full event log into Redis
        log.warning("materialize into Redis: %.1f s", time.perf_counter() - t0)
        # The campaign commands' own repository, on the schema the settings name (what
        # `adplatform campaign create` writes without --schema).
        repo = repository(services, None)
        assert isinstance(repo, PostgresCampaignRepository) and repo.schema == f"t_{tag}"
        for c in load_campaigns(home / "world" / "campaigns.json").campaigns:
            repo.create(c)
        yield services
    finally:
        PostgresCampaignRepository(PG, schema=f"t_{tag}").drop()
        asyncio.run(_delete_stream(f"TEST_WORKERS_{tag}"))
        db.flushdb()
        db.close()


def test_two_workers_on_the_services_stores(services_workspace: Settings,
                                             tmp_path: Path) -> None:
    import redis

    from decisioning.frequency import RedisFrequencyCounter
    from decisioning.nats_sink import read_stream
    from decisioning.redis_budget import RedisBudgetLedger, redis_client

    s = services_workspace
    port = free_port()
    argv = [sys.executable, "-c", "from mlops.cli import main; main()", "serve",
            "--port", str(port), "--workers", "2", "--watch-interval", "0"]
    # the child gets every field of `s` (Redis db, prefix, schema, stream, subject)
    service = ServiceProcess(s, port, tmp_path / "serve.log", argv=argv)
    traffic = Traffic()
    per_worker: dict[str, int] = {}
    try:
        service.wait_ready(timeout_s=300)
        traffic = send_auctions_and_notices(service.url, s.workspace, session=37)
        # Both workers decided: each publishes its own counts for the other's scrapes
        # (mlops.serve.run_server: <home>/state/metrics-<supervisor pid>/worker-<i>.json).
        # The stream's records do not say which worker wrote them.
        folder = s.workspace.root / "state" / f"metrics-{service.proc.pid}"
        per_worker = {p.stem: int(json.loads(p.read_text())["stats"].get("requests", 0))
                      for p in sorted(folder.glob("worker-*.json"))}
    finally:
        service.stop()                         # SIGTERM: both workers drain their logs
    log_text = (tmp_path / "serve.log").read_text(errors="replace")
    assert service.proc.returncode == 0, log_text[-3000:]
    answered, notified = traffic.answered, traffic.notified
    log.warning("%d requests, %d bids, %d notified; requests per worker %s",
                len(answered), len(traffic.bids), len(notified), per_worker)
    assert set(per_worker) == {"worker-0", "worker-1"}, per_worker
    assert all(n > 0 for n in per_worker.values()), per_worker
    assert sum(per_worker.values()) == len(answered), per_worker

    # The decision log: exactly one record per answered request on the stream, none
    # spilled to parquet (NATS was up), every one decided on features read from Redis.
    records: list[dict[str, Any]] = asyncio.run(
        read_stream(NATS, s.nats_stream, s.nats_subject))
    keys = Counter((r["request_id"], r["imp_id"]) for r in records)
    assert max(keys.values()) == 1
    assert Counter(r["request_id"] for r in records) == Counter(answered)
    assert not list((s.workspace.decisions / "decisions").glob("date=*/*.parquet"))
    assert not [r for r in records if r["feature_service"] == "defaults"]
    assert sum(r["bid"] for r in records) == len(traffic.bids)

    notices = read_notices(s.workspace.decisions)
    mine = notices[notices["request_id"].isin({req["id"] for req, _ in notified})]
    assert (mine["kind"] == "billing").sum() == len(notified)
    assert (mine["kind"] == "win").sum() == len(notified)

    # Redis: spend is the billed micro-dollars per campaign, each notice counted once in
    # the dedupe store, each billed impression once in the frequency caps, all under
    # the configured prefix (nothing under the default one).
    client = redis_client(s.redis_url, timeout_s=2.0)
    ledger = RedisBudgetLedger(client, prefix=s.redis_prefix)
    try:
        today = datetime.now(UTC).date()
        assert ({cid: ledger.spent_micros(cid, today) for cid in traffic.billed}
                == dict(traffic.billed))
        with redis.Redis.from_url(s.redis_url) as raw:
            notice_keys = list(raw.scan_iter(f"{s.redis_prefix}:notice:*"))
            assert len(notice_keys) == 2 * len(notified)        # win + billing, once each
            assert not list(raw.scan_iter("adp:*"))             # the default prefix: unused
        caps = RedisFrequencyCounter(client, prefix=s.redis_prefix)
        for (user, cid), n in traffic.billed_users.items():
            assert caps.counts(user, [cid], today) == [n], (user, cid)
    finally:
        ledger.close()

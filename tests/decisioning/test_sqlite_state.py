"""Budgets, frequency caps and notice dedupe in one SQLite file shared by processes."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from collections.abc import Iterator
from datetime import date, timedelta
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

import pytest

from adplatform.config import Settings
from decisioning import (
    BudgetUnavailable,
    EngineConfig,
    FrequencyUnavailable,
    InvalidAmount,
    ManualClock,
    MemoryNoticeSink,
    NoticeService,
)
from decisioning.budget import DEFAULT_RESERVATION_TTL_S, BudgetLedger
from decisioning.frequency import FrequencyCounter
from decisioning.notices import NoticeDedupe, NoticeStoreUnavailable
from decisioning.service import build_service
from decisioning.sqlite_state import (
    SqliteBudgetLedger,
    SqliteFrequencyCounter,
    SqliteNoticeDedupe,
    open_state,
)

from .conftest import (
    EngineFactory,
    FixedBackend,
    ZeroFeaturizer,
    check_budget_refusals,
    reserve_in_threads,
)

DAY = date(2024, 1, 1)


class Wall:
    """An injected wall clock in epoch ms."""

    def __init__(self) -> None:
        self.ms = 1_700_000_000_000

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def wall() -> Wall:
    return Wall()


@pytest.fixture
def ledger(db: Path, wall: Wall) -> Iterator[SqliteBudgetLedger]:
    led = SqliteBudgetLedger(db, reservation_ttl_s=60, wall_ms=wall, refresh_s=60)
    yield led
    led.close()


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


# --------------------------------------------------------------------------- ledger


def test_implements_the_protocols(db: Path) -> None:
    ledger, counter, dedupe = open_state(db)
    try:
        assert isinstance(ledger, BudgetLedger)
        assert isinstance(counter, FrequencyCounter)
        assert isinstance(dedupe, NoticeDedupe)
        assert _rows(db, "PRAGMA journal_mode") == [("wal",)]
    finally:
        for store in (ledger, counter, dedupe):
            store.close()


def test_closing_the_ledger_closes_the_stores_opened_with_it(db: Path) -> None:
    ledger, counter, dedupe = open_state(db)
    assert counter.increment("u", "c", DAY) == 1 and dedupe.first("k")
    ledger.close()                   # what the campaign store does on shutdown
    with pytest.raises(FrequencyUnavailable, match="closed"):
        counter.increment("u", "c", DAY)
    with pytest.raises(NoticeStoreUnavailable, match="closed"):
        dedupe.first("k2")


def test_reserve_settle_release_and_expiry(ledger: SqliteBudgetLedger, wall: Wall) -> None:
    assert ledger.reserve("c", "b1", 400, DAY, budget_micros=1000)
    assert ledger.reserve("c", "b1", 400, DAY, budget_micros=1000)         # idempotent
    assert ledger.reserve("c", "b2", 700, DAY, budget_micros=1000)         # 400 < budget
    assert ledger.reserved_micros("c") == 1100
    assert not ledger.reserve("c", "b3", 1, DAY, budget_micros=1000)       # reached
    assert ledger.settle("c", "b1", 250, DAY) == 250                       # paid < bid
    assert ledger.spent_micros("c", DAY) == 250 and ledger.reserved_micros("c") == 700
    ledger.release("c", "b2")
    ledger.release("c", "unknown")                                         # no-op
    assert ledger.reserved_micros("c") == 0
    assert ledger.reserve("c", "b4", 500, DAY, budget_micros=1000)
    wall.ms += 60_000                                                      # never billed
    assert ledger.reserved_micros("c") == 0                                # expired
    assert ledger.reserve("c", "b4", 300, DAY, budget_micros=1000)         # a new one
    assert ledger.reserved_micros("c") == 300
    assert ledger.settle("c", "b9", 10, DAY) == 260                        # no reservation
    assert ledger.reserve("c", "b5", 100, DAY, budget_micros=None, spend=True)
    ledger.charge("c", 0.001, DAY)
    assert ledger.spent_micros("c", DAY) == 250 + 10 + 100 + 1000
    assert ledger.spent("c", DAY) == 0.00136 and ledger.reserved_micros("c") == 300
    for bad in (lambda: ledger.reserve("c", "b6", -1, DAY, budget_micros=None),
                lambda: ledger.settle("c", "b6", -1, DAY)):
        with pytest.raises(InvalidAmount):
            bad()


def test_expired_reservations_are_purged_and_never_counted(
        ledger: SqliteBudgetLedger, wall: Wall, db: Path) -> None:
    for i in range(5):
        assert ledger.reserve("c", f"b{i}", 200, DAY, budget_micros=1000)
    assert not ledger.reserve("c", "late", 1, DAY, budget_micros=1000)
    wall.ms += 59_999
    assert ledger.reserved_micros("c") == 1000
    wall.ms += 1                                                # expiry <= now: gone
    assert ledger.reserved_micros("c") == 0
    assert _rows(db, "SELECT COUNT(*) FROM budget_resv") == [(5,)]   # not yet purged
    assert ledger.reserve("c", "late", 1, DAY, budget_micros=1000)    # expired: not counted
    assert _rows(db, "SELECT COUNT(*) FROM budget_resv") == [(6,)]   # purged in background
    assert ledger.purge() == 5
    assert _rows(db, "SELECT key FROM budget_resv") == [("late",)]
    assert _rows(db, "SELECT micros FROM budget_reserved") == [(1,)]


def test_purge_reaches_idle_campaigns_and_reused_keys(
        ledger: SqliteBudgetLedger, wall: Wall, db: Path) -> None:
    """A campaign that stopped bidding keeps no expired rows; a reservation reusing the
    key of an expired one is a new reservation (the step-by-step path)."""
    assert ledger.reserve("idle", "a", 300, DAY, budget_micros=1000)
    assert ledger.reserve("busy", "k", 400, DAY, budget_micros=1000)
    wall.ms += 60_000
    assert ledger.reserve("busy", "k", 700, DAY, budget_micros=1000)   # the old one expired
    assert ledger.reserved_micros("busy") == 700
    assert not ledger.reserve("busy", "x", 1, DAY, budget_micros=700)  # refused: 700 live
    assert ledger.purge() == 1                                         # idle's "a"
    assert _rows(db, "SELECT campaign_id, key, micros FROM budget_resv") == [("busy", "k", 700)]
    assert _rows(db, "SELECT campaign_id, micros FROM budget_reserved ORDER BY 1") == [
        ("busy", 700), ("idle", 0)]


def test_a_new_day_starts_from_zero_spend_and_keeps_old_days(
        ledger: SqliteBudgetLedger) -> None:
    nxt = DAY + timedelta(days=1)
    assert ledger.reserve("c", "a", 1000, DAY, budget_micros=1000, spend=True)
    assert not ledger.reserve("c", "b", 1, DAY, budget_micros=1000, spend=True)
    assert ledger.reserve("c", "b", 600, nxt, budget_micros=1000)
    assert ledger.reserve("c", "c", 600, nxt, budget_micros=1000)          # 600 < 1000
    assert not ledger.reserve("c", "d", 1, nxt, budget_micros=1000)
    assert ledger.settle("c", "b", 500, nxt) == 500
    assert ledger.spent_micros("c", DAY) == 1000 and ledger.spent_micros("c", nxt) == 500
    assert ledger.spent_micros("other", DAY) == 0


def test_campaigns_are_independent(ledger: SqliteBudgetLedger) -> None:
    assert ledger.reserve("a", "k", 900, DAY, budget_micros=1000)
    assert ledger.reserve("b", "k", 900, DAY, budget_micros=1000)          # same key, other cid
    assert ledger.reserve("a", "k2", 900, DAY, budget_micros=1000)
    assert not ledger.reserve("a", "k3", 900, DAY, budget_micros=1000)
    assert ledger.reserve("b", "k3", 900, DAY, budget_micros=1000)
    assert ledger.reserved_micros("a") == 1800 and ledger.reserved_micros("b") == 1800


def test_snapshot_refresh_and_own_reservations(db: Path, wall: Wall) -> None:
    ledger = SqliteBudgetLedger(db, reservation_ttl_s=60, wall_ms=wall, refresh_s=60)
    other = SqliteBudgetLedger(db, reservation_ttl_s=60, wall_ms=wall, refresh_s=60)
    try:
        assert other.reserve("c", "o1", 300, DAY, budget_micros=None)      # another process
        ledger.charge("c", 0.001, DAY)
        assert ledger.committed_micros("c", DAY) == 0                      # unknown: tracked
        ledger.refresh()
        assert ledger.committed_micros("c", DAY) == 1300
        assert ledger.reserve("c", "b1", 40, DAY, budget_micros=None)
        assert ledger.committed_micros("c", DAY) == 1340                   # own at once
        assert other.reserve("c", "o2", 5, DAY, budget_micros=None)
        assert ledger.committed_micros("c", DAY) == 1340                   # others: later
        ledger.refresh()
        assert ledger.committed_micros("c", DAY) == 1345
        assert ledger.reserve("c", "b2", 7, DAY, budget_micros=None, spend=True)
        assert ledger.committed_micros("c", DAY) == 1352                   # charged: at once
        wall.ms += 60_000                                                  # all expire
        ledger.refresh()
        assert ledger.committed_micros("c", DAY) == 1007
        nxt = DAY + timedelta(days=1)
        assert ledger.committed_micros("c", nxt) == 0
        ledger.refresh()                                # tracks the newest day only
        assert ledger.committed_micros("c", nxt) == 0
        assert ledger.committed_micros("c", DAY) == 0                      # dropped: again
    finally:
        ledger.close()
        other.close()


def test_the_background_thread_refreshes_the_snapshot(db: Path) -> None:
    ledger = SqliteBudgetLedger(db, refresh_s=0.01)
    try:
        ledger.charge("c", 0.5, DAY)
        assert ledger.committed_micros("c", DAY) == 0
        for _ in range(500):                          # a refresh comes within ~10 ms
            if ledger.committed_micros("c", DAY) == 500_000:
                break
            ledger._stop.wait(0.01)
        assert ledger.committed_micros("c", DAY) == 500_000
    finally:
        ledger.close()
    assert not ledger._thread.is_alive()
    with pytest.raises(BudgetUnavailable):                   # closed
        ledger.reserve("c", "k", 1, DAY, budget_micros=None)


def test_the_ledger_thread_checkpoints_and_the_wal_starts_over(
        ledger: SqliteBudgetLedger, db: Path) -> None:
    assert ledger._db.conn().execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
    for i in range(1500):                                   # > _RESTART_FRAMES frames
        ledger.reserve("c", f"k{i}", 1, DAY, budget_micros=None)
    assert (db.parent / "state.db-wal").stat().st_size > 4096 * 4096
    ledger._checkpoint()
    ledger.reserve("c", "next", 1, DAY, budget_micros=None)         # restarts the WAL
    with sqlite3.connect(db) as side:
        busy, frames, copied = side.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert frames < 100 and copied == frames
    assert ledger.reserved_micros("c") == 1501


def test_concurrent_threads_never_pass_the_budget_by_more_than_one(
        ledger: SqliteBudgetLedger) -> None:
    granted = reserve_in_threads(ledger, DAY, threads=4, per_thread=150, amount=7,
                                 budget=2000)
    assert 2000 <= granted < 2000 + 7
    assert ledger.reserved_micros("c") == granted


def test_reads_use_the_indexes(ledger: SqliteBudgetLedger, db: Path) -> None:
    from decisioning import sqlite_state as s

    with sqlite3.connect(db) as conn:
        for sql, args in [(s._PURGE, ("c", 1)), (s._RESERVE_STATE, ("c", "k", "d")),
                          (s._RESERVED_NOW, ("c", 1)), (s._GET_SPEND, ("c", "d")),
                          (s._COUNTS, ("d", "u")), (s._SWEEP, ("d",)),
                          (s._NOTICE_PURGE, (1,))]:
            plan = " ".join(r[-1] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args))
            assert "SCAN" not in plan.replace("SCAN CONSTANT ROW", ""), (sql, plan)


# --------------------------------------------------------------------------- caps, dedupe


def test_frequency_counts_and_increments(db: Path) -> None:
    counter = SqliteFrequencyCounter(db)
    try:
        assert counter.counts("u1", ["a", "b"], DAY) == [0, 0]
        assert counter.increment("u1", "a", DAY) == 1 and counter.increment("u1", "a", DAY) == 2
        assert counter.increment("u2", "a", DAY) == 1
        assert counter.counts("u1", ["a", "b", "a"], DAY) == [2, 0, 2]
        assert counter.counts("u1", [], DAY) == []
        assert counter.counts("u1", ["a"], DAY + timedelta(days=1)) == [0]   # per day
    finally:
        counter.close()


def test_frequency_rows_older_than_yesterday_are_swept(db: Path) -> None:
    counter = SqliteFrequencyCounter(db)
    try:
        old = DAY - timedelta(days=2)
        for u in range(600):                           # more than one sweep batch
            counter.increment(f"u{u}", "a", old)
        counter.increment("u", "a", DAY - timedelta(days=1))     # keeps the day before
        assert _rows(db, "SELECT COUNT(*) FROM freq_counts") == [(601,)]
        for _ in range(5):
            counter.increment("u", "a", DAY)
        assert _rows(db, "SELECT day, n FROM freq_counts ORDER BY day") == [
            ("2023-12-31", 1), ("2024-01-01", 5)]
        assert counter.counts("u", ["a"], DAY - timedelta(days=1)) == [1]
    finally:
        counter.close()


def test_notice_dedupe_first_once_within_the_ttl(db: Path, wall: Wall) -> None:
    dedupe = SqliteNoticeDedupe(db, ttl_s=10, purge_every_s=5, wall_ms=wall)
    try:
        assert dedupe.first("k1") and not dedupe.first("k1")
        assert dedupe.first("k2")
        dedupe.forget("k1")
        assert dedupe.first("k1") and not dedupe.first("k1")
        wall.ms += 10_000                                       # expired: new again
        assert dedupe.first("k1") and not dedupe.first("k1")
        assert _rows(db, "SELECT key FROM notice_seen") == [("k1",)]   # k2 purged
    finally:
        dedupe.close()


# --------------------------------------------------------------------------- wiring


def test_engine_with_the_sqlite_ledger(make_engine: EngineFactory, campaign_file: Path,
                                       clock: ManualClock, db: Path) -> None:
    check_budget_refusals(
        SqliteBudgetLedger(db, refresh_s=60), campaign_file,
        lambda campaigns: make_engine(
            campaigns=campaigns, config=EngineConfig(notice_base_url="http://b/notice")),
        clock)


def test_the_service_runs_shared_expiries_on_the_engine_clock(
        tmp_path: Path, campaign_file: Path, clock: ManualClock, db: Path) -> None:
    """build_service hands the engine's clock to the shared ledger: a ManualClock that
    moves past the reservation TTL expires a reservation nobody billed."""
    service = build_service(Settings(home=tmp_path / "ws"),  # type: ignore[call-arg]
                            featurizer=ZeroFeaturizer(clock), models=FixedBackend(),
                            clock=clock, campaigns_path=campaign_file, shared_state=db,
                            log_root=tmp_path / "log")
    try:
        ledger = service.notices.ledger
        assert isinstance(ledger, SqliteBudgetLedger)
        day = clock.now().date()
        assert ledger.reserve("c", "b1", 500, day, budget_micros=1000)
        clock.advance(DEFAULT_RESERVATION_TTL_S - 1)
        assert ledger.reserved_micros("c") == 500
        clock.advance(1)
        assert ledger.reserved_micros("c") == 0
        assert ledger.reserve("c", "b2", 1000, day, budget_micros=1000)
    finally:
        service.close()


def test_notices_shared_by_two_processes(db: Path) -> None:
    stores = [open_state(db), open_state(db)]              # one set per decision process
    s1, s2 = (NoticeService(ledger=led, dedupe=dd, sink=MemoryNoticeSink(), frequency=fc,
                            clock=ManualClock()) for led, fc, dd in stores)
    (ledger, counter, _), day = stores[1], ManualClock().now().date()
    params = {"id": "r", "imp": "1", "bid": "b", "cid": "c01", "price": "0.75", "u": "u9"}
    assert stores[0][0].reserve("c01", "b", 900, day, budget_micros=None)
    assert s1.handle("billing", params).status == "recorded"
    assert s2.handle("billing", params).status == "duplicate"
    assert ledger.spent_micros("c01", day) == 750
    assert ledger.reserved_micros("c01") == 0                          # settled
    assert counter.counts("u9", ["c01"], day) == [1]
    for store in (x for triple in stores for x in triple):
        store.close()


# --------------------------------------------------------------------------- errors


def test_a_locked_database_raises_the_typed_errors(db: Path) -> None:
    ledger = SqliteBudgetLedger(db, busy_timeout_ms=20, request_busy_timeout_ms=20,
                                refresh_s=60)
    counter = SqliteFrequencyCounter(db, busy_timeout_ms=20)
    dedupe = SqliteNoticeDedupe(db, busy_timeout_ms=20)
    assert ledger.reserve("c", "k0", 1, DAY, budget_micros=None)
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        for call in (lambda: ledger.reserve("c", "k", 1, DAY, budget_micros=10),
                     lambda: ledger.settle("c", "k0", 1, DAY),
                     lambda: ledger.release("c", "k0"),
                     lambda: ledger.charge("c", 1.0, DAY)):
            with pytest.raises(BudgetUnavailable, match="database is locked"):
                call()
        assert not ledger.healthy
        with pytest.raises(FrequencyUnavailable):
            counter.increment("u", "c", DAY)
        assert counter.counts("u", ["c"], DAY) == [0]           # WAL: readers go on
        with pytest.raises(NoticeStoreUnavailable):
            dedupe.first("n")
        # forget (undoing the mark of a notice that failed) waits past the 20 ms: here
        # until the holder lets go
        import threading

        threading.Timer(0.3, lambda: holder.execute("ROLLBACK")).start()
        dedupe.forget("n")
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()
    assert ledger.reserve("c", "k", 1, DAY, budget_micros=10) and ledger.healthy
    assert ledger.reserved_micros("c") == 2                    # nothing half-applied
    assert counter.increment("u", "c", DAY) == 1 and dedupe.first("n")
    for store in (ledger, counter, dedupe):
        store.close()


@pytest.mark.parametrize("make", [SqliteBudgetLedger, SqliteFrequencyCounter,
                                  SqliteNoticeDedupe])
def test_an_unusable_file_raises_the_typed_error(tmp_path: Path, make: type) -> None:
    errors = {SqliteBudgetLedger: BudgetUnavailable, SqliteFrequencyCounter:
              FrequencyUnavailable, SqliteNoticeDedupe: NoticeStoreUnavailable}
    with pytest.raises(errors[make]):
        make(tmp_path / "missing-dir" / "state.db")             # cannot be created
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database " * 512)
    with pytest.raises(errors[make], match="not a database"):
        make(garbage)


# --------------------------------------------------------------------------- processes


_BARRIER: Any = None


def _init_worker(barrier: Any) -> None:
    global _BARRIER
    _BARRIER = barrier


def _together() -> None:
    """Start the pool's 4 workers at once (each takes exactly one task, as it blocks)."""
    if _BARRIER is not None:
        _BARRIER.wait(timeout=60)


def _reserve_many(path: str, worker: int, n: int, amount: int, budget: int) -> int:
    _together()                 # the workers also create the file and schema at once
    ledger = SqliteBudgetLedger(path, request_busy_timeout_ms=10_000)
    try:
        return sum(amount for i in range(n)
                   if ledger.reserve("c", f"{worker}-{i}", amount, DAY, budget_micros=budget))
    finally:
        ledger.close()


def _first_many(path: str, keys: list[str]) -> list[str]:
    dedupe = SqliteNoticeDedupe(path)
    _together()
    try:
        return [k for k in keys if dedupe.first(k)]
    finally:
        dedupe.close()


def _increment_many(path: str, worker: int, n: int) -> int:
    counter = SqliteFrequencyCounter(path)
    _together()
    try:
        for i in range(n):
            counter.increment(f"u{i % 3}", "c", DAY)
        return n
    finally:
        counter.close()


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    ctx = mp.get_context("spawn")
    with ctx.Pool(4, initializer=_init_worker, initargs=(ctx.Barrier(4),)) as p:
        yield p


def test_processes_never_pass_the_budget_by_more_than_one(pool: Pool, db: Path) -> None:
    # The workers create the file concurrently: the schema set-up must be idempotent.
    granted = pool.starmap(_reserve_many, [(str(db), w, 300, 7, 5000) for w in range(4)])
    assert 5000 <= sum(granted) < 5000 + 7
    assert _rows(db, "SELECT COUNT(*), SUM(micros) FROM budget_resv") == \
        [(sum(granted) // 7, sum(granted))]
    ledger = SqliteBudgetLedger(db)
    try:
        assert ledger.reserved_micros("c") == sum(granted)
    finally:
        ledger.close()


def test_processes_see_each_notice_first_exactly_once(pool: Pool, db: Path) -> None:
    keys = [f"billing:r{i}:1:b" for i in range(200)]
    firsts = pool.starmap(_first_many, [(str(db), keys[w::2] + keys) for w in range(4)])
    seen = [k for got in firsts for k in got]
    assert sorted(seen) == sorted(keys)


def test_processes_increment_frequency_counts_exactly(pool: Pool, db: Path) -> None:
    done = pool.starmap(_increment_many, [(str(db), w, 150) for w in range(4)])
    counter = SqliteFrequencyCounter(db)
    try:
        assert sum(done) == 600
        assert counter.counts("u0", ["c"], DAY) == [200]
        assert sum(counter.counts(f"u{i}", ["c"], DAY)[0] for i in range(3)) == 600
    finally:
        counter.close()

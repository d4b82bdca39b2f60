"""Budgets, frequency caps and notice dedupe shared by the worker processes of one
machine (embedded profile, ``serve --workers N``): one SQLite database file, WAL mode.

Tables (every statement below is a primary-key or index lookup)::

    budget_spend     (campaign_id, day) -> micros           settled µ$ that UTC day
    budget_resv      (campaign_id, key) -> micros, expiry_ms    reservations
                     index (campaign_id, expiry_ms, micros)     purge, expired sums
    budget_reserved  campaign_id -> micros     total of budget_resv (kept by triggers)
    freq_counts      (day, user_key, campaign_id) -> n      billed impressions
    notice_seen      key -> expiry_ms  (index expiry_ms)    notices seen

Atomicity: ``reserve`` is one ``BEGIN IMMEDIATE`` transaction (the file's single write
lock, taken up front so no read-to-write upgrade can fail) whose one ``INSERT … SELECT
… WHERE`` inserts the reservation when spend + live reservations are under the budget;
a refusal or a reused key takes the step-by-step path (purge the campaign's expired
reservations, read spend + reservation total, insert). However many processes bid, a
day's commitments pass the budget by at most the reservation that crossed it, as with
:class:`decisioning.redis_budget.RedisBudgetLedger` (reservations count per campaign,
whatever their day). ``settle`` and ``increment`` are single transactions too; ``first``
is one ``INSERT … ON CONFLICT DO UPDATE … WHERE expired`` whose change count tells
whether the key was new. Reads ignore reservations with ``expiry_ms <= now``.

:meth:`SqliteBudgetLedger.committed_micros` (every candidate, every request) reads a
snapshot that a background thread refreshes every ``refresh_s`` for the campaign-days
asked about; this process's own reservations are added at once. That thread also
deletes every campaign's expired reservations (settle and release do not), and runs
the WAL checkpoints (``wal_autocheckpoint`` is off for the ledger's connections, and
for the others :func:`open_state` makes), so no request pays for copying the WAL: with
SQLite's automatic ones, past 1,000 frames every commit checkpoints until the WAL
starts over, and under steady writes from several processes it rarely does.

Threads: one connection per thread and store (``threading.local``; after ``fork`` the
child opens its own). Only its thread uses a connection, and ``close()`` closes them all.

Failures: any ``sqlite3.Error`` (locked past the wait below, disk I/O, not a database)
becomes :class:`BudgetUnavailable`, :class:`FrequencyUnavailable` or
:class:`NoticeStoreUnavailable`, like a Redis connection error; the snapshot keeps its
last values. Waiting for the write lock: the decision path (``reserve``, ``release``
of a late bid, ``counts``) waits at most ``request_busy_timeout_ms`` = 50 ms, as long
as the Redis client's socket timeout: the decision budget is ``tmax − margin`` (90 ms
by default) and the event loop stands still meanwhile. The other calls wait up to
``busy_timeout_ms``: 2 s by default, 50 ms in the decision service, whose notice routes
run on the event loop (a 503 makes the exchange retry); ``forget`` always waits up to
2 s (see :meth:`SqliteNoticeDedupe.forget`). A transaction holds the lock only for a
few statements, so the waits run out when writers saturate the file or a process
stalls holding it.
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any, TypeVar

from decisioning.budget import (
    DEFAULT_RESERVATION_TTL_S,
    MICROS_PER_DOLLAR,
    BudgetUnavailable,
    CommittedSnapshot,
    InvalidAmount,
    to_micros,
)
from decisioning.errors import DecisionError
from decisioning.frequency import FrequencyUnavailable
from decisioning.notices import NoticeStoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

REQUEST_BUSY_TIMEOUT_MS = 50
BUSY_TIMEOUT_MS = 2000
_INIT_TIMEOUT_S = 10.0
_RESTART_FRAMES = 4096          # 16 MiB of WAL
_REFRESH_CHUNK = 200            # campaign-days per snapshot query

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS budget_spend (campaign_id TEXT NOT NULL, day TEXT NOT NULL,"
    " micros INTEGER NOT NULL, PRIMARY KEY (campaign_id, day)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS budget_resv (campaign_id TEXT NOT NULL, key TEXT NOT NULL,"
    " micros INTEGER NOT NULL, expiry_ms INTEGER NOT NULL, PRIMARY KEY (campaign_id, key))"
    " WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS budget_resv_expiry ON budget_resv"
    " (campaign_id, expiry_ms, micros)",
    "CREATE TABLE IF NOT EXISTS budget_reserved (campaign_id TEXT PRIMARY KEY,"
    " micros INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TRIGGER IF NOT EXISTS budget_resv_ins AFTER INSERT ON budget_resv BEGIN"
    " INSERT INTO budget_reserved (campaign_id, micros) VALUES (NEW.campaign_id, NEW.micros)"
    " ON CONFLICT (campaign_id) DO UPDATE SET micros = micros + excluded.micros; END",
    "CREATE TRIGGER IF NOT EXISTS budget_resv_del AFTER DELETE ON budget_resv BEGIN"
    " UPDATE budget_reserved SET micros = micros - OLD.micros"
    " WHERE campaign_id = OLD.campaign_id; END",
    "CREATE TABLE IF NOT EXISTS freq_counts (day TEXT NOT NULL, user_key TEXT NOT NULL,"
    " campaign_id TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (day, user_key, campaign_id))"
    " WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS notice_seen (key TEXT PRIMARY KEY, expiry_ms INTEGER NOT NULL)"
    " WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS notice_seen_expiry ON notice_seen (expiry_ms)",
)

_PURGE = "DELETE FROM budget_resv WHERE campaign_id = ?1 AND expiry_ms <= ?2"
_EXPIRED_SUM = ("COALESCE((SELECT SUM(micros) FROM budget_resv WHERE campaign_id = {c}"
                " AND expiry_ms <= {now}), 0)")
_RESERVED = ("COALESCE((SELECT micros FROM budget_reserved WHERE campaign_id = {c}), 0) - "
             + _EXPIRED_SUM)
_SPENT = "COALESCE((SELECT micros FROM budget_spend WHERE campaign_id = {c} AND day = {d}), 0)"
_RESERVE_STATE = ("SELECT EXISTS (SELECT 1 FROM budget_resv WHERE campaign_id = ?1 AND key = ?2),"
                  " " + _SPENT.format(c="?1", d="?3") + " + COALESCE((SELECT micros FROM"
                  " budget_reserved WHERE campaign_id = ?1), 0)")
_RESERVED_NOW = "SELECT " + _RESERVED.format(c="?1", now="?2")
# A new reservation in one statement: inserted (change count 1) when spend + live
# reservations are under the budget (?5; NULL: no budget) and the key is new. The
# expired reservations are subtracted, not deleted: the background thread purges them.
_TRY_RESV = ("INSERT INTO budget_resv (campaign_id, key, micros, expiry_ms)"
             " SELECT ?1, ?2, ?3, ?4 WHERE ?5 IS NULL OR "
             + _SPENT.format(c="?1", d="?6") + " + " + _RESERVED.format(c="?1", now="?7")
             + " < ?5 ON CONFLICT (campaign_id, key) DO NOTHING")
_PURGE_BATCH = 1000
_PURGE_ALL = ("DELETE FROM budget_resv WHERE (campaign_id, key) IN (SELECT campaign_id, key"
              " FROM budget_resv WHERE campaign_id IN (SELECT campaign_id FROM budget_reserved"
              f" WHERE micros > 0) AND expiry_ms <= ?1 LIMIT {_PURGE_BATCH})")
_ADD_RESV = "INSERT INTO budget_resv (campaign_id, key, micros, expiry_ms) VALUES (?, ?, ?, ?)"
_ADD_SPEND = ("INSERT INTO budget_spend (campaign_id, day, micros) VALUES (?1, ?2, ?3)"
              " ON CONFLICT (campaign_id, day) DO UPDATE SET micros = micros + excluded.micros")
_GET_SPEND = "SELECT " + _SPENT.format(c="?1", d="?2")
_DROP = "DELETE FROM budget_resv WHERE campaign_id = ?1 AND key = ?2"
_COUNTS = "SELECT campaign_id, n FROM freq_counts WHERE day = ?1 AND user_key = ?2"
_INCR = ("INSERT INTO freq_counts (day, user_key, campaign_id, n) VALUES (?1, ?2, ?3, 1)"
         " ON CONFLICT (day, user_key, campaign_id) DO UPDATE SET n = n + 1")
_GET_COUNT = "SELECT n FROM freq_counts WHERE day = ?1 AND user_key = ?2 AND campaign_id = ?3"
# The users (all their campaigns) of the oldest day before ?1, 256 rows at a time.
_SWEEP = ("DELETE FROM freq_counts WHERE day = (SELECT min(day) FROM freq_counts) AND day < ?1"
          " AND user_key IN (SELECT user_key FROM freq_counts"
          " WHERE day = (SELECT min(day) FROM freq_counts) LIMIT 256)")
_FIRST = ("INSERT INTO notice_seen (key, expiry_ms) VALUES (?1, ?2) ON CONFLICT (key)"
          " DO UPDATE SET expiry_ms = excluded.expiry_ms WHERE notice_seen.expiry_ms <= ?3")
_NOTICE_PURGE_BATCH = 1000
_NOTICE_PURGE = ("DELETE FROM notice_seen WHERE key IN (SELECT key FROM notice_seen"
                 f" WHERE expiry_ms <= ?1 LIMIT {_NOTICE_PURGE_BATCH})")


def _wall_ms() -> int:
    return int(time.time() * 1000)


class _Local(threading.local):
    conn: sqlite3.Connection | None = None
    pid: int = 0


class _Db:
    """Per-thread connections to one file; ``sqlite3.Error`` → the store's typed error.

    Connections run with ``busy_timeout=0``: :meth:`run` waits for the lock itself,
    trying again every 50-200 µs. SQLite's busy handler sleeps 1, 2, 5, 10, 15, 20 ms…
    between tries, so a 50 ms wait makes about 6 tries and misses the short gaps
    between other processes' transactions.
    """

    def __init__(self, path: str | Path, error: type[DecisionError], what: str, *,
                 autocheckpoint: bool = True) -> None:
        self.path = os.fspath(path)
        self._error, self._what, self._autocheckpoint = error, what, autocheckpoint
        self._local = _Local()
        self._lock = threading.Lock()
        self._conns: list[tuple[int, sqlite3.Connection]] = []
        self._closed = False
        # Processes creating a new file at once: the switch to WAL fails at once with
        # SQLITE_BUSY (no busy handler on that path), so the whole set-up is retried.
        self.run(int(_INIT_TIMEOUT_S * 1000), self._create, tx=False)

    @staticmethod
    def _create(conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.NotSupportedError(f"journal_mode is {mode!r}, not 'wal'")
        conn.execute("BEGIN IMMEDIATE")
        for stmt in _SCHEMA:
            conn.execute(stmt)
        conn.execute("COMMIT")

    def conn(self) -> sqlite3.Connection:
        local, pid = self._local, os.getpid()
        c = local.conn
        if c is None or local.pid != pid:
            with self._lock:
                if self._closed:
                    raise sqlite3.ProgrammingError("store closed")
                c = sqlite3.connect(self.path, timeout=0, isolation_level=None,
                                    check_same_thread=False)
                self._conns.append((pid, c))
            c.execute("PRAGMA synchronous=NORMAL")
            if not self._autocheckpoint:
                c.execute("PRAGMA wal_autocheckpoint=0")
            local.conn, local.pid = c, pid
        return c

    def run(self, timeout_ms: int, fn: Callable[[sqlite3.Connection], T], *,
            tx: bool = True) -> T:
        """``fn`` in ``BEGIN IMMEDIATE`` … ``COMMIT`` (``tx``) or autocommit mode, rolled
        back on any error, retried while the database is busy for ``timeout_ms``."""
        deadline, pause = 0.0, 50e-6
        while True:
            try:
                c = self.conn()
                try:
                    if tx:
                        c.execute("BEGIN IMMEDIATE")
                    result = fn(c)
                    if tx:
                        c.execute("COMMIT")
                    return result
                except BaseException:
                    if c.in_transaction:
                        c.rollback()
                    raise
            except sqlite3.Error as exc:
                now = time.monotonic()
                deadline = deadline or now + timeout_ms / 1000
                busy = getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY
                if not busy or now >= deadline:
                    raise self._error(f"{self._what} unavailable ({self.path}): {exc}") from exc
            time.sleep(min(pause * (0.5 + random.random()), deadline - now))
            pause = min(pause * 2, 2e-4)

    def rows(self, timeout_ms: int, sql: str, args: Sequence[object]) -> list[Any]:
        """One statement in autocommit mode (its own consistent snapshot): its rows."""
        return self.run(timeout_ms, lambda c: c.execute(sql, args).fetchall(), tx=False)

    def change(self, timeout_ms: int, sql: str, args: Sequence[object]) -> int:
        """One write statement in autocommit mode (atomic): the rows it changed."""
        return self.run(timeout_ms, lambda c: c.execute(sql, args).rowcount, tx=False)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._conns = self._conns, []
        pid = os.getpid()
        for owner, c in conns:
            if owner == pid:                # never touch a parent's connection after fork
                c.close()


class SqliteBudgetLedger:
    """:class:`decisioning.budget.BudgetLedger` in a SQLite file shared by processes."""

    def __init__(self, path: str | Path, *,
                 reservation_ttl_s: float = DEFAULT_RESERVATION_TTL_S,
                 refresh_s: float = 0.2,
                 wall_ms: Callable[[], int] = _wall_ms,
                 busy_timeout_ms: int = BUSY_TIMEOUT_MS,
                 request_busy_timeout_ms: int = REQUEST_BUSY_TIMEOUT_MS) -> None:
        if reservation_ttl_s <= 0 or refresh_s <= 0:
            raise ValueError("reservation_ttl_s and refresh_s must be > 0")
        self._db = _Db(path, BudgetUnavailable, "budget ledger", autocheckpoint=False)
        self._ttl_ms = int(reservation_ttl_s * 1000)
        self._refresh_s = refresh_s
        self._wall_ms = wall_ms
        self._busy_ms, self._request_busy_ms = busy_timeout_ms, request_busy_timeout_ms
        self._snap = CommittedSnapshot()
        # Stores on the same file that close with this ledger (set by open_state): the
        # file's checkpoints run in this ledger's thread, so they live as long as it.
        self._companions: tuple[SqliteFrequencyCounter | SqliteNoticeDedupe, ...] = ()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._background, daemon=True,
                                        name="budget-snapshot")
        self._thread.start()
        self.healthy = True

    def _call(self, busy_ms: int, fn: Callable[[sqlite3.Connection], T], *,
              tx: bool = True) -> T:
        try:
            result = self._db.run(busy_ms, fn, tx=tx)
        except BudgetUnavailable:
            self.healthy = False
            raise
        self.healthy = True
        return result

    # -- reads
    def spent_micros(self, campaign_id: str, day: date) -> int:
        return int(self._db.rows(self._busy_ms, _GET_SPEND,
                                 (campaign_id, day.isoformat()))[0][0])

    def spent(self, campaign_id: str, day: date) -> float:
        return self.spent_micros(campaign_id, day) / MICROS_PER_DOLLAR

    def reserved_micros(self, campaign_id: str) -> int:
        """Live reservations of the campaign (all days), excluding expired ones."""
        now = self._wall_ms()
        return int(self._db.rows(self._busy_ms, _RESERVED_NOW, (campaign_id, now))[0][0])

    def committed_micros(self, campaign_id: str, day: date) -> int:
        return self._snap.committed(campaign_id, day)

    def refresh(self) -> None:
        """Re-read spend and live reservations of every tracked campaign-day."""
        tracked = self._snap.tracked()
        if not tracked:
            return
        now = self._wall_ms()

        def query(c: sqlite3.Connection) -> dict[tuple[str, date], int]:
            out: dict[tuple[str, date], int] = {}
            for i in range(0, len(tracked), _REFRESH_CHUNK):
                chunk = tracked[i:i + _REFRESH_CHUNK]
                values = ", ".join(f"(?{2 * j + 2}, ?{2 * j + 3})" for j in range(len(chunk)))
                sql = (f"WITH t(cid, day) AS (VALUES {values}) SELECT "
                       + _SPENT.format(c="t.cid", d="t.day") + " + "
                       + _RESERVED.format(c="t.cid", now="?1") + " FROM t")
                args: list[object] = [now]
                for cid, day in chunk:
                    args += [cid, day.isoformat()]
                rows = c.execute(sql, args).fetchall()
                out.update((k, int(r[0])) for k, r in zip(chunk, rows, strict=True))
            return out

        self._snap.replace(self._call(self._busy_ms, query, tx=False))

    def _background(self) -> None:
        while not self._stop.wait(self._refresh_s):
            try:
                self.purge()
                self.refresh()
                self._checkpoint()
            except BudgetUnavailable as exc:
                log.warning("budget snapshot refresh or WAL checkpoint failed: %s", exc)
                self._stop.wait(1.0)

    def purge(self) -> int:
        """Delete every campaign's expired reservations (reads already ignore them), in
        transactions of at most 1,000 rows so that none holds the write lock long; the
        background thread calls this every ``refresh_s``. Returns the rows deleted."""
        now, total = self._wall_ms(), 0
        while not self._stop.is_set():
            deleted = self._db.change(self._busy_ms, _PURGE_ALL, (now,))
            total += deleted
            if deleted < _PURGE_BATCH:
                break
        return total

    def _checkpoint(self) -> None:
        """Copy the WAL into the database file (PASSIVE: blocks no one). Under steady
        writes the WAL never starts over (a writer restarts it only when it was copied
        in full), so past ``_RESTART_FRAMES`` a RESTART checkpoint holds the write lock
        while it copies the few frames left (and syncs)."""
        (_, frames, _), = self._db.rows(self._busy_ms, "PRAGMA wal_checkpoint(PASSIVE)", ())
        for _ in range(20 if frames > _RESTART_FRAMES else 0):
            (busy, _, _), = self._db.rows(self._busy_ms, "PRAGMA wal_checkpoint(RESTART)", ())
            if not busy or self._stop.wait(0.001):
                return

    # -- writes
    def reserve(self, campaign_id: str, key: str, amount_micros: int, day: date, *,
                budget_micros: int | None, spend: bool = False) -> bool:
        if amount_micros < 0:
            raise InvalidAmount(f"reservation must be >= 0, got {amount_micros}")
        now = self._wall_ms()
        day_s = day.isoformat()

        def tx(c: sqlite3.Connection) -> bool:
            if not spend and c.execute(_TRY_RESV, (campaign_id, key, amount_micros,
                                                   now + self._ttl_ms, budget_micros, day_s,
                                                   now)).rowcount == 1:
                return True
            # Refused by the budget, a key already there (live, or expired and not yet
            # purged), or a charge: purge, then decide and write step by step.
            c.execute(_PURGE, (campaign_id, now))
            exists, committed = c.execute(_RESERVE_STATE, (campaign_id, key, day_s)).fetchone()
            if exists:
                return True
            if budget_micros is not None and committed >= budget_micros:
                return False
            if spend:
                c.execute(_ADD_SPEND, (campaign_id, day_s, amount_micros))
            else:
                c.execute(_ADD_RESV, (campaign_id, key, amount_micros, now + self._ttl_ms))
            return True

        ok = self._call(self._request_busy_ms, tx)
        if ok:
            self._snap.add(campaign_id, day, amount_micros)
        return ok

    def _settle(self, campaign_id: str, key: str | None, amount_micros: int,
                day: date) -> int:
        day_s = day.isoformat()

        def tx(c: sqlite3.Connection) -> int:
            if key is not None:
                c.execute(_DROP, (campaign_id, key))
            c.execute(_ADD_SPEND, (campaign_id, day_s, amount_micros))
            return int(c.execute(_GET_SPEND, (campaign_id, day_s)).fetchone()[0])

        return self._call(self._busy_ms, tx)

    def settle(self, campaign_id: str, key: str, amount_micros: int, day: date) -> int:
        if amount_micros < 0:
            raise InvalidAmount(f"spend must be >= 0, got {amount_micros}")
        return self._settle(campaign_id, key, amount_micros, day)

    def release(self, campaign_id: str, key: str) -> None:
        def tx(c: sqlite3.Connection) -> None:
            c.execute(_DROP, (campaign_id, key))

        self._call(self._request_busy_ms, tx)        # also the engine's, on a late bid

    def charge(self, campaign_id: str, amount: float, day: date) -> None:
        self._settle(campaign_id, None, to_micros(amount), day)

    def close(self) -> None:
        """Stop the background thread; close this ledger's connections, then those of
        the stores :func:`open_state` opened with it."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._db.close()
        for store in self._companions:
            store.close()


class SqliteFrequencyCounter:
    """:class:`decisioning.frequency.FrequencyCounter` in a SQLite file."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS,
                 request_busy_timeout_ms: int = REQUEST_BUSY_TIMEOUT_MS,
                 autocheckpoint: bool = True) -> None:
        self._db = _Db(path, FrequencyUnavailable, "frequency counters",
                       autocheckpoint=autocheckpoint)
        self._busy_ms, self._request_busy_ms = busy_timeout_ms, request_busy_timeout_ms
        self._sweep_day: date | None = None     # day whose older rows are being deleted
        self._sweeping = False

    def counts(self, user_key: str, campaign_ids: Sequence[str], day: date) -> list[int]:
        if not campaign_ids:
            return []
        found = dict(self._db.rows(self._request_busy_ms, _COUNTS, (day.isoformat(), user_key)))
        return [int(found.get(cid, 0)) for cid in campaign_ids]

    def increment(self, user_key: str, campaign_id: str, day: date) -> int:
        args = (day.isoformat(), user_key, campaign_id)

        def tx(c: sqlite3.Connection) -> int:
            c.execute(_INCR, args)
            return int(c.execute(_GET_COUNT, args).fetchone()[0])

        n = self._db.run(self._busy_ms, tx)
        if self._sweep_day is None or day > self._sweep_day:
            self._sweep_day, self._sweeping = day, True
        if self._sweeping:
            self._sweep((day - timedelta(days=1)).isoformat())
        return n

    def _sweep(self, before: str) -> None:
        """Delete one batch of rows older than ``before``; never fails the caller."""
        try:
            deleted = self._db.change(self._busy_ms, _SWEEP, (before,))
        except FrequencyUnavailable as exc:
            log.warning("old frequency counts not deleted (retried later): %s", exc)
            return
        if deleted == 0:
            self._sweeping = False

    def close(self) -> None:
        self._db.close()


class SqliteNoticeDedupe:
    """:class:`decisioning.notices.NoticeDedupe` in a SQLite file: ``first`` is True
    exactly once per key within ``ttl_s`` across all processes."""

    def __init__(self, path: str | Path, *, ttl_s: float = 3 * 86400,
                 purge_every_s: float = 60.0, wall_ms: Callable[[], int] = _wall_ms,
                 busy_timeout_ms: int = BUSY_TIMEOUT_MS, autocheckpoint: bool = True) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        self._db = _Db(path, NoticeStoreUnavailable, "notice dedupe store",
                       autocheckpoint=autocheckpoint)
        self._ttl_ms, self._purge_every_ms = int(ttl_s * 1000), int(purge_every_s * 1000)
        self._wall_ms, self._busy_ms = wall_ms, busy_timeout_ms
        self._next_purge_ms = 0

    def first(self, key: str) -> bool:
        now = self._wall_ms()
        new = self._db.change(self._busy_ms, _FIRST, (key, now + self._ttl_ms, now)) == 1
        if now >= self._next_purge_ms:
            self._purge(now)
        return new

    def _purge(self, now: int) -> None:
        """Delete a batch of expired keys (again at the next call when it was full)."""
        try:
            deleted = self._db.change(self._busy_ms, _NOTICE_PURGE, (now,))
        except NoticeStoreUnavailable as exc:       # the key is marked: do not fail
            log.warning("expired notice keys not deleted (retried later): %s", exc)
            deleted = 0
        self._next_purge_ms = now if deleted >= _NOTICE_PURGE_BATCH else \
            now + self._purge_every_ms

    def forget(self, key: str) -> None:
        # It undoes the mark of a notice that could not be applied: if it failed too,
        # the exchange's retry would be answered "duplicate" and its spend never
        # counted, so this rare call waits for the lock as long as off-path calls do.
        self._db.change(max(self._busy_ms, BUSY_TIMEOUT_MS),
                        "DELETE FROM notice_seen WHERE key = ?1", (key,))

    def close(self) -> None:
        self._db.close()


def open_state(path: str | Path, *, wall_ms: Callable[[], int] = _wall_ms,
               reservation_ttl_s: float = DEFAULT_RESERVATION_TTL_S,
               busy_timeout_ms: int = BUSY_TIMEOUT_MS,
               ) -> tuple[SqliteBudgetLedger, SqliteFrequencyCounter, SqliteNoticeDedupe]:
    """Ledger, frequency counter and notice dedupe on one database file (created with
    its tables if missing); call in each worker process. The ledger's thread runs the
    file's WAL checkpoints for all three, and closing the ledger closes all three (the
    campaign store that holds the ledger closes it on shutdown).

    ``busy_timeout_ms``: the longest wait for the write lock off the decision path
    (settle, increment, notice dedupe). The decision service passes
    ``REQUEST_BUSY_TIMEOUT_MS``: its notice routes run on the event loop with the
    in-process backend, and a notice that finds the store busy is better answered 503
    (the exchange retries) than holding every auction behind it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ledger = SqliteBudgetLedger(path, wall_ms=wall_ms, reservation_ttl_s=reservation_ttl_s,
                                busy_timeout_ms=busy_timeout_ms)
    counter = SqliteFrequencyCounter(path, autocheckpoint=False,
                                     busy_timeout_ms=busy_timeout_ms)
    dedupe = SqliteNoticeDedupe(path, wall_ms=wall_ms, autocheckpoint=False,
                                busy_timeout_ms=busy_timeout_ms)
    ledger._companions = (counter, dedupe)
    return ledger, counter, dedupe


__all__ = ["BUSY_TIMEOUT_MS", "REQUEST_BUSY_TIMEOUT_MS", "SqliteBudgetLedger",
           "SqliteFrequencyCounter", "SqliteNoticeDedupe", "open_state"]

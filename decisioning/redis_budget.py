"""Budgets shared by every decision process: :class:`RedisBudgetLedger`.

Keys per campaign share one Redis Cluster hash slot (the ``{campaign}`` tag), so each
Lua script touches a single slot::

    <prefix>:{<cid>}:spent:<YYYY-MM-DD>   INCRBY micro-dollars settled that UTC day
    <prefix>:{<cid>}:reserved             live reservations total (micro-dollars)
    <prefix>:{<cid>}:resv                 ZSET  bid key -> expiry (epoch ms)
    <prefix>:{<cid>}:resv_amt             HASH  bid key -> micro-dollars

Every script first drops expired reservations (at most 512 per call), so the total
never counts a reservation past its expiry. ``reserve`` checks ``spent + reserved <
budget`` and reserves in one atomic step, so however many processes bid, the day's
commitments pass the budget by at most the one reservation that crosses it (one
impression's price).

Candidate selection must not wait on the network, so :meth:`committed_micros` reads a
snapshot that a background thread refreshes every ``refresh_s`` for the campaigns
asked about; this process's own reservations are added to it at once. The snapshot is
advisory (it filters out exhausted campaigns early); the hard check is ``reserve``.

Failures: a refused connection or timeout raises :class:`BudgetUnavailable` from
``reserve``/``settle``/``release`` (the engine answers no-bid for budgeted campaigns,
counted as ``budget_unavailable``); the snapshot keeps its last values.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import date
from typing import TYPE_CHECKING, Any

from decisioning.budget import (
    DEFAULT_RESERVATION_TTL_S,
    MICROS_PER_DOLLAR,
    BudgetUnavailable,
    CommittedSnapshot,
    InvalidAmount,
    to_micros,
)

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

_PURGE = """
local exp = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 512)
if #exp > 0 then
  local amts = redis.call('HMGET', KEYS[3], unpack(exp))
  local total = 0
  for _, a in ipairs(amts) do if a then total = total + tonumber(a) end end
  redis.call('ZREM', KEYS[2], unpack(exp))
  redis.call('HDEL', KEYS[3], unpack(exp))
  if total > 0 then redis.call('DECRBY', KEYS[4], total) end
end
"""

# KEYS: spent, resv, resv_amt, reserved. ARGV: now_ms, key, amount, budget (-1: none),
# expiry_ms, spend (0/1), spent_ttl_s. Returns 1 reserved/charged, 0 refused.
_RESERVE = _PURGE + """
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then return 1 end
local amount = tonumber(ARGV[3])
local budget = tonumber(ARGV[4])
if budget >= 0 then
  local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
  local reserved = tonumber(redis.call('GET', KEYS[4]) or '0')
  if spent + reserved >= budget then return 0 end
end
if ARGV[6] == '1' then
  redis.call('INCRBY', KEYS[1], amount)
  redis.call('EXPIRE', KEYS[1], ARGV[7])
  return 1
end
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], amount)
redis.call('INCRBY', KEYS[4], amount)
return 1
"""

# ARGV: now_ms, key, amount (-1: release only), spent_ttl_s. Returns spend after.
_SETTLE = _PURGE + """
local a = redis.call('HGET', KEYS[3], ARGV[2])
if a then
  redis.call('HDEL', KEYS[3], ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('DECRBY', KEYS[4], tonumber(a))
end
local amount = tonumber(ARGV[3])
if amount < 0 then return 0 end
local total = redis.call('INCRBY', KEYS[1], amount)
redis.call('EXPIRE', KEYS[1], ARGV[4])
return total
"""

# ARGV: now_ms. Returns {spent, reserved}.
_SNAPSHOT = _PURGE + """
return {tonumber(redis.call('GET', KEYS[1]) or '0'), tonumber(redis.call('GET', KEYS[4]) or '0')}
"""


def _wall_ms() -> int:
    return int(time.time() * 1000)


class RedisBudgetLedger:
    """:class:`decisioning.budget.BudgetLedger` on Redis, shared by all processes."""

    def __init__(self, client: redis.Redis, *, prefix: str = "adp",
                 reservation_ttl_s: float = DEFAULT_RESERVATION_TTL_S,
                 refresh_s: float = 0.2, spent_ttl_days: int = 8,
                 wall_ms: Callable[[], int] = _wall_ms) -> None:
        if reservation_ttl_s <= 0 or refresh_s <= 0:
            raise ValueError("reservation_ttl_s and refresh_s must be > 0")
        self._r = client
        self._prefix = prefix
        self._ttl_ms = int(reservation_ttl_s * 1000)
        self._refresh_s = refresh_s
        self._spent_ttl_s = spent_ttl_days * 86400
        self._wall_ms = wall_ms
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._snapshot_script = client.register_script(_SNAPSHOT)
        self._lock = threading.Lock()
        self._snap = CommittedSnapshot(on_track=self._start_refresh)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.healthy = True

    def _keys(self, campaign_id: str, day: date) -> list[str]:
        base = f"{self._prefix}:{{{campaign_id}}}"
        return [f"{base}:spent:{day.isoformat()}", f"{base}:resv", f"{base}:resv_amt",
                f"{base}:reserved"]

    def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        import redis as redis_lib

        try:
            result = script(keys=keys, args=args)
        except (redis_lib.ConnectionError, redis_lib.TimeoutError) as exc:
            self.healthy = False
            raise BudgetUnavailable(f"budget ledger unreachable: {exc}") from exc
        self.healthy = True
        return result

    # -- reads
    def spent_micros(self, campaign_id: str, day: date) -> int:
        res = self._call(self._snapshot_script, self._keys(campaign_id, day),
                         [self._wall_ms()])
        return int(res[0])

    def spent(self, campaign_id: str, day: date) -> float:
        return self.spent_micros(campaign_id, day) / MICROS_PER_DOLLAR

    def committed_micros(self, campaign_id: str, day: date) -> int:
        return self._snap.committed(campaign_id, day)

    def _start_refresh(self) -> None:
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._refresh_loop, daemon=True,
                                                name="budget-snapshot")
                self._thread.start()

    def refresh(self) -> None:
        """Re-read spend and reservations of every tracked campaign-day (one pipeline)."""
        import redis as redis_lib

        tracked = self._snap.tracked()
        if not tracked:
            return
        now = self._wall_ms()
        try:
            pipe = self._r.pipeline(transaction=False)
            for cid, day in tracked:
                self._snapshot_script(keys=self._keys(cid, day), args=[now], client=pipe)
            results = pipe.execute()
        except (redis_lib.ConnectionError, redis_lib.TimeoutError):
            self.healthy = False
            raise
        self.healthy = True
        self._snap.replace({k: int(s) + int(r)
                            for k, (s, r) in zip(tracked, results, strict=True)})

    def _refresh_loop(self) -> None:
        import redis as redis_lib

        while not self._stop.wait(self._refresh_s):
            try:
                self.refresh()
            except (redis_lib.RedisError, OSError) as exc:
                log.warning("budget snapshot refresh failed (keeping the last one): %s", exc)
                self._stop.wait(1.0)

    # -- writes
    def reserve(self, campaign_id: str, key: str, amount_micros: int, day: date, *,
                budget_micros: int | None, spend: bool = False) -> bool:
        if amount_micros < 0:
            raise InvalidAmount(f"reservation must be >= 0, got {amount_micros}")
        now = self._wall_ms()
        ok = self._call(self._reserve, self._keys(campaign_id, day),
                        [now, key, amount_micros, -1 if budget_micros is None else budget_micros,
                         now + self._ttl_ms, 1 if spend else 0, self._spent_ttl_s])
        if ok:
            self._snap.add(campaign_id, day, amount_micros)
        return bool(ok)

    def settle(self, campaign_id: str, key: str, amount_micros: int, day: date) -> int:
        if amount_micros < 0:
            raise InvalidAmount(f"spend must be >= 0, got {amount_micros}")
        return int(self._call(self._settle, self._keys(campaign_id, day),
                              [self._wall_ms(), key, amount_micros, self._spent_ttl_s]))

    def release(self, campaign_id: str, key: str) -> None:
        self._call(self._settle, self._keys(campaign_id, date.today()),
                   [self._wall_ms(), key, -1, self._spent_ttl_s])

    def charge(self, campaign_id: str, amount: float, day: date) -> None:
        self.settle(campaign_id, "", to_micros(amount), day)

    def reserved_micros(self, campaign_id: str) -> int:
        res = self._call(self._snapshot_script, self._keys(campaign_id, date.today()),
                         [self._wall_ms()])
        return int(res[1])

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def redis_client(url: str, *, timeout_s: float = 0.05) -> redis.Redis:
    """A client for the request path: short socket timeouts, no retries (the engine
    owns the time budget and degrades instead)."""
    import redis as redis_lib
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis_lib.Redis.from_url(url, socket_timeout=timeout_s,
                                    socket_connect_timeout=timeout_s,
                                    retry=Retry(NoBackoff(), 0), health_check_interval=0)


__all__ = ["RedisBudgetLedger", "redis_client"]

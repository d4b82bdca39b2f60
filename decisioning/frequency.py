"""Frequency caps: impressions per (user, campaign, UTC day).

Source of truth: a counter incremented on **billing notices** (a billable impression),
keyed by the pseudonymous user key carried in the notice URL (``u=``, a keyed hash of
``user.id``, present only for personalised requests). The decision reads the counts of
one user for all capped candidates in one call (one Redis ``HMGET``). Requests that
may not be personalised have no user key: they are never counted, and capped campaigns
still serve them (a cap cannot be kept for an unknown user).

:class:`InMemoryFrequencyCounter` (embedded, one process) and
:class:`RedisFrequencyCounter` (services: ``<prefix>:{fc:<user>}:<day>`` hashes of
campaign -> count, expiring after two days) implement :class:`FrequencyCounter`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import date
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from decisioning.errors import DecisionError

if TYPE_CHECKING:
    import redis


class FrequencyUnavailable(DecisionError):
    """The counter store cannot be reached; capped campaigns are skipped (fail closed)."""


@runtime_checkable
class FrequencyCounter(Protocol):
    def counts(self, user_key: str, campaign_ids: Sequence[str], day: date) -> list[int]:
        """Impressions today of ``user_key`` for each campaign (0 when none)."""
        ...

    def increment(self, user_key: str, campaign_id: str, day: date) -> int: ...


class InMemoryFrequencyCounter:
    """Counts for the most recent day only (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._day: date | None = None
        self._counts: dict[tuple[str, str], int] = {}

    def counts(self, user_key: str, campaign_ids: Sequence[str], day: date) -> list[int]:
        if day != self._day:
            return [0] * len(campaign_ids)
        c = self._counts
        return [c.get((user_key, cid), 0) for cid in campaign_ids]

    def increment(self, user_key: str, campaign_id: str, day: date) -> int:
        with self._lock:
            if day != self._day:
                if self._day is not None and day < self._day:
                    return 0
                self._day, self._counts = day, {}
            n = self._counts.get((user_key, campaign_id), 0) + 1
            self._counts[(user_key, campaign_id)] = n
            return n


class RedisFrequencyCounter:
    """Per-user hashes in Redis, shared by every process."""

    def __init__(self, client: redis.Redis, *, prefix: str = "adp",
                 ttl_s: int = 2 * 86400) -> None:
        self._r = client
        self._prefix = prefix
        self._ttl_s = ttl_s

    def _key(self, user_key: str, day: date) -> str:
        return f"{self._prefix}:{{fc:{user_key}}}:{day.isoformat()}"

    def counts(self, user_key: str, campaign_ids: Sequence[str], day: date) -> list[int]:
        import redis as redis_lib

        if not campaign_ids:
            return []
        try:
            values = self._r.hmget(self._key(user_key, day), list(campaign_ids))
        except (redis_lib.ConnectionError, redis_lib.TimeoutError) as exc:
            raise FrequencyUnavailable(f"frequency counters unreachable: {exc}") from exc
        return [int(v) if v is not None else 0 for v in values]  # type: ignore[union-attr]

    def increment(self, user_key: str, campaign_id: str, day: date) -> int:
        import redis as redis_lib

        key = self._key(user_key, day)
        try:
            pipe = self._r.pipeline(transaction=True)
            pipe.hincrby(key, campaign_id, 1)
            pipe.expire(key, self._ttl_s)
            n, _ = pipe.execute()
        except (redis_lib.ConnectionError, redis_lib.TimeoutError) as exc:
            raise FrequencyUnavailable(f"frequency counters unreachable: {exc}") from exc
        return int(n)


__all__ = ["FrequencyCounter", "FrequencyUnavailable", "InMemoryFrequencyCounter",
           "RedisFrequencyCounter"]

"""Time-bucketed window counters, shared by the live aggregator and the offline backfill.

A :class:`Window` is ``n_buckets`` consecutive buckets of ``bucket_us`` microseconds,
aligned on the Unix epoch (so day buckets start at UTC midnight). At time ``now`` the
window holds the buckets ``[b(now) - n_buckets + 1, b(now)]``: the 5-minute window is
30 buckets of 10 s (it covers the last 290-300 s), "today" is one bucket of one day (it
resets at UTC midnight). A bucket leaves the window at ``(b + n_buckets) * bucket_us``,
so every value change happens either at an event or at one of those instants.

:class:`WindowTable` keeps, per entity key of one view, one counter per feature and a
heap of the instants at which a bucket expires. The live aggregator and the offline
backfill drive the very same table (the aggregator at flush times, the backfill at
every event and every expiry instant), which is what keeps online and offline values
equal at any instant.

Times are integer microseconds since the epoch, UTC, as in the event log.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field

US_PER_S = 1_000_000
US_PER_DAY = 86_400 * US_PER_S

Key = tuple[str, ...]


@dataclass(frozen=True)
class Window:
    """``n_buckets`` epoch-aligned buckets of ``bucket_us`` microseconds."""

    name: str
    bucket_us: int
    n_buckets: int

    def __post_init__(self) -> None:
        if self.bucket_us <= 0 or self.n_buckets <= 0:
            raise ValueError(f"window {self.name!r}: bucket_us and n_buckets must be > 0")

    @property
    def span_us(self) -> int:
        """The longest stretch of time the window can cover."""
        return self.bucket_us * self.n_buckets

    def bucket(self, ts_us: int) -> int:
        return ts_us // self.bucket_us

    def first_bucket(self, now_us: int) -> int:
        """The oldest bucket still inside the window at ``now_us``."""
        return now_us // self.bucket_us - self.n_buckets + 1

    def expiry_us(self, bucket: int) -> int:
        """The instant at which ``bucket`` leaves the window."""
        return (bucket + self.n_buckets) * self.bucket_us


FIVE_MINUTES = Window("5m", bucket_us=10 * US_PER_S, n_buckets=30)
TODAY_UTC = Window("today", bucket_us=US_PER_DAY, n_buckets=1)


@dataclass
class BucketCounter:
    """Counts per bucket of one window, with their running total."""

    window: Window
    buckets: dict[int, int] = field(default_factory=dict)
    total: int = 0

    def add(self, ts_us: int, now_us: int, amount: int = 1) -> int | None:
        """Count an event at ``ts_us``; returns the bucket's expiry if the bucket is new.

        Raises :class:`LateEvent` when the event's bucket already left the window at
        ``now_us`` (the caller decides what to do with it).
        """
        b = self.window.bucket(ts_us)
        if b < self.window.first_bucket(now_us):
            raise LateEvent(ts_us, now_us)
        new = b not in self.buckets
        self.buckets[b] = self.buckets.get(b, 0) + amount
        self.total += amount
        return self.window.expiry_us(b) if new else None

    def evict(self, now_us: int) -> bool:
        """Drop buckets that left the window at ``now_us``; True if anything was dropped."""
        first = self.window.first_bucket(now_us)
        old = [b for b in self.buckets if b < first]
        for b in old:
            self.total -= self.buckets.pop(b)
        return bool(old)


class LateEvent(Exception):  # noqa: N818 - a control-flow signal, not an error type
    """An event whose bucket has already left the window."""

    def __init__(self, ts_us: int, now_us: int) -> None:
        super().__init__(f"event at {ts_us} is outside the window at {now_us}")
        self.ts_us, self.now_us = ts_us, now_us


class WindowTable:
    """Per-key counters of one view: ``features[i]`` counts events of kind ``kinds[i]``.

    Not thread-safe: one owner (the aggregator thread, or the backfill loop).
    """

    def __init__(self, kinds: Sequence[str], windows: Sequence[Window]) -> None:
        if len(kinds) != len(windows) or not kinds:
            raise ValueError("one event kind per window, and at least one")
        self.windows = tuple(windows)
        self._by_kind: dict[str, list[int]] = {}
        for i, kind in enumerate(kinds):
            self._by_kind.setdefault(kind, []).append(i)
        self._state: dict[Key, list[BucketCounter]] = {}
        self._expiries: list[tuple[int, Key]] = []   # min-heap; one entry per new bucket
        self.late = 0

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(self._by_kind)

    def __len__(self) -> int:
        return len(self._state)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._state

    def add(self, key: Key, kind: str, ts_us: int, now_us: int) -> bool:
        """Count one event; False when it changes nothing (other kind, or late for all)."""
        idx = self._by_kind.get(kind)
        if not idx:
            return False
        counters = self._state.get(key)
        if counters is None:
            counters = [BucketCounter(w) for w in self.windows]
        changed = False
        for i in idx:
            try:
                expiry = counters[i].add(ts_us, now_us)
            except LateEvent:
                self.late += 1
                continue
            changed = True
            if expiry is not None:
                heapq.heappush(self._expiries, (expiry, key))
        if changed:
            self._state[key] = counters
        return changed

    def next_expiry(self) -> int | None:
        return self._expiries[0][0] if self._expiries else None

    def advance(self, now_us: int) -> list[Key]:
        """Expire buckets up to ``now_us``; the keys whose values changed (each once).

        Keys whose counters all reach zero are forgotten (their last value, all zeros,
        is still returned by :meth:`values`).
        """
        changed: dict[Key, None] = {}
        while self._expiries and self._expiries[0][0] <= now_us:
            _, key = heapq.heappop(self._expiries)
            changed[key] = None
        out = []
        for key in changed:
            counters = self._state.get(key)
            if counters is None:
                continue
            if any([c.evict(now_us) for c in counters]):
                out.append(key)
            if all(c.total == 0 for c in counters):
                del self._state[key]
        return out

    def expiry_steps(self, until_us: int) -> Iterator[tuple[int, list[Key]]]:
        """Advance instant by instant through every expiry ``<= until_us``.

        Yields ``(instant, changed keys)``: the backfill emits one row per key there.
        """
        while self._expiries and self._expiries[0][0] <= until_us:
            instant = self._expiries[0][0]
            keys = self.advance(instant)
            if keys:
                yield instant, keys

    def values(self, key: Key) -> tuple[int, ...]:
        """Current totals (as of the last :meth:`add`/:meth:`advance`); zeros if unknown."""
        counters = self._state.get(key)
        if counters is None:
            return (0,) * len(self.windows)
        return tuple(c.total for c in counters)


__all__ = ["FIVE_MINUTES", "TODAY_UTC", "US_PER_DAY", "US_PER_S", "BucketCounter", "Key",
           "LateEvent", "Window", "WindowTable"]

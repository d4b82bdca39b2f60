"""Time, injected: wall-clock ``now()`` for records, ``monotonic()`` for deadlines."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a monotonic clock (only differences mean anything)."""
        ...


class SystemClock:
    """The real clocks: :func:`datetime.now` (UTC) and :func:`time.perf_counter`."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.perf_counter()


class ManualClock:
    """A clock that moves only when told to (tests, replays)."""

    def __init__(self, start: datetime | None = None, monotonic: float = 1000.0) -> None:
        start = start or datetime(2024, 1, 1, tzinfo=UTC)
        if start.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start time")
        self._lock = threading.Lock()
        self._now = start.astimezone(UTC)
        self._mono = monotonic

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds``."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        with self._lock:
            self._mono += seconds
            self._now += timedelta(seconds=seconds)

    def set(self, now: datetime) -> None:
        """Set the wall clock (the monotonic clock is left alone)."""
        if now.tzinfo is None:
            raise ValueError("ManualClock needs timezone-aware times")
        self._now = now.astimezone(UTC)


def wall_ms_of(clock: Clock) -> Callable[[], int]:
    """Milliseconds since the epoch on ``clock``'s wall clock, as the shared ledgers and
    dedupe stores (SQLite, Redis) take it: their reservation expiries are compared
    across processes, so they run on the wall clock, not the per-process monotonic
    one; a :class:`ManualClock` then moves them too."""

    def wall_ms() -> int:
        return int(clock.now().timestamp() * 1000)

    return wall_ms


__all__ = ["Clock", "ManualClock", "SystemClock", "wall_ms_of"]

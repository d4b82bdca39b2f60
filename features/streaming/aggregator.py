"""The stream aggregator: events in, windowed counters out, batched pushes to Feast.

One aggregator consumes the whole event stream (windows must see every event of a key).
It runs in its own thread: poll the bus, count events into the windows
(:mod:`features.streaming.windows`), and every ``flush_interval_s`` push the keys that
changed, one DataFrame per view, through the view's push source. A key whose window
empties (bucket expiry, UTC midnight) is pushed its 0 at the first flush after that
instant; once all its counters are 0 it is forgotten.

Write timestamps. Feast's Redis online store (0.67, ``online_write_batch``) skips a row
whose event timestamp is not strictly newer than the stored one, compared in
nanoseconds; SQLite overwrites unconditionally (and keeps event times in whole
seconds). Every push therefore carries the flush instant of the aggregator's clock,
made strictly increasing across flushes, so each flush of a key is newer than the last
(a 50-click burst within one second is stored flush by flush). For a store that compares whole seconds (older
Feast releases), set ``timestamp_resolution_us=1_000_000``: a key is then pushed at most
once per whole second and later changes stay dirty until the next second (freshness
about 1 s).

Clock. The windows run on event time: :class:`StreamClock` is the newest event time
seen, running on at wall-clock rate between events. Live events (stamped with the wall
clock) make it the wall clock; a simulator's events make it the simulated clock, and
windows still decay while the stream is idle.

Delivery is at least once: the bus is acknowledged after a successful flush of the
events it delivered, so a crash before a push redelivers them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from features.streaming.backfill import window_table
from features.streaming.bus import EventBus
from features.streaming.definitions import STREAM_VIEWS, StreamView
from features.streaming.errors import StreamingError
from features.streaming.events import StreamEvent, events_from_frame, log_events
from features.streaming.windows import Key, WindowTable

if TYPE_CHECKING:
    from feast import FeatureStore

    from adplatform.config import Settings

log = logging.getLogger(__name__)


def _wall_us() -> int:
    return time.time_ns() // 1000


class StreamClock:
    """Event-time clock: the newest event time seen, advancing at wall rate in between.

    Before the first event it reads the wall clock. Thread-safe; never goes backwards.
    """

    def __init__(self, *, monotonic: Callable[[], float] = time.monotonic,
                 wall_us: Callable[[], int] = _wall_us) -> None:
        self._mono, self._wall = monotonic, wall_us
        self._lock = threading.Lock()
        self._base_us: int | None = None
        self._base_mono = 0.0

    def _now(self) -> int:
        if self._base_us is None:
            return self._wall()
        return self._base_us + int((self._mono() - self._base_mono) * 1e6)

    def now_us(self) -> int:
        with self._lock:
            return self._now()

    def observe(self, ts_us: int) -> None:
        with self._lock:
            if self._base_us is None or ts_us > self._now():
                self._base_us, self._base_mono = ts_us, self._mono()


class PushSink(Protocol):
    """Where a flush goes: one DataFrame of one view (join keys, event_timestamp, features)."""

    def push(self, view: StreamView, df: pd.DataFrame) -> None: ...


class FeastPushSink:
    """Pushes through the view's Feast push source to the online store.

    ``FeatureStore.push(source, df)`` lists (and deserializes) every feature view of the
    registry at each call to find the push source's views: 5-8 ms here, most of a push.
    By default this sink finds them once and then writes each one with
    ``FeatureStore.write_to_online_store`` (what ``push`` does for ``PushMode.ONLINE``),
    about 1 ms; ``via_push_api=True`` calls ``push`` itself. :meth:`refresh` forgets the
    resolved views (after a registry change).
    """

    def __init__(self, store: FeatureStore, *, via_push_api: bool = False) -> None:
        self.store = store
        self.via_push_api = via_push_api
        self._targets: dict[str, list[str]] = {}

    def refresh(self) -> None:
        self._targets.clear()

    def _views_of(self, push_source: str) -> list[str]:
        names = self._targets.get(push_source)
        if names is None:
            names = sorted(fv.name for fv in self.store.list_feature_views(allow_cache=True)
                           if fv.stream_source is not None
                           and fv.stream_source.name == push_source)
            if not names:
                raise StreamingError(f"no feature view reads push source {push_source!r}: "
                                     "apply the streaming definitions first")
            self._targets[push_source] = names
        return names

    def push(self, view: StreamView, df: pd.DataFrame) -> None:
        if self.via_push_api:
            self.store.push(view.push_source, df)
            return
        for name in self._views_of(view.push_source):
            self.store.write_to_online_store(name, df, allow_registry_cache=True)


@dataclass
class AggregatorStats:
    events: int = 0          # events counted into at least one window
    ignored: int = 0         # events no view counts (no key, or a kind nobody counts)
    late: int = 0            # (event, feature) pairs whose bucket had already expired
    flushes: int = 0         # flushes that pushed something
    rows: int = 0            # rows pushed
    push_errors: int = 0
    bus_errors: int = 0
    push_s: float = 0.0      # time spent pushing

    @property
    def push_ms_mean(self) -> float:
        return 1000.0 * self.push_s / self.flushes if self.flushes else 0.0


class StreamAggregator:
    """Counts stream events into the views' windows and pushes changed keys in batches.

    ``process`` and ``flush`` are for one owner thread; :meth:`start` runs them in a
    thread of its own over a bus, :meth:`stop` stops it (with a final flush).
    """

    def __init__(self, sink: PushSink, views: Sequence[StreamView] = STREAM_VIEWS,
                 *, flush_interval_s: float = 0.1, clock: StreamClock | None = None,
                 timestamp_resolution_us: int = 1, max_batch: int = 10_000) -> None:
        if flush_interval_s <= 0:
            raise ValueError(f"flush_interval_s must be > 0, got {flush_interval_s}")
        if timestamp_resolution_us < 1:
            raise ValueError("timestamp_resolution_us must be >= 1")
        self.sink = sink
        self.views = tuple(views)
        self.flush_interval_s = flush_interval_s
        self.clock = clock or StreamClock()
        self.max_batch = max_batch
        self.stats = AggregatorStats()
        self._res = timestamp_resolution_us
        self._tables: list[WindowTable] = [window_table(v) for v in self.views]
        self._dirty: list[dict[Key, None]] = [{} for _ in self.views]
        self._written: list[dict[Key, int]] = [{} for _ in self.views]   # resolution > 1 only
        self._last_push_us = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._error_logged_at = -1e9

    @classmethod
    def for_store(cls, store: FeatureStore, **kwargs: Any) -> StreamAggregator:
        """Pushing through ``store``'s push sources. Give it a FeatureStore of its own:
        Feast's SQLite store shares one connection per FeatureStore object."""
        return cls(FeastPushSink(store), **kwargs)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> StreamAggregator:
        """An aggregator on a FeatureStore of its own for the workspace of ``settings``."""
        from features.store import open_store

        return cls.for_store(open_store(settings), **kwargs)

    # -- counting ------------------------------------------------------------------------

    def process(self, events: Iterable[StreamEvent]) -> int:
        """Count events into the windows; returns how many counted anywhere."""
        batch = list(events)
        for e in batch:
            self.clock.observe(e.ts_us)
        now = self.clock.now_us()
        counted = 0
        for e in batch:
            hit = False
            for view, table, dirty in zip(self.views, self._tables, self._dirty, strict=True):
                if e.kind not in table.kinds:
                    continue
                key = tuple([getattr(e, k) for k in view.join_keys])
                if all(key) and table.add(key, e.kind, e.ts_us, now):
                    dirty[key] = None
                    hit = True
            counted += hit
        self.stats.events += counted
        self.stats.ignored += len(batch) - counted
        self.stats.late = sum(t.late for t in self._tables)
        return counted

    def warm_start(self, events_dir: Path) -> int:
        """Rebuild the windows from the event log (the last longest-window span of it).

        For a restart: the next flush pushes every live key. Returns events counted.
        """
        events = log_events(events_dir)
        if events.empty:
            return 0
        span = max(f.window.span_us for v in self.views for f in v.features)
        recent = events[events["ts_us"] >= int(events["ts_us"].iloc[-1]) - span]
        return self.process(events_from_frame(recent))

    def values(self, view: str, key: Key) -> tuple[int, ...]:
        """In-memory values of one key (what the next flush would push for it)."""
        for v, table in zip(self.views, self._tables, strict=True):
            if v.name == view:
                return table.values(key)
        raise KeyError(view)

    @property
    def live_keys(self) -> dict[str, int]:
        return {v.name: len(t) for v, t in zip(self.views, self._tables, strict=True)}

    # -- pushing -------------------------------------------------------------------------

    def flush(self) -> bool:
        """Expire buckets up to now and push every changed key; False if a push failed.

        Keys whose push failed stay dirty and are retried at the next flush.
        """
        # One instant for expiry and the write timestamp, strictly after the last push.
        ts = now = max(self.clock.now_us(), self._last_push_us + 1)
        ok, pushed = True, False
        for i, (view, table) in enumerate(zip(self.views, self._tables, strict=True)):
            dirty = self._dirty[i]
            for key in table.advance(now):
                dirty[key] = None
            if not dirty:
                continue
            keys = self._eligible(i, ts)
            if not keys:
                continue
            df = self._frame(view, table, keys, ts)
            started = time.perf_counter()
            try:
                self.sink.push(view, df)
            except Exception as exc:  # noqa: BLE001 - logged, counted, retried next flush
                self.stats.push_errors += 1
                self._log_push_error(view, exc)
                ok = False
                continue
            self.stats.push_s += time.perf_counter() - started
            self.stats.rows += len(keys)
            pushed = True
            for key in keys:
                del dirty[key]
            if self._res > 1:
                written = self._written[i]
                for key in keys:
                    written[key] = ts
        if pushed:
            self._last_push_us = ts
            self.stats.flushes += 1
        return ok

    def _eligible(self, i: int, ts: int) -> list[Key]:
        dirty = self._dirty[i]
        if self._res == 1:
            return list(dirty)
        # One write per key per resolution step: the store keeps only a newer step.
        step = ts // self._res
        written = self._written[i]
        for key in [k for k, at in written.items() if at // self._res < step]:
            del written[key]
        return [k for k in dirty if k not in written]

    @staticmethod
    def _frame(view: StreamView, table: WindowTable, keys: list[Key], ts: int) -> pd.DataFrame:
        cols: dict[str, object] = {k: [key[j] for key in keys] for j, k in enumerate(view.join_keys)}
        cols["event_timestamp"] = pd.to_datetime(np.full(len(keys), ts, dtype=np.int64),
                                                 unit="us", utc=True)
        vals = np.array([table.values(key) for key in keys], dtype=np.int64)
        for j, f in enumerate(view.features):
            cols[f.name] = vals[:, j]
        return pd.DataFrame(cols)

    def _log_push_error(self, view: StreamView, exc: Exception) -> None:
        # Full traceback at most every 10 s; a one-liner otherwise (a store outage would
        # otherwise log at every flush).
        now = time.monotonic()
        if now - self._error_logged_at >= 10.0:
            self._error_logged_at = now
            log.error("push to %s failed (%d failures so far); keys stay dirty",
                      view.push_source, self.stats.push_errors, exc_info=exc)
        else:
            log.warning("push to %s failed: %s", view.push_source, exc)

    # -- running -------------------------------------------------------------------------

    def run(self, bus: EventBus, stop: threading.Event) -> None:
        """Consume ``bus`` until ``stop`` is set; flush every interval; final flush at the end."""
        # Flushes are at least ``interval`` apart; an event arriving after a quiet spell is
        # pushed at once, events in a busy stream wait for the next flush. When nothing
        # is dirty the loop still flushes every interval, to push expiries.
        interval = self.flush_interval_s
        last_flush = time.monotonic()
        unacked = False
        while not stop.is_set():
            dirty = any(self._dirty)
            wait = max(0.0, last_flush + interval - time.monotonic()) if dirty else interval
            try:
                events = bus.poll(self.max_batch, wait)
            except Exception as exc:  # noqa: BLE001 - transport outage: log, back off, retry
                self.stats.bus_errors += 1
                log.error("event bus poll failed; retrying in %.1fs", interval, exc_info=exc)
                stop.wait(interval)
                events = []                     # windows still expire while the bus is down
            if events:
                self.process(events)
                unacked = True
            now = time.monotonic()
            if now >= last_flush + interval:
                unacked = self._flush_and_ack(bus, unacked)
                last_flush = now
        self._flush_and_ack(bus, unacked)

    def _flush_and_ack(self, bus: EventBus, unacked: bool) -> bool:
        # Acknowledge only once everything delivered is in the store (with a timestamp
        # resolution above 1 us some keys may wait for the next second).
        if not self.flush() or not unacked or any(self._dirty):
            return unacked
        try:
            bus.ack()
        except Exception as exc:  # noqa: BLE001 - redelivery follows; counted and logged
            self.stats.bus_errors += 1
            log.error("event bus ack failed; events may be redelivered", exc_info=exc)
            return True
        return False

    def start(self, bus: EventBus) -> None:
        """Run over ``bus`` in a background thread."""
        if self._thread is not None and self._thread.is_alive():
            raise StreamingError("aggregator already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, args=(bus, self._stop),
                                        name="stream-aggregator", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread (after its final flush); raises if it does not end in time."""
        self._stop.set()
        if self._thread is None:
            return
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise StreamingError(f"aggregator thread did not stop within {timeout_s}s")
        self._thread = None

    def __enter__(self) -> StreamAggregator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["AggregatorStats", "FeastPushSink", "PushSink", "StreamAggregator", "StreamClock"]

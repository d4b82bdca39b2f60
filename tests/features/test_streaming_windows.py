"""Windows, the aggregator's flush logic and the backfill, without a feature store.

The central property: every row the live aggregator pushes equals the offline backfill's
point-in-time value at that row's timestamp (no training/serving skew).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.streaming import (
    FIVE_MINUTES,
    IP_VELOCITY,
    STREAM_VIEWS,
    TODAY_UTC,
    USER_CAMPAIGN_FREQUENCY,
    InProcessBus,
    StreamAggregator,
    StreamClock,
    StreamEvent,
    StreamingError,
    StreamView,
    open_bus,
    replay,
)
from features.streaming.events import KEY_FIELDS, from_us, to_us
from features.streaming.windows import US_PER_DAY, US_PER_S, BucketCounter, WindowTable

T0 = to_us(datetime(2026, 3, 1, 23, 50, tzinfo=UTC))   # ten minutes before UTC midnight


class FakeTime:
    """Monotonic and wall clocks that move only when told to."""

    def __init__(self, wall_us: int = T0) -> None:
        self.mono, self.wall = 0.0, wall_us

    def clock(self) -> StreamClock:
        return StreamClock(monotonic=lambda: self.mono, wall_us=lambda: self.wall)

    def sleep(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += int(seconds * US_PER_S)


class CaptureSink:
    """Records pushes; ``online`` keeps the newest row per key, as Feast's Redis store
    does (a row not strictly newer than the stored one is skipped), optionally comparing
    whole seconds only (older Feast releases)."""

    def __init__(self, whole_seconds: bool = False) -> None:
        self.rows: list[tuple[str, tuple[str, ...], int, tuple[int, ...]]] = []
        self.online: dict[tuple[str, tuple[str, ...]], tuple[int, tuple[int, ...]]] = {}
        self.skipped = 0
        self._unit = US_PER_S if whole_seconds else 1
        self.fail = False

    def push(self, view: StreamView, df: pd.DataFrame) -> None:
        if self.fail:
            raise ConnectionError("store down")
        ts = df["event_timestamp"].astype("datetime64[us, UTC]").astype("int64").to_numpy()
        for i in range(len(df)):
            key = tuple(str(df[k].iloc[i]) for k in view.join_keys)
            values = tuple(int(df[f].iloc[i]) for f in view.feature_names)
            self.rows.append((view.name, key, int(ts[i]), values))
            stored = self.online.get((view.name, key))
            if stored is not None and ts[i] // self._unit <= stored[0] // self._unit:
                self.skipped += 1
                continue
            self.online[(view.name, key)] = (int(ts[i]), values)

    def value(self, view: StreamView, key: tuple[str, ...]) -> tuple[int, ...] | None:
        row = self.online.get((view.name, key))
        return None if row is None else row[1]


def click(ts_us: int, ip: str = "1.1.1.1", **kw: str) -> StreamEvent:
    return StreamEvent(kind="click", ts_us=ts_us, ip=ip, **kw)


def events_frame(events: list[StreamEvent]) -> pd.DataFrame:
    df = pd.DataFrame([{"kind": e.kind, "ts_us": e.ts_us, **{f: getattr(e, f) for f in KEY_FIELDS}}
                       for e in events], columns=["kind", "ts_us", *KEY_FIELDS])
    return df.sort_values("ts_us", kind="stable").reset_index(drop=True)


def pit(frame: pd.DataFrame, view: StreamView, key: tuple[str, ...], at_us: int) -> tuple[int, ...]:
    """Point-in-time value of the offline frame (0s when the key has no row yet)."""
    rows = frame.loc[[k == key for k in zip(*(frame[c] for c in view.join_keys), strict=True)]]
    ts = rows["event_timestamp"].astype("datetime64[us, UTC]").astype("int64").to_numpy()
    i = int(np.searchsorted(ts, at_us, side="right")) - 1
    if i < 0:
        return (0,) * len(view.features)
    return tuple(int(v) for v in rows[view.feature_names].to_numpy()[i])


# -- windows ------------------------------------------------------------------------------

def test_five_minute_window_is_thirty_ten_second_buckets() -> None:
    c = BucketCounter(FIVE_MINUTES)
    start = 1_000 * 10 * US_PER_S                      # on a bucket boundary
    assert c.add(start, start) == start + 300 * US_PER_S
    assert c.add(start + 9 * US_PER_S, start + 9 * US_PER_S) is None   # same bucket
    c.evict(start + 299 * US_PER_S)
    assert c.total == 2
    c.evict(start + 300 * US_PER_S)
    assert c.total == 0 and not c.buckets


def test_today_resets_at_utc_midnight() -> None:
    c = BucketCounter(TODAY_UTC)
    midnight = to_us(datetime(2026, 3, 2, tzinfo=UTC))
    assert c.add(midnight - 1, midnight - 1) == midnight
    c.evict(midnight - 1)
    assert c.total == 1
    c.evict(midnight)
    assert c.total == 0
    assert TODAY_UTC.bucket(midnight) == midnight // US_PER_DAY


def test_late_event_is_dropped_and_counted() -> None:
    table = WindowTable(["click"], [FIVE_MINUTES])
    now = T0 + 3600 * US_PER_S
    assert not table.add(("ip",), "click", now - 400 * US_PER_S, now)
    assert table.late == 1 and len(table) == 0
    assert table.add(("ip",), "click", now - 200 * US_PER_S, now)
    assert not table.add(("ip",), "request-of-another-kind", now, now)


def test_advance_forgets_empty_keys_and_reports_each_once() -> None:
    table = WindowTable(["click", "click"], [FIVE_MINUTES, TODAY_UTC])
    table.add(("a",), "click", T0, T0)
    table.add(("a",), "click", T0 + 1, T0 + 1)
    table.add(("b",), "click", T0 + 20 * US_PER_S, T0 + 20 * US_PER_S)
    assert table.advance(T0 + 305 * US_PER_S) == [("a",)]
    assert table.values(("a",)) == (0, 2)          # 5 min emptied, today still 2
    midnight = (T0 // US_PER_DAY + 1) * US_PER_DAY
    assert sorted(table.advance(midnight)) == [("a",), ("b",)]
    assert len(table) == 0 and table.values(("a",)) == (0, 0)


def test_event_wire_format_round_trips_and_rejects_junk() -> None:
    e = StreamEvent.at("impression", datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC),
                       user_id="u1", campaign_id="c1", ip="1.2.3.4")
    assert StreamEvent.from_bytes(e.to_bytes()) == e
    assert e.ts == datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert from_us(to_us(e.ts)) == e.ts
    for bad in (b"not json", b'{"kind": "click"}', b'{"kind": "click", "ts_us": 1, "x": "y"}',
                b'{"kind": "click", "ts_us": 1, "ip": 5}', b'{"kind": "bid", "ts_us": 1}'):
        with pytest.raises(StreamingError):
            StreamEvent.from_bytes(bad)
    with pytest.raises(StreamingError, match="timezone"):
        StreamEvent.at("click", datetime(2026, 3, 1))


# -- aggregator flush logic ---------------------------------------------------------------

def test_burst_within_one_flush_pushes_one_row_with_the_total() -> None:
    ft, sink = FakeTime(), CaptureSink()
    agg = StreamAggregator(sink, clock=ft.clock())
    agg.process([click(T0 + i * 6_000) for i in range(50)])   # 50 clicks in 0.3 s
    assert agg.flush()
    assert sink.value(IP_VELOCITY, ("1.1.1.1",)) == (0, 50)
    assert [r for r in sink.rows if r[0] == "ip_velocity"] == [
        ("ip_velocity", ("1.1.1.1",), T0 + 49 * 6_000, (0, 50))]


def test_every_flush_is_newer_so_a_strict_store_keeps_it() -> None:
    # Redis skips a row not newer than the stored one: flushes within the same
    # microsecond of the clock must still be stored.
    ft, sink = FakeTime(), CaptureSink()
    agg = StreamAggregator(sink, clock=ft.clock())
    for _ in range(5):
        agg.process([click(T0)])
        agg.flush()
    assert sink.skipped == 0 and sink.value(IP_VELOCITY, ("1.1.1.1",)) == (0, 5)


def test_whole_second_mode_defers_changes_to_the_next_second() -> None:
    ft, sink = FakeTime(), CaptureSink(whole_seconds=True)
    agg = StreamAggregator(sink, clock=ft.clock(), timestamp_resolution_us=US_PER_S)
    for i in range(10):                          # 10 flushes 0.1 s apart, one click each
        agg.process([click(T0 + i * 100_000)])
        agg.flush()
        ft.sleep(0.1)
    assert sink.skipped == 0
    assert sink.value(IP_VELOCITY, ("1.1.1.1",)) == (0, 1)   # the rest waits for the next second
    ft.sleep(1.0)
    agg.flush()
    assert sink.value(IP_VELOCITY, ("1.1.1.1",)) == (0, 10) and sink.skipped == 0


def test_windows_decay_to_zero_without_new_events() -> None:
    ft, sink = FakeTime(), CaptureSink()
    agg = StreamAggregator(sink, clock=ft.clock())
    agg.process([click(T0, user_id="u", campaign_id="c"),
                 StreamEvent(kind="impression", ts_us=T0, user_id="u", campaign_id="c")])
    agg.flush()
    assert sink.value(USER_CAMPAIGN_FREQUENCY, ("u", "c")) == (1, 1)
    ft.sleep(301)
    agg.flush()
    assert sink.value(IP_VELOCITY, ("1.1.1.1",)) == (0, 0)
    assert sink.value(USER_CAMPAIGN_FREQUENCY, ("u", "c")) == (1, 1)   # today: not yet midnight
    ft.sleep(300)                                                       # past UTC midnight
    agg.flush()
    assert sink.value(USER_CAMPAIGN_FREQUENCY, ("u", "c")) == (0, 0)
    assert agg.live_keys == {v.name: 0 for v in STREAM_VIEWS}


def test_failed_push_keeps_keys_dirty_and_retries() -> None:
    ft, sink = FakeTime(), CaptureSink()
    agg = StreamAggregator(sink, clock=ft.clock())
    agg.process([click(T0)])
    sink.fail = True
    assert not agg.flush()
    assert agg.stats.push_errors > 0
    sink.fail = False
    ft.sleep(0.1)
    assert agg.flush()
    assert sink.value(IP_VELOCITY, ("1.1.1.1",)) == (0, 1)


def test_events_without_a_key_are_ignored() -> None:
    agg = StreamAggregator(CaptureSink(), clock=FakeTime().clock())
    assert agg.process([StreamEvent(kind="click", ts_us=T0)]) == 0
    assert agg.stats.ignored == 1


def test_thread_runs_over_a_bus_and_stops_with_a_final_flush() -> None:
    sink, bus = CaptureSink(), InProcessBus()
    agg = StreamAggregator(sink, flush_interval_s=0.05)
    agg.start(bus)
    with pytest.raises(StreamingError, match="already running"):
        agg.start(bus)
    now = to_us(datetime.now(UTC))
    for i in range(20):
        bus.publish(click(now + i, ip="9.9.9.9"))
    agg.stop()
    assert not agg.running
    assert sink.value(IP_VELOCITY, ("9.9.9.9",)) == (0, 20)


# -- online == offline --------------------------------------------------------------------

event_st = st.tuples(
    st.integers(0, 2 * 3600 * US_PER_S),          # offset from T0: crosses UTC midnight
    st.sampled_from(["request", "impression", "click"]),
    st.sampled_from(["ip1", "ip2", "ip3"]),
    st.sampled_from(["u1", "u2"]),
    st.sampled_from(["c1", "c2"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.lists(event_st, min_size=1, max_size=120),
       cuts=st.lists(st.integers(1, 119), max_size=15),
       idle=st.lists(st.integers(0, 400), min_size=1, max_size=5))
def test_every_pushed_value_equals_the_backfill_point_in_time_value(
        raw: list[tuple[int, str, str, str, str]], cuts: list[int], idle: list[int]) -> None:
    events = sorted((StreamEvent(kind=k, ts_us=T0 + dt, ip=ip, device_id=ip, user_id=u,
                                 campaign_id=c) for dt, k, ip, u, c in raw),
                    key=lambda e: e.ts_us)
    frames = {v.name: replay(v, events_frame(events)) for v in STREAM_VIEWS}

    ft, sink = FakeTime(), CaptureSink()
    ft.wall = events[0].ts_us
    agg = StreamAggregator(sink, clock=ft.clock())
    # Batches end between distinct timestamps: an event stamped at or before a flush
    # that reaches the aggregator after it is late data, which no push can anticipate.
    ok_cuts = [c for c in cuts if c < len(events) and events[c].ts_us > events[c - 1].ts_us]
    bounds = sorted({0, len(events), *ok_cuts})
    for j, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        batch = events[a:b]
        agg.process(batch)
        agg.flush()
        # Idle time before the next batch (never past the next event: in-order stream).
        nxt = events[b].ts_us if b < len(events) else None
        step = idle[j % len(idle)] * US_PER_S
        if nxt is not None:
            step = min(step, nxt - agg.clock.now_us() - 1)
        if step > 0:
            ft.sleep(step / US_PER_S)
            agg.flush()
    ft.sleep(2 * 86_400)
    agg.flush()
    assert sink.skipped == 0
    views = {v.name: v for v in STREAM_VIEWS}
    for view_name, key, ts, values in sink.rows:
        assert values == pit(frames[view_name], views[view_name], key, ts), (view_name, key, ts)
    # Everything decays to zero, online and offline.
    for _, values in sink.online.values():
        assert values == (0,) * len(values)
    for name, df in frames.items():
        last = df.groupby(list(views[name].join_keys)).tail(1)
        assert (last[views[name].feature_names] == 0).all().all()


def test_bus_outage_is_logged_retried_and_windows_still_flush(caplog: pytest.LogCaptureFixture) -> None:
    class FlakyBus(InProcessBus):
        fail = 3

        def poll(self, max_events: int, timeout_s: float) -> list[StreamEvent]:
            if self.fail:
                self.fail -= 1
                raise ConnectionError("bus down")
            return super().poll(max_events, timeout_s)

    sink, bus = CaptureSink(), FlakyBus()
    agg = StreamAggregator(sink, flush_interval_s=0.02)
    bus.publish(click(to_us(datetime.now(UTC)), ip="8.8.8.8"))
    agg.start(bus)
    deadline = time.perf_counter() + 2.0
    while sink.value(IP_VELOCITY, ("8.8.8.8",)) is None and time.perf_counter() < deadline:
        time.sleep(0.01)
    agg.stop()
    assert sink.value(IP_VELOCITY, ("8.8.8.8",)) == (0, 1)
    assert agg.stats.bus_errors == 3
    assert "event bus poll failed" in caplog.text


def test_unknown_transport_is_a_clear_error(tmp_path: Path) -> None:
    from adplatform.config import Settings

    with pytest.raises(StreamingError, match="unknown transport 'kafka'"):
        open_bus(Settings(home=tmp_path), "kafka")

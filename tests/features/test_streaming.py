"""Streaming features through a real Feast store: SQLite (embedded) and Redis (services).

Redis tests use db 15 and delete exactly the keys they wrote.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from adplatform.config import Settings
from adplatform.eventlog import SCHEMAS, write_events
from features.store import offline_dir, open_store
from features.streaming import (
    DEVICE_VELOCITY,
    IP_VELOCITY,
    STREAM_VIEWS,
    USER_CAMPAIGN_FREQUENCY,
    InProcessBus,
    StreamAggregator,
    StreamClock,
    StreamEvent,
    StreamView,
    apply_streaming,
    backfill_frames,
    measure_freshness,
    read_online,
    stream_skew_check,
    streaming_definitions,
    write_backfill,
)
from features.streaming.events import to_us
from features.streaming.windows import US_PER_S

REDIS_TEST_URL = "redis://127.0.0.1:6379/15"

PROFILES = ["embedded", pytest.param("services", marks=pytest.mark.services)]


class Written:
    """Entity keys a test wrote, to delete from Redis afterwards."""

    def __init__(self) -> None:
        self.keys: list[tuple[StreamView, tuple[str, ...]]] = []

    def add(self, view: StreamView, *keys: tuple[str, ...]) -> None:
        self.keys += [(view, k) for k in keys]


def purge_redis(settings: Settings, written: Written) -> None:
    import redis
    from feast.infra.online_stores.redis import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    project = open_store(settings).config.project
    names = [_redis_key(project, EntityKey(join_keys=list(v.join_keys),
                                           entity_values=[Value(string_val=x) for x in k]),
                        entity_key_serialization_version=3) for v, k in written.keys]
    client = redis.Redis.from_url(settings.redis_url)
    try:
        if names:
            client.delete(*names)
    finally:
        client.close()


@pytest.fixture(params=PROFILES)
def stream_settings(request: pytest.FixtureRequest, tmp_path: Path
                    ) -> Iterator[tuple[Settings, Written]]:
    written = Written()
    if request.param == "services":
        settings = Settings(home=tmp_path / "ws", profile="services", redis_url=REDIS_TEST_URL)
    else:
        settings = Settings(home=tmp_path / "ws")
    yield settings, written
    if request.param == "services":
        purge_redis(settings, written)


def online(store: Any, view: StreamView, key: tuple[str, ...]) -> tuple[Any, ...]:
    """One key's features through FeatureStore.get_online_features (None when absent)."""
    row = dict(zip(view.join_keys, key, strict=True))
    got = store.get_online_features(features=view.refs(), entity_rows=[row]).to_dict()
    return tuple(got[f][0] for f in view.feature_names)


class ShiftedClock:
    """A monotonic clock the test can move forward (the aggregator's windows follow it)."""

    def __init__(self) -> None:
        self.shift = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.shift


# -- definitions --------------------------------------------------------------------------

def test_definitions_apply_with_the_batch_repo(tmp_path: Path) -> None:
    from feast import Entity, ValueType

    from features.repo import ENTITIES, definitions

    settings = Settings(home=tmp_path / "ws")
    objects = streaming_definitions(offline_dir(settings))
    names = {o.name for o in objects if isinstance(o, Entity)}
    assert names == {"ip", "device", "campaign"} - {e.name for e in ENTITIES}
    store = open_store(settings)
    # definitions() carries the streaming views: the batch repo applies them in one go.
    store.apply(definitions(offline_dir(settings)).objects())  # type: ignore[arg-type]
    assert {v.name for v in STREAM_VIEWS} <= {fv.name for fv in store.list_feature_views()}
    fv = store.get_feature_view("user_campaign_frequency")
    assert sorted(fv.entities) == ["campaign", "user"]
    # Entities defined elsewhere (repo.py, later) are reused, not duplicated.
    ip = Entity(name="ip", join_keys=["ip"], value_type=ValueType.STRING)
    again = streaming_definitions(offline_dir(settings), existing=[*ENTITIES, ip])
    assert "ip" not in {o.name for o in again if isinstance(o, Entity)}


# -- live: burst and decay ----------------------------------------------------------------

def test_bot_burst_is_online_within_a_second_and_decays(
        stream_settings: tuple[Settings, Written]) -> None:
    settings, written = stream_settings
    apply_streaming(settings)
    store = open_store(settings)
    mono = ShiftedClock()
    agg = StreamAggregator.from_settings(settings, flush_interval_s=0.1,
                                         clock=StreamClock(monotonic=mono))
    bus = InProcessBus()
    ip, user, campaign = f"10.66.{uuid.uuid4().hex[:8]}", f"u-{uuid.uuid4().hex[:8]}", "camp-1"
    written.add(IP_VELOCITY, (ip,))
    written.add(USER_CAMPAIGN_FREQUENCY, (user, campaign))
    online(store, IP_VELOCITY, ("warm-up",))     # Feast's first read loads lazily (~1 s)
    agg.start(bus)
    try:
        first = time.perf_counter()
        for i in range(50):                     # 50 clicks from one ip in ~0.3 s
            if i % 10 == 0:
                bus.publish(StreamEvent.at("impression", datetime.now(UTC), ip=ip,
                                           user_id=user, campaign_id=campaign))
            bus.publish(StreamEvent.at("click", datetime.now(UTC), ip=ip, user_id=user,
                                       campaign_id=campaign))
            time.sleep(0.006)
        value: Any = None
        while time.perf_counter() - first < 2.0:
            value = online(store, IP_VELOCITY, (ip,))[1]
            if value == 50:
                break
            time.sleep(0.01)
        seen_after = time.perf_counter() - first
        assert value == 50, f"ip_clicks_5m online = {value}"
        assert seen_after < 1.0, f"burst visible only after {seen_after:.2f}s"
        # Views are pushed one after the other within a flush.
        assert _eventually(lambda: online(store, USER_CAMPAIGN_FREQUENCY, (user, campaign))
                           == (5, 50), timeout_s=0.5)

        # Five minutes without events: the 5-minute window empties, "today" does not.
        mono.shift = 301.0
        assert _eventually(lambda: online(store, IP_VELOCITY, (ip,)) == (0, 0))
        # Past the next UTC midnight, the frequency counters reset.
        now = datetime.now(UTC)
        midnight = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
        mono.shift = 301.0 + (midnight - now).total_seconds() + 1
        assert _eventually(lambda: online(store, USER_CAMPAIGN_FREQUENCY, (user, campaign))
                           == (0, 0))
    finally:
        agg.stop()
    assert agg.stats.push_errors == 0 and agg.live_keys["ip_velocity"] == 0


def _eventually(check: Any, timeout_s: float = 2.0) -> bool:
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return bool(check())


# -- offline == online --------------------------------------------------------------------

DAY = datetime(2026, 2, 10, tzinfo=UTC)


def _log_rows(table: str, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows with every column of the event-log table (defaults for the unused ones)."""
    schema = SCHEMAS[table]
    defaults: dict[str, Any] = {}
    for f in schema:
        if pa.types.is_string(f.type):
            defaults[f.name] = ""
        elif pa.types.is_boolean(f.type):
            defaults[f.name] = False
        elif pa.types.is_floating(f.type):
            defaults[f.name] = 0.0
        elif pa.types.is_integer(f.type):
            defaults[f.name] = 0
    return pd.DataFrame([{**defaults, **r} for r in rows], columns=schema.names)


@pytest.fixture
def synthetic_log(tmp_path: Path) -> tuple[Path, list[StreamEvent]]:
    """Two hours around a UTC midnight: background traffic, a bot ip clicking 60 times in
    90 s,
    and users seeing campaigns repeatedly. Returns the events dir and the live events."""
    rng = np.random.default_rng(5)
    tag = uuid.uuid4().hex[:6]
    start = DAY - timedelta(hours=1)
    req: list[dict[str, Any]] = []
    imp: list[dict[str, Any]] = []
    clk: list[dict[str, Any]] = []
    for i in range(600):
        bot = i % 10 == 0
        ts = (DAY - timedelta(minutes=21, seconds=float(rng.uniform(0, 90))) if bot
              else start + timedelta(seconds=float(rng.uniform(0, 7200))))
        ip = f"bot-{tag}" if bot else f"ip-{tag}-{rng.integers(0, 25)}"
        user = "" if i % 17 == 0 else f"user-{tag}-{rng.integers(0, 15)}"
        base: dict[str, Any] = {"ts": ts, "request_id": f"r{i}", "imp_id": "1", "user_id": user}
        req.append({**base, "ip": ip, "device_id": f"dev-{ip}"})
        if bot or rng.random() < 0.6:
            camp = f"camp-{rng.integers(0, 3)}"
            imp.append({**base, "ts": ts + timedelta(milliseconds=50), "campaign_id": camp,
                        "creative_id": f"cr-{camp}"})
            if bot or rng.random() < 0.1:
                clk.append({**base, "ts": ts + timedelta(seconds=2), "campaign_id": camp,
                            "creative_id": f"cr-{camp}"})
    events_dir = tmp_path / "events"
    for table, rows in (("requests", req), ("impressions", imp), ("clicks", clk)):
        write_events(events_dir, table, _log_rows(table, rows))
    where = {(r["request_id"]): (r["ip"], r["device_id"]) for r in req}
    live = [StreamEvent(kind="request", ts_us=to_us(r["ts"]), request_id=r["request_id"],
                        user_id=r["user_id"], ip=r["ip"], device_id=r["device_id"]) for r in req]
    for kind, rows in (("impression", imp), ("click", clk)):
        live += [StreamEvent(kind=kind, ts_us=to_us(r["ts"]), request_id=r["request_id"],
                             user_id=r["user_id"], campaign_id=r["campaign_id"],
                             creative_id=r["creative_id"], ip=where[r["request_id"]][0],
                             device_id=where[r["request_id"]][1]) for r in rows]
    live.sort(key=lambda e: e.ts_us)
    return events_dir, live


def test_offline_point_in_time_equals_online(stream_settings: tuple[Settings, Written],
                                             synthetic_log: tuple[Path, list[StreamEvent]]
                                             ) -> None:
    settings, written = stream_settings
    events_dir, live = synthetic_log
    frames = backfill_frames(events_dir)
    write_backfill(frames, offline_dir(settings))
    store = apply_streaming(settings)
    keys = {v.name: sorted(set(map(tuple, frames[v.name][list(v.join_keys)].to_numpy().tolist())))
            for v in STREAM_VIEWS}
    for v in STREAM_VIEWS:
        written.add(v, *keys[v.name])
    assert frames["ip_velocity"]["ip_clicks_5m"].max() == 60, "the bot burst is in the log"

    # Live: the same events through the aggregator, on a clock we drive (event time).
    class Manual:
        t = 0.0

        def __call__(self) -> float:
            return self.t

    mono = Manual()
    agg = StreamAggregator.from_settings(settings, clock=StreamClock(monotonic=mono))
    checks = [DAY - timedelta(minutes=20), DAY + timedelta(seconds=1),
              DAY + timedelta(minutes=47, seconds=13)]
    pending = list(live)
    for at in checks:
        at_us = to_us(at)
        batch = [e for e in pending if e.ts_us < at_us]
        pending = pending[len(batch):]
        for i in range(0, len(batch), 20):       # as a live stream delivers them
            agg.process(batch[i:i + 20])
        mono.t += (at_us - agg.clock.now_us()) / US_PER_S       # idle until `at`
        assert agg.flush()
        for v in STREAM_VIEWS:
            entity_df = pd.DataFrame([dict(zip(v.join_keys, k, strict=True)) for k in keys[v.name]])
            entity_df["event_timestamp"] = pd.Timestamp(agg.clock.now_us(), unit="us", tz="UTC")
            hist = store.get_historical_features(entity_df=entity_df, features=v.refs()).to_df()
            hist = entity_df[list(v.join_keys)].merge(
                hist.drop(columns="event_timestamp"), on=list(v.join_keys), how="left")
            offline = hist[v.feature_names].fillna(0).to_numpy(dtype=np.int64)
            got = read_online(store, v, keys[v.name])
            online_values = np.array([row if row is not None else (0,) * len(v.features)
                                      for row in got], dtype=np.int64)
            np.testing.assert_array_equal(online_values, offline, err_msg=f"{v.name} at {at}")
    assert agg.stats.late == 0
    # The skew check compares each online row with the offline value at its own timestamp.
    report = stream_skew_check(settings, sample=1000)
    assert report.worst == 0.0, report
    assert sum(report.compared.values()) > 50


def test_warm_start_rebuilds_the_windows_from_the_log(
        synthetic_log: tuple[Path, list[StreamEvent]]) -> None:
    events_dir, live = synthetic_log
    frames = backfill_frames(events_dir)
    end = live[-1].ts_us

    class Capture:
        def __init__(self) -> None:
            self.frames: dict[str, pd.DataFrame] = {}

        def push(self, view: StreamView, df: pd.DataFrame) -> None:
            self.frames[view.name] = df

    sink = Capture()
    agg = StreamAggregator(sink, clock=StreamClock(monotonic=lambda: 0.0))
    assert agg.warm_start(events_dir) > 0
    agg.flush()
    for v in (IP_VELOCITY, DEVICE_VELOCITY, USER_CAMPAIGN_FREQUENCY):
        off = frames[v.name]
        off = off[off["event_timestamp"] <= pd.Timestamp(end, unit="us", tz="UTC")]
        last = off.groupby(list(v.join_keys)).tail(1).set_index(list(v.join_keys))
        last = last[(last[v.feature_names] > 0).any(axis=1)][v.feature_names]
        pushed = sink.frames[v.name].set_index(list(v.join_keys))[v.feature_names]
        pd.testing.assert_frame_equal(pushed.sort_index(), last.sort_index(), check_dtype=False)


def test_measure_freshness_in_process_on_sqlite(tmp_path: Path) -> None:
    result = measure_freshness(Settings(home=tmp_path / "ws"), "inprocess", n=40, rate_hz=100)
    # Every probe reached the online store (within measure_freshness's timeout); how
    # fast is the bench's to say (no wall-clock thresholds in tests).
    assert result["seen"] == 40 and result["online_store"] == "sqlite"
    assert 0 <= result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"] <= result["max_ms"]

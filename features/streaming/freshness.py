"""Streaming freshness: time from publishing an event to seeing its count online.

:func:`measure_freshness` runs an aggregator over the chosen transport, publishes ``n``
click events (one fresh probe ip each, at ``rate_hz``), and polls the online store until
each probe's ``ip_clicks_5m`` reads 1. Latency = first poll that sees it minus the
publish call; the poll period (``poll_s``) bounds the measurement error.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from features.streaming.aggregator import StreamAggregator
from features.streaming.bus import EventBus, open_bus
from features.streaming.definitions import IP_VELOCITY, STREAM_VIEWS
from features.streaming.events import StreamEvent
from features.streaming.online import StreamReader
from features.streaming.windows import Key

if TYPE_CHECKING:
    from feast import FeatureStore

    from adplatform.config import Settings

log = logging.getLogger(__name__)


def apply_streaming(settings: Settings) -> FeatureStore:
    """Register the streaming views in the workspace's Feast registry (idempotent).

    ``features.ops.apply`` does this too once ``definitions()`` includes them; this is
    for tools that need only the streaming views (bench, tests).
    """
    import sqlite3

    from features.repo import ENTITIES
    from features.store import offline_dir, open_store
    from features.streaming.definitions import STREAM_VIEWS, streaming_definitions

    store = open_store(settings)
    needed = {name for v in STREAM_VIEWS for name in v.entities}
    objects = [*(e for e in ENTITIES if e.name in needed),
               *streaming_definitions(offline_dir(settings), existing=ENTITIES)]
    store.apply(objects)  # type: ignore[arg-type]
    if settings.profile == "embedded":
        # As features.ops does: WAL, so the aggregator's writes never block readers.
        with sqlite3.connect(settings.workspace.feature_repo / "online.db") as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    return store


def measure_freshness(settings: Settings, transport: str = "inprocess", n: int = 200, *,
                      rate_hz: float = 50.0, flush_interval_s: float = 0.1,
                      poll_s: float = 0.002, timeout_s: float = 5.0) -> dict[str, Any]:
    """Publish-to-online latency of ``n`` events over ``transport``; p50/p90/p99/max in ms.

    Uses the workspace of ``settings`` (its online store: SQLite or Redis) and a bus name
    unique to this run (the NATS stream / Redis stream is deleted afterwards). The probe
    ips are removed from the online store at the end (Redis) or set back to 0 (SQLite).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    run_id = uuid.uuid4().hex[:10]
    apply_streaming(settings)
    reader = StreamReader(_open(settings))
    aggregator = StreamAggregator.from_settings(settings, views=STREAM_VIEWS,
                                                flush_interval_s=flush_interval_s)
    bus = open_bus(settings, transport, name=f"freshness-{run_id}", consumer="freshness")
    consumer = _consumer(settings, transport, bus, run_id)
    probes = [(f"probe-{run_id}-{i}",) for i in range(n)]
    lock = threading.Lock()
    published: dict[Key, float] = {}
    seen: dict[Key, float] = {}
    done = threading.Event()

    def watch() -> None:
        # Polls every probe published and not yet seen, in one read per period.
        while not done.is_set():
            with lock:
                todo = [k for k in published if k not in seen]
            if todo:
                rows = reader.rows(IP_VELOCITY, todo)
                now = time.perf_counter()
                with lock:
                    for key, row in zip(todo, rows, strict=True):
                        if row is not None and row[1] >= 1:
                            seen[key] = now
            time.sleep(poll_s)

    watcher = threading.Thread(target=watch, name="freshness-watch", daemon=True)
    try:
        aggregator.start(consumer)
        watcher.start()
        started = time.perf_counter()
        for i, key in enumerate(probes):
            _sleep_until(started + i / rate_hz)
            with lock:
                published[key] = time.perf_counter()
            bus.publish(StreamEvent.at("click", datetime.now(UTC), ip=key[0]))
        bus.flush()
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            with lock:
                if len(seen) == n:
                    break
            time.sleep(0.01)
    finally:
        done.set()
        watcher.join(5)
        aggregator.stop()
        _cleanup(settings, aggregator, probes, [bus, consumer])
    lat = np.array([seen[k] - published[k] for k in probes if k in seen]) * 1000.0
    result: dict[str, Any] = {
        "transport": transport, "online_store": "redis" if settings.profile == "services" else "sqlite",
        "n": n, "seen": int(len(lat)), "rate_hz": rate_hz,
        "flush_interval_ms": flush_interval_s * 1000.0, "poll_ms": poll_s * 1000.0,
        "pushes": aggregator.stats.flushes, "push_ms_mean": round(aggregator.stats.push_ms_mean, 2),
    }
    if len(lat):
        for q in (50, 90, 99):
            result[f"p{q}_ms"] = round(float(np.percentile(lat, q)), 1)
        result["max_ms"] = round(float(lat.max()), 1)
        result["mean_ms"] = round(float(lat.mean()), 1)
    log.info("freshness %s", result)
    return result


def _open(settings: Settings) -> FeatureStore:
    from features.store import open_store

    return open_store(settings)


def _consumer(settings: Settings, transport: str, publisher: EventBus, run_id: str) -> EventBus:
    # In process, producer and consumer share the queue; over a server they are two
    # clients, as in production (the decision service publishes, the aggregator consumes).
    if transport == "inprocess":
        return publisher
    return open_bus(settings, transport, name=f"freshness-{run_id}", consumer="freshness")


def _sleep_until(t: float) -> None:
    delay = t - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def _cleanup(settings: Settings, aggregator: StreamAggregator, probes: Sequence[Key],
             buses: list[EventBus]) -> None:
    try:
        _forget_probes(settings, aggregator, probes)
    finally:
        unique = list({id(b): b for b in buses}.values())
        delete = getattr(unique[0], "delete", None)
        if callable(delete):
            delete()                       # the run's own NATS stream / Redis stream
        for b in unique:
            b.close()


def _forget_probes(settings: Settings, aggregator: StreamAggregator, probes: Sequence[Key]) -> None:
    """Remove the probe ips from the online store: deleted from Redis; on SQLite (a local
    file) pushed back to 0, newer than anything the aggregator wrote."""
    if settings.profile == "services":
        import redis
        from feast.infra.online_stores.redis import _redis_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        from features.store import open_store

        config = open_store(settings).config
        names = [_redis_key(config.project,
                            EntityKey(join_keys=["ip"], entity_values=[Value(string_val=k[0])]),
                            entity_key_serialization_version=config.entity_key_serialization_version)
                 for k in probes]
        with redis.Redis.from_url(settings.redis_url) as client:
            client.delete(*names)
        return
    import pandas as pd

    ts = max(aggregator.clock.now_us(), time.time_ns() // 1000) + 1_000_000
    df = pd.DataFrame({"ip": [k[0] for k in probes],
                       "event_timestamp": pd.to_datetime([ts] * len(probes), unit="us", utc=True),
                       **{f: 0 for f in IP_VELOCITY.feature_names}})
    aggregator.sink.push(IP_VELOCITY, df)


__all__ = ["apply_streaming", "measure_freshness"]

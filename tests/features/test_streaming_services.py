"""Streaming against the real servers: Feast's Redis online store, NATS JetStream and
Redis Streams on 127.0.0.1. Every test uses names of its own (Redis db 15) and cleans up.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from adplatform.config import Settings
from features.streaming import (
    IP_VELOCITY,
    BusError,
    StreamEvent,
    apply_streaming,
    measure_freshness,
    open_bus,
    read_online,
)
from features.streaming.nats_bus import NatsJetStreamBus
from features.streaming.redis_bus import RedisStreamBus

pytestmark = pytest.mark.services

REDIS_TEST_URL = "redis://127.0.0.1:6379/15"
NATS_URL = "nats://127.0.0.1:4222"


def _events(n: int, tag: str) -> list[StreamEvent]:
    now = datetime.now(UTC)
    return [StreamEvent.at("click", now, ip=f"{tag}-{i}", request_id=f"r{i}") for i in range(n)]


def _drain(bus: Any, n: int, timeout_s: float = 5.0) -> list[StreamEvent]:
    out: list[StreamEvent] = []
    deadline = time.perf_counter() + timeout_s
    while len(out) < n and time.perf_counter() < deadline:
        out += bus.poll(100, 0.2)
    return out


def test_feast_redis_store_keeps_only_strictly_newer_rows(tmp_path: Path) -> None:
    """The write-timestamp design rests on this: Feast 0.67's Redis store skips a row whose
    event time is not strictly newer (nanoseconds) than the stored one, and accepts a
    newer one within the same second."""
    from feast.infra.online_stores.redis import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    settings = Settings(home=tmp_path / "ws", profile="services", redis_url=REDIS_TEST_URL)
    store = apply_streaming(settings)
    ip = f"canary-{uuid.uuid4().hex[:8]}"
    base = pd.Timestamp("2026-01-05 10:00:00.250000", tz="UTC")

    def write(ts: pd.Timestamp, clicks: int) -> tuple[int, ...] | None:
        df = pd.DataFrame({"ip": [ip], "event_timestamp": [ts], "ip_requests_5m": [0],
                           "ip_clicks_5m": [clicks]})
        store.write_to_online_store("ip_velocity", df, allow_registry_cache=True)
        return read_online(store, IP_VELOCITY, [(ip,)])[0]

    try:
        assert write(base, 1) == (0, 1)
        assert write(base, 2) == (0, 1), "same instant: skipped"
        assert write(base - pd.Timedelta(microseconds=1), 3) == (0, 1), "older: skipped"
        assert write(base + pd.Timedelta(microseconds=1), 4) == (0, 4), "1 us newer: kept"
        assert write(base + pd.Timedelta(milliseconds=500), 5) == (0, 5), "same second: kept"
    finally:
        import redis

        key = _redis_key(store.config.project,
                         EntityKey(join_keys=["ip"], entity_values=[Value(string_val=ip)]),
                         entity_key_serialization_version=3)
        with redis.Redis.from_url(REDIS_TEST_URL) as client:
            client.delete(key)


# -- transports ---------------------------------------------------------------------------

@pytest.fixture
def nats_name() -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    with NatsJetStreamBus(NATS_URL, name=name) as bus:
        bus.delete()


@pytest.fixture
def redis_stream() -> Iterator[str]:
    name = f"test-events-{uuid.uuid4().hex[:10]}"
    yield name
    with RedisStreamBus(REDIS_TEST_URL, stream=name) as bus:
        bus.delete()


def test_nats_durable_consumer_redelivers_unacked_and_forgets_acked(nats_name: str) -> None:
    sent = _events(30, nats_name)
    with NatsJetStreamBus(NATS_URL, name=nats_name, durable="agg") as producer:
        for e in sent:
            producer.publish(e)
        producer.flush()
    consumer = NatsJetStreamBus(NATS_URL, name=nats_name, durable="agg", ack_wait_s=2.0)
    got = _drain(consumer, 30)
    assert got[:30] == sent
    consumer.close()                           # crashed before acking
    consumer = NatsJetStreamBus(NATS_URL, name=nats_name, durable="agg", ack_wait_s=2.0)
    try:
        # Redelivered after ack_wait (possibly more than once while unacknowledged).
        again = _drain_unique(consumer, 30, timeout_s=8.0)
        assert again == set(sent)
        consumer.ack()
        time.sleep(2.5)
        assert consumer.poll(100, 0.3) == [], "acknowledged events are not redelivered"
    finally:
        consumer.close()


def _drain_unique(bus: Any, n: int, timeout_s: float) -> set[StreamEvent]:
    out: set[StreamEvent] = set()
    deadline = time.perf_counter() + timeout_s
    while len(out) < n and time.perf_counter() < deadline:
        out.update(bus.poll(100, 0.2))
    return out


def test_redis_stream_consumer_rereads_its_pending_then_new(redis_stream: str) -> None:
    sent = _events(30, redis_stream)
    with RedisStreamBus(REDIS_TEST_URL, stream=redis_stream, group="agg", consumer="c1") as bus:
        for e in sent[:20]:
            bus.publish(e)
        assert _drain(bus, 20) == sent[:20]
        assert bus.pending() == 20
    # Restart (same consumer name): the unacknowledged 20 first, then the rest.
    with RedisStreamBus(REDIS_TEST_URL, stream=redis_stream, group="agg", consumer="c1") as bus:
        for e in sent[20:]:
            bus.publish(e)
        assert _drain(bus, 30) == sent
        bus.ack()
        assert bus.pending() == 0
        assert bus.poll(100, 0.1) == []


def test_bad_messages_are_skipped_and_counted(nats_name: str, redis_stream: str) -> None:
    import redis

    good = _events(2, "ok")
    with RedisStreamBus(REDIS_TEST_URL, stream=redis_stream) as bus:
        bus.publish(good[0])
        with redis.Redis.from_url(REDIS_TEST_URL) as client:
            client.xadd(redis_stream, {b"e": b"{not json"})
        bus.publish(good[1])
        assert _drain(bus, 2) == good and bus.bad_messages == 1
        bus.ack()
    with NatsJetStreamBus(NATS_URL, name=nats_name) as bus:
        bus.publish(good[0])
        bus.flush()
        bus._call(bus._js.publish(f"{nats_name}.click", b'{"kind": "nope"}'), 5)
        bus.publish(good[1])
        bus.flush()
        assert _drain(bus, 2) == good and bus.bad_messages == 1
        bus.ack()


def test_unreachable_servers_raise_bus_errors(tmp_path: Path) -> None:
    with pytest.raises(BusError):
        NatsJetStreamBus("nats://127.0.0.1:1", name="nowhere", connect_timeout_s=0.5)
    bus = RedisStreamBus("redis://127.0.0.1:1/15", stream="nowhere", socket_timeout_s=0.5)
    with pytest.raises(BusError):
        bus.publish(_events(1, "x")[0])
    with pytest.raises(BusError):
        bus.poll(10, 0.1)
    bus.close()
    settings = Settings(home=tmp_path / "ws", nats_url="nats://127.0.0.1:1")
    with pytest.raises(BusError):
        open_bus(settings, "nats")


@pytest.mark.parametrize("transport", ["inprocess", "nats", "redis"])
def test_freshness_on_redis_store(transport: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "ws", profile="services", redis_url=REDIS_TEST_URL)
    result = measure_freshness(settings, transport, n=40, rate_hz=100)
    # Every probe reached the online store (within measure_freshness's timeout); how
    # fast is the bench's to say (no wall-clock thresholds in tests).
    assert result["seen"] == 40 and result["online_store"] == "redis"
    assert 0 <= result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"] <= result["max_ms"]

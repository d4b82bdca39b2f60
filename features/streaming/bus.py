"""The event bus: producers publish stream events, one consumer (the aggregator) polls them.

Three transports behind one small protocol:

* ``inprocess`` (default, embedded profile): a bounded queue inside the process;
* ``nats``: a NATS JetStream stream with a durable pull consumer
  (:class:`features.streaming.nats_bus.NatsJetStreamBus`);
* ``redis``: a Redis Stream with a consumer group
  (:class:`features.streaming.redis_bus.RedisStreamBus`).

Consumers acknowledge with :meth:`EventBus.ack` what :meth:`EventBus.poll` returned, after
it is safely applied (the aggregator acks after a successful push): on the durable
transports, unacknowledged events are delivered again after a restart.
"""

from __future__ import annotations

import queue
from typing import TYPE_CHECKING, Literal, Protocol, get_args

from features.streaming.errors import BusError, StreamingError
from features.streaming.events import StreamEvent

if TYPE_CHECKING:
    from adplatform.config import Settings

Transport = Literal["inprocess", "nats", "redis"]
TRANSPORTS: tuple[str, ...] = get_args(Transport)

DEFAULT_NAME = "adplatform-events"
DEFAULT_CONSUMER = "stream-aggregator"


class EventBus(Protocol):
    def publish(self, event: StreamEvent) -> None:
        """Hand one event to the transport (may return before the server stored it)."""
        ...

    def flush(self, timeout_s: float = 5.0) -> None:
        """Block until every event published so far is stored; raise BusError otherwise."""
        ...

    def poll(self, max_events: int, timeout_s: float) -> list[StreamEvent]:
        """Up to ``max_events`` events, waiting at most ``timeout_s`` for the first one."""
        ...

    def ack(self) -> None:
        """Acknowledge every event :meth:`poll` has returned so far."""
        ...

    def close(self) -> None: ...


class InProcessBus:
    """A bounded in-memory queue; publish from any thread, poll from one."""

    def __init__(self, maxsize: int = 1_000_000, put_timeout_s: float = 1.0) -> None:
        self._queue: queue.Queue[StreamEvent] = queue.Queue(maxsize)
        self._put_timeout = put_timeout_s

    def publish(self, event: StreamEvent) -> None:
        try:
            self._queue.put(event, timeout=self._put_timeout)
        except queue.Full:
            raise BusError(f"in-process event queue full ({self._queue.maxsize} events): "
                           "the aggregator is not keeping up or not running") from None

    def flush(self, timeout_s: float = 5.0) -> None:
        return None   # in memory as soon as published

    def poll(self, max_events: int, timeout_s: float) -> list[StreamEvent]:
        try:
            first = self._queue.get(timeout=timeout_s) if timeout_s > 0 else self._queue.get_nowait()
        except queue.Empty:
            return []
        out = [first]
        while len(out) < max_events:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return out

    def ack(self) -> None:
        return None

    def close(self) -> None:
        return None

    def __len__(self) -> int:
        return self._queue.qsize()


def open_bus(settings: Settings, transport: str = "inprocess", *, name: str = DEFAULT_NAME,
             consumer: str = DEFAULT_CONSUMER) -> EventBus:
    """The bus of ``transport``; ``name`` is the NATS stream / subject prefix or the Redis
    stream key, ``consumer`` the durable consumer (group) name."""
    if transport == "inprocess":
        return InProcessBus()
    if transport == "nats":
        from features.streaming.nats_bus import NatsJetStreamBus

        return NatsJetStreamBus(settings.nats_url, name=name, durable=consumer)
    if transport == "redis":
        from features.streaming.redis_bus import RedisStreamBus

        return RedisStreamBus(settings.redis_url, stream=name, group=consumer)
    raise StreamingError(f"unknown transport {transport!r}; known: {', '.join(TRANSPORTS)}")


__all__ = ["DEFAULT_CONSUMER", "DEFAULT_NAME", "TRANSPORTS", "EventBus", "InProcessBus",
           "Transport", "open_bus"]

"""Event bus over a Redis Stream: XADD to publish, a consumer group to consume.

Each event is one stream entry with a single field ``e`` (the event's JSON). The stream
is capped at about ``maxlen`` entries. The consumer reads with XREADGROUP and
acknowledges with XACK; after a restart it first re-reads its own pending
(delivered, unacknowledged) entries, then new ones. A new group starts at the
beginning of the retained stream.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import redis

from features.streaming.errors import BusError, StreamingError
from features.streaming.events import StreamEvent

log = logging.getLogger(__name__)

_FIELD = b"e"


class RedisStreamBus:
    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *,
                 stream: str = "adplatform-events", group: str = "stream-aggregator",
                 consumer: str | None = None, maxlen: int = 1_000_000,
                 socket_timeout_s: float = 5.0) -> None:
        self.stream, self.group = stream, group
        self.consumer = consumer or f"{socket.gethostname()}-aggregator"
        self.maxlen = maxlen
        self.bad_messages = 0
        self._timeout = socket_timeout_s
        self._client: redis.Redis = redis.Redis.from_url(
            url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s)
        self._reader: redis.Redis | None = None
        self._to_ack: list[bytes] = []
        self._backlog: bytes | str | None = "0"   # re-read our own pending entries first

    # -- producer ------------------------------------------------------------------------

    def publish(self, event: StreamEvent) -> None:
        try:
            self._client.xadd(self.stream, {_FIELD: event.to_bytes()}, maxlen=self.maxlen,
                              approximate=True)
        except redis.RedisError as exc:
            raise BusError(f"XADD to {self.stream} failed: {exc}") from exc

    def flush(self, timeout_s: float = 5.0) -> None:
        return None   # XADD returns once Redis has the entry

    # -- consumer ------------------------------------------------------------------------

    def _ensure_group(self) -> redis.Redis:
        if self._reader is None:
            # A connection of its own: the blocking XREADGROUP holds it while waiting.
            pool = self._client.connection_pool
            kwargs = dict(pool.connection_kwargs)
            kwargs["socket_timeout"] = None      # XREADGROUP BLOCK bounds the wait
            reader = redis.Redis(connection_pool=redis.ConnectionPool(
                connection_class=pool.connection_class, **kwargs))
            try:
                reader.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._reader = reader
        return self._reader

    def poll(self, max_events: int, timeout_s: float) -> list[StreamEvent]:
        try:
            reader = self._ensure_group()
            entries: list[Any] = []
            if self._backlog is not None:
                # Pending entries after the last one re-read (an explicit id reads history).
                reply: Any = reader.xreadgroup(self.group, self.consumer,
                                               {self.stream: self._backlog}, count=max_events)
                entries = reply[0][1] if reply else []
                self._backlog = entries[-1][0] if entries else None
            if self._backlog is None:
                block_ms = max(1, int(timeout_s * 1000))
                reply = reader.xreadgroup(self.group, self.consumer, {self.stream: ">"},
                                          count=max_events, block=block_ms)
                entries = reply[0][1] if reply else []
        except redis.RedisError as exc:
            raise BusError(f"XREADGROUP on {self.stream} failed: {exc}") from exc
        out = []
        for entry_id, fields in entries:
            self._to_ack.append(entry_id)
            try:
                out.append(StreamEvent.from_bytes(fields[_FIELD]))
            except (StreamingError, KeyError) as exc:
                self.bad_messages += 1
                log.warning("skipping a bad event %s on %s: %s", entry_id, self.stream, exc)
        return out

    def ack(self) -> None:
        ids, self._to_ack = self._to_ack, []
        if not ids:
            return
        try:
            self._client.xack(self.stream, self.group, *ids)
        except redis.RedisError as exc:
            self._to_ack = ids + self._to_ack
            raise BusError(f"XACK on {self.stream} failed: {exc}") from exc

    def pending(self) -> int:
        """Entries delivered to the group and not yet acknowledged."""
        info: Any = self._client.xpending(self.stream, self.group)
        return int(info["pending"])

    # -- lifecycle -----------------------------------------------------------------------

    def delete(self) -> None:
        """Delete the stream key (entries and groups). For tests and teardown."""
        self._client.delete(self.stream)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader.connection_pool.disconnect()
            self._reader = None
        self._client.close()

    def __enter__(self) -> RedisStreamBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["RedisStreamBus"]

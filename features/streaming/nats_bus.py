"""Event bus over NATS JetStream: one stream, a durable pull consumer, ack-all.

Events go to subject ``<name>.<kind>`` of stream ``<name>`` (file storage, kept
``max_age_s``). The consumer is durable, so a restarted aggregator resumes after the
last acknowledged event; with ``AckPolicy.ALL`` one ack covers a whole flushed batch.
Delivered but unacknowledged events are delivered again ``ack_wait_s`` after delivery.

nats-py is asyncio; this class runs a private event loop in a daemon thread and offers a
blocking, thread-safe API. ``publish`` does not wait for JetStream's ack (the decision
path must not): the acks are collected, and :meth:`flush` waits for them and raises
:class:`BusError` for any publish the server did not confirm.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import re
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from features.streaming.errors import BusError, StreamingError
from features.streaming.events import StreamEvent

log = logging.getLogger(__name__)

T = TypeVar("T")
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_MIN_FETCH_S = 0.01


class NatsJetStreamBus:
    def __init__(self, url: str = "nats://127.0.0.1:4222", *, name: str = "adplatform-events",
                 durable: str = "stream-aggregator", max_age_s: float = 2 * 86_400,
                 ack_wait_s: float = 30.0, max_inflight: int = 10_000,
                 connect_timeout_s: float = 2.0) -> None:
        for what, value in (("stream name", name), ("durable name", durable)):
            if not _NAME.match(value):
                raise StreamingError(f"NATS {what} {value!r}: use letters, digits, '-' and '_'")
        self.url, self.name, self.durable = url, name, durable
        self.ack_wait_s = ack_wait_s
        self.bad_messages = 0
        self._inflight = threading.BoundedSemaphore(max_inflight)
        self._lock = threading.Lock()
        self._pending: set[cf.Future[Any]] = set()
        self._errors: list[BaseException] = []
        self._to_ack: Any = None
        self._sub: Any = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"nats-bus-{name}",
                                        daemon=True)
        self._thread.start()
        try:
            self._call(self._connect(max_age_s, connect_timeout_s), connect_timeout_s + 5)
        except BaseException:
            self._stop_loop()
            raise

    # -- loop plumbing -------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        done, _ = cf.wait([fut], timeout=timeout_s)
        if not done:
            fut.cancel()
            raise BusError(f"NATS call did not complete within {timeout_s:.1f}s")
        return fut.result()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    async def _connect(self, max_age_s: float, timeout_s: float) -> None:
        import nats
        from nats.js.api import StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        # Reconnect forever once connected (a server restart must not stop the stream),
        # but give up on the first connection after the timeout (with unlimited attempts
        # nats.connect itself would never return).
        try:
            self._nc = await asyncio.wait_for(
                nats.connect(self.url, connect_timeout=timeout_s, max_reconnect_attempts=-1,
                             allow_reconnect=True), timeout_s + 0.5)
        except Exception as exc:
            raise BusError(f"cannot connect to NATS at {self.url}: {exc!r}") from exc
        self._js = self._nc.jetstream()
        try:
            await self._js.stream_info(self.name)
        except NotFoundError:
            await self._js.add_stream(StreamConfig(
                name=self.name, subjects=[f"{self.name}.>"], max_age=max_age_s,
                storage=StorageType.FILE))

    # -- producer ------------------------------------------------------------------------

    def publish(self, event: StreamEvent) -> None:
        if not self._inflight.acquire(timeout=5.0):
            raise BusError("NATS publish: too many unacknowledged publishes (server slow or down)")
        coro = self._js.publish(f"{self.name}.{event.kind}", event.to_bytes(), stream=self.name)
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        with self._lock:
            self._pending.add(fut)
        fut.add_done_callback(self._published)

    def _published(self, fut: cf.Future[Any]) -> None:
        self._inflight.release()
        with self._lock:
            self._pending.discard(fut)
            exc = None if fut.cancelled() else fut.exception()
            if exc is not None:
                self._errors.append(exc)
        if exc is not None:
            log.error("NATS publish to %s not acknowledged: %s", self.name, exc)

    def flush(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            pending = list(self._pending)
        _, not_done = cf.wait(pending, timeout=timeout_s)
        with self._lock:
            errors, self._errors = self._errors, []
        if not_done:
            raise BusError(f"{len(not_done)} NATS publishes unacknowledged after {timeout_s}s")
        if errors:
            raise BusError(f"{len(errors)} NATS publishes failed; first: {errors[0]}") from errors[0]

    # -- consumer ------------------------------------------------------------------------

    async def _fetch(self, n: int, timeout_s: float) -> list[Any]:
        from nats.js.api import AckPolicy, ConsumerConfig

        if self._sub is None:
            self._sub = await self._js.pull_subscribe(
                f"{self.name}.>", durable=self.durable, stream=self.name,
                config=ConsumerConfig(ack_policy=AckPolicy.ALL, ack_wait=self.ack_wait_s,
                                      max_ack_pending=1_000_000, max_waiting=16))
        try:
            msgs: list[Any] = await self._sub.fetch(batch=n, timeout=timeout_s)
        except TimeoutError:
            # nats.errors.TimeoutError, or the bare asyncio.TimeoutError fetch raises when
            # its deadline passes between its two requests: no messages this time.
            return []
        return msgs

    def poll(self, max_events: int, timeout_s: float) -> list[StreamEvent]:
        timeout_s = max(timeout_s, _MIN_FETCH_S)
        msgs = self._call(self._fetch(max_events, timeout_s), timeout_s + 10)
        if not msgs:
            return []
        self._to_ack = msgs[-1]
        out = []
        for msg in msgs:
            try:
                out.append(StreamEvent.from_bytes(msg.data))
            except StreamingError as exc:
                self.bad_messages += 1
                log.warning("skipping a bad event on %s (seq %s): %s", msg.subject,
                            msg.metadata.sequence.stream, exc)
        return out

    def ack(self) -> None:
        msg, self._to_ack = self._to_ack, None
        if msg is not None:
            self._call(msg.ack(), 10)     # AckPolicy.ALL: acks every earlier message too

    # -- lifecycle -----------------------------------------------------------------------

    def delete(self) -> None:
        """Delete the stream (and its consumers). For tests and teardown."""
        self._call(self._js.delete_stream(self.name), 10)

    def close(self) -> None:
        if not self._loop.is_running():
            return
        try:
            self.flush()
        finally:
            try:
                self._call(self._nc.close(), 10)
            finally:
                self._stop_loop()

    def __enter__(self) -> NatsJetStreamBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["NatsJetStreamBus"]

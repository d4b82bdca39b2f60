"""The decision log on NATS JetStream (services profile): :class:`NatsDecisionSink`.

Each :class:`~decisioning.decision_log.DecisionRecord` is one JetStream message on
``subject`` (JSON, the ``decisions`` columns, ``ts`` in ISO 8601) with the header
``Nats-Msg-Id: <request_id>:<imp_id>``, so the stream's duplicate window drops a record
published twice (a retry after a lost ack, a replay): the log keeps one record per
decision. The stream is created if missing (``duplicate_window_s``, file storage).

The request path only appends to an in-memory queue; a background thread running its
own asyncio loop publishes in batches (``publish_async``, up to ``batch`` acks in
flight), retries a message whose ack failed or timed out (same Msg-Id: safe), and
after ``max_attempts`` hands it to ``spill`` (e.g. a ParquetDecisionSink) or counts it
in ``lost``. A full queue (``max_pending``, NATS down for long) spills the same way.

Shutdown: :meth:`close` (the app lifespan calls it on SIGTERM) publishes everything
queued and waits for the acks (``close_timeout_s``); what is still unacked then goes to
``spill``. **What a SIGKILL loses**: the records queued or awaiting their ack — at most
``max_pending`` records; in steady state the last few milliseconds of decisions (one
batch in flight). Records acked by JetStream are on the server's disk.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Iterable
from typing import Any

import orjson

from decisioning.decision_log import DECISION_COLUMNS, DecisionRecord, DecisionSink
from decisioning.errors import DecisionError

log = logging.getLogger(__name__)


def record_payload(r: DecisionRecord) -> bytes:
    return orjson.dumps({c: getattr(r, c) for c in DECISION_COLUMNS})


class NatsDecisionSink:
    """:class:`~decisioning.decision_log.DecisionSink` publishing to JetStream."""

    def __init__(self, url: str, *, subject: str = "adplatform.decisions",
                 stream: str = "ADPLATFORM_DECISIONS", duplicate_window_s: float = 120.0,
                 max_pending: int = 200_000, batch: int = 512, ack_timeout_s: float = 5.0,
                 max_attempts: int = 5, close_timeout_s: float = 15.0,
                 spill: DecisionSink | None = None, connect_timeout_s: float = 2.0) -> None:
        self.url, self.subject, self.stream = url, subject, stream
        self.duplicate_window_s = duplicate_window_s
        self.max_pending, self.batch = max_pending, batch
        self.ack_timeout_s, self.max_attempts = ack_timeout_s, max_attempts
        self.close_timeout_s, self.connect_timeout_s = close_timeout_s, connect_timeout_s
        self.spill = spill
        self._queue: deque[tuple[DecisionRecord, int]] = deque()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._inflight = 0
        self._closing = False
        self._closed = False
        self._signalled = False
        self.published = 0
        self.duplicates = 0
        self.spilled = 0
        self.lost = 0
        self.connected = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._main_task: asyncio.Task[None] | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, name="nats-decision-log",
                                        daemon=True)
        self._thread.start()
        self._started.wait(5.0)

    # ------------------------------------------------------------------ request path

    @property
    def pending(self) -> int:
        return len(self._queue) + self._inflight

    def extend(self, records: Iterable[DecisionRecord]) -> None:
        overflow: list[DecisionRecord] = []
        with self._lock:
            if self._closing:
                raise DecisionError("the decision sink is closed")
            for r in records:
                if len(self._queue) >= self.max_pending:
                    overflow.append(r)
                else:
                    self._queue.append((r, 0))
            signal = not self._signalled
            self._signalled = True
        if overflow:
            self._give_up(overflow, "queue full")
        if signal:
            self._signal()

    def _signal(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:            # the loop stopped between the check and the call
                pass

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every queued record is acked (or given up); raises on timeout."""
        self._signal()
        with self._idle:
            if not self._idle.wait_for(lambda: self.pending == 0,
                                       timeout=timeout_s or self.close_timeout_s):
                raise DecisionError(f"NATS decision log: {self.pending} records not acked")

    def close(self) -> None:
        """Publish what is queued, wait for acks, spill the rest, stop. Idempotent."""
        if self._closed:
            return
        with self._lock:
            self._closing = True
        self._signal()
        self._thread.join(self.close_timeout_s)
        if self._thread.is_alive():         # still connecting, or acks never came: stop it
            loop, task = self._loop, self._main_task
            if loop is not None and task is not None and not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(task.cancel)
                except RuntimeError:
                    pass
            self._thread.join(5.0)
        with self._lock:
            left = [r for r, _ in self._queue]
            self._queue.clear()
        if left:
            self._give_up(left, "not acked before close")
        if self.spill is not None:
            self.spill.close()
        self._closed = True

    def _give_up(self, records: list[DecisionRecord], why: str) -> None:
        if self.spill is not None:
            self.spill.extend(records)
            self.spilled += len(records)
            log.warning("NATS decision log: %d records spilled (%s)", len(records), why)
        else:
            self.lost += len(records)
            log.error("NATS decision log: %d records lost (%s)", len(records), why)

    # ------------------------------------------------------------------ publisher

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._main_task = loop.create_task(self._main())
            loop.run_until_complete(self._main_task)
        except asyncio.CancelledError:
            log.warning("NATS decision log publisher cancelled at close")
        except Exception:  # noqa: BLE001 - logged; close() spills what is left
            log.exception("NATS decision log publisher stopped")
        finally:
            self._started.set()
            loop.close()
            with self._idle:
                self._inflight = 0
                self._idle.notify_all()

    async def _connect(self) -> Any:
        import nats

        async def on_error(exc: Exception) -> None:
            log.debug("NATS decision log: %s", exc)

        while True:
            try:
                # Reconnects are unlimited once connected; a first connection is retried
                # here, so a close() while the server is down ends the thread promptly.
                nc = await asyncio.wait_for(
                    nats.connect(self.url, connect_timeout=self.connect_timeout_s,
                                 max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                                 allow_reconnect=True, error_cb=on_error),
                    timeout=self.connect_timeout_s * 3)
                js = nc.jetstream(publish_async_max_pending=self.batch * 2)
                await self._ensure_stream(js)
                self.connected = True
                return nc, js
            except Exception as exc:  # noqa: BLE001 - retried until closing; logged
                log.warning("NATS decision log: cannot connect to %s: %s", self.url, exc)
                if self._closing:
                    return None, None
                await asyncio.sleep(0.5)

    async def _ensure_stream(self, js: Any) -> None:
        from nats.js.api import StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        try:
            await js.stream_info(self.stream)
        except NotFoundError:
            await js.add_stream(StreamConfig(name=self.stream, subjects=[self.subject],
                                             duplicate_window=self.duplicate_window_s,
                                             storage=StorageType.FILE))

    async def _main(self) -> None:
        self._wake = asyncio.Event()
        self._started.set()
        nc, js = await self._connect()
        if js is None:
            return
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                with self._lock:
                    self._signalled = False
                while await self._publish_some(js):
                    pass
                if self._closing and not self._queue:
                    return
        finally:
            try:
                await nc.close()
            except Exception:  # noqa: BLE001 - closing anyway
                log.debug("NATS close failed", exc_info=True)

    async def _publish_some(self, js: Any) -> bool:
        with self._lock:
            take = [self._queue.popleft() for _ in range(min(self.batch, len(self._queue)))]
            self._inflight = len(take)
        if not take:
            return False
        futures = []
        failed: list[tuple[DecisionRecord, int]] = []
        for r, attempts in take:
            try:
                fut = await js.publish_async(
                    self.subject, record_payload(r), wait_stall=self.ack_timeout_s,
                    headers={"Nats-Msg-Id": f"{r.request_id}:{r.imp_id}"})
                futures.append(((r, attempts), fut))
            except Exception:  # noqa: BLE001 - retried below with the same Msg-Id
                failed.append((r, attempts + 1))
        for item, fut in futures:
            try:
                ack = await asyncio.wait_for(fut, self.ack_timeout_s)
                self.published += 1
                self.duplicates += bool(getattr(ack, "duplicate", False))
            except Exception:  # noqa: BLE001 - retried with the same Msg-Id (dedup)
                failed.append((item[0], item[1] + 1))
        retry = [(r, a) for r, a in failed if a < self.max_attempts]
        dead = [r for r, a in failed if a >= self.max_attempts]
        with self._idle:
            self._queue.extendleft(reversed(retry))
            self._inflight = 0
            if not self._queue:
                self._idle.notify_all()
        if dead:
            self._give_up(dead, f"{self.max_attempts} publish attempts failed")
        if retry:
            await asyncio.sleep(0.2)
        return True


async def read_stream(url: str, stream: str, subject: str, *,
                      timeout_s: float = 2.0) -> list[dict[str, Any]]:
    """Every message of ``subject`` in ``stream`` (an ephemeral ordered consumer): tests
    and tools. Only that subject's messages are counted, so a stream that also carries
    other subjects (a wildcard subject sums its matches) does not wait for messages
    the consumer never receives."""
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream, subjects_filter=subject)
        total = sum((info.state.subjects or {}).values())
        if total == 0:
            return []
        sub = await js.subscribe(subject, stream=stream, ordered_consumer=True)
        out: list[dict[str, Any]] = []
        while len(out) < total:
            msg = await sub.next_msg(timeout=timeout_s)
            out.append(orjson.loads(msg.data))
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


__all__ = ["NatsDecisionSink", "read_stream", "record_payload"]

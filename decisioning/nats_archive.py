"""Copy the JetStream decision log into the parquet decision log: :func:`archive_decisions`.

In the ``services`` profile the decision service logs to NATS JetStream
(:class:`~decisioning.nats_sink.NatsDecisionSink`), while the reports
(:func:`mlops.reports.events.load_decisions` with ``source="live"`` or ``"all"``) and
training read the parquet log under ``workspace.decisions``. The archiver closes that
gap: a durable pull consumer (``durable``, default ``adplatform-archiver``, filtered on
``settings.nats_subject`` of ``settings.nats_stream``) reads what it has not archived
yet, and writes it as parts of the same table, in the same day partitions, with the
same schema (:data:`adplatform.eventlog.SCHEMAS` ``["decisions"]``), so every reader
takes them unchanged. Run it as often as you like (cron): a run stops once it has passed
the end the stream had when it started (a live service keeps appending; the next run
takes the rest), once nothing new came for ``idle_timeout_s``, or after ``max_messages``.

Guarantees:

* **At least once into parquet.** A message is acked only after its part's files are
  on disk: written under a staging folder, fsynced, renamed into
  ``decisions/date=YYYY-MM-DD/`` (atomic) and the folder fsynced, so a reader sees each
  file whole or not at all. A crash (even SIGKILL) or an error between the write and
  the ack leaves the messages unacked, and JetStream delivers them again once the
  consumer's ack wait has passed (``ack_wait_s`` when the durable is created, 300 s by
  default): the next run writes them a second time. That duplicate is harmless: every
  reader keeps one row per ``(request_id, imp_id)`` (``load_decisions`` drops
  duplicates of its key), as it must anyway for a record the service both published
  and spilled. What the stream discards before a run (its limits, a max age) is not
  archived: run the archiver more often than that.
* **Never overwrites a file.** The live service writes its own (spill) parts under the
  same folder as ``part-NNNNN.parquet`` (:func:`decisioning.buffered.next_part` chooses
  the numbers, once at start-up); archived parts are named
  ``nats-<first seq>-<last seq>-<random>.parquet`` (stream sequences), which neither
  matches that pattern nor repeats, whatever runs beside it.
* **Bad messages are not archived and do not block.** A message that is not a decision
  record is terminated (``term``: JetStream never redelivers it to this consumer; it
  stays in the stream), logged, and its stream sequence listed in
  :attr:`ArchiveResult.rejected`.
* **Confirmed acks.** The acks of a part are sent in order and the last one waits for
  the server's confirmation (a double ack); the server handles one consumer's acks in
  order, so when it returns the whole part is acked.

``ts`` travels as ISO 8601 (orjson; an offset, or none for a naive time, which the log
takes as UTC) and is decoded back to the UTC microsecond timestamp of the schema.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa

from adplatform.eventlog import SCHEMAS, write_events
from decisioning.decision_log import DECISION_COLUMNS, DecisionRecord, records_table
from decisioning.errors import DecisionError

if TYPE_CHECKING:
    from adplatform.config import Settings

log = logging.getLogger(__name__)

TABLE = "decisions"
DEFAULT_DURABLE = "adplatform-archiver"
#: Where a part is written before it is renamed into its day folder; under the log's
#: root but outside ``decisions/``, so no reader ever globs a half-written part.
STAGING = ".archive-staging"
#: A staging folder older than this is left over by a killed run (a live run renames
#: its part within seconds); a later run removes it.
STALE_STAGING_S = 3600.0
#: Messages asked for per fetch: one request, one round trip.
FETCH_BATCH = 1000
#: How long to wait for more messages while a part is buffered before writing it.
FLUSH_WAIT_S = 0.5
PART_PREFIX = "nats-"
CONNECT_TIMEOUT_S = 2.0
#: How long the server has to confirm a part's acks (or terms).
ACK_CONFIRM_S = 10.0
MAX_REJECTED_LISTED = 100


class ArchiveError(DecisionError):
    """NATS unreachable, the stream missing, a fetch or an ack failed; the message says
    which and what to check. Parts written before it stay (their messages are
    delivered again: harmless, see the module docstring)."""


@dataclass(frozen=True)
class ArchivedPart:
    """A part durably written, its messages not yet acked (what ``on_part`` gets)."""

    files: tuple[Path, ...]
    records: int
    first_seq: int
    last_seq: int
    days: dict[str, int]


@dataclass
class ArchiveResult:
    """What one run of :func:`archive_decisions` did."""

    stream: str
    durable: str
    messages: int = 0                 # acked or terminated
    records: int = 0                  # rows written
    redelivered: int = 0              # of the records: delivered before (not acked then)
    days: dict[str, int] = field(default_factory=dict)      # rows per YYYY-MM-DD
    files: list[Path] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)      # stream seqs (first 100)
    rejected_count: int = 0
    pending: int | None = None        # left for this consumer when the run stopped


# --------------------------------------------------------------------------- decoding

_SCHEMA = SCHEMAS[TABLE]
_REQUIRED_STR = ("request_id", "imp_id")


def _check(name: str, value: Any, kind: pa.DataType) -> None:
    if pa.types.is_string(kind):
        ok = isinstance(value, str) or (value is None and name not in _REQUIRED_STR)
    elif pa.types.is_boolean(kind):
        ok = isinstance(value, bool)
    elif pa.types.is_floating(kind):
        # orjson writes NaN and ±inf as null, the part writer stores null: both fine.
        ok = value is None or (isinstance(value, int | float) and not isinstance(value, bool))
    else:
        ok = False
    if not ok:
        raise ValueError(f"{name}: expected {kind}, got {value!r}")


def parse_ts(value: Any) -> datetime:
    """``ts`` as :func:`decisioning.nats_sink.record_payload` wrote it, as an aware UTC
    datetime; a time without offset is UTC (as Arrow and the part writer take it)."""
    if not isinstance(value, str):
        raise ValueError(f"ts: expected an ISO 8601 string, got {value!r}")
    ts = datetime.fromisoformat(value)
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def decode_record(data: bytes) -> DecisionRecord:
    """One JetStream message back into its :class:`DecisionRecord`; :class:`ValueError`
    when it is not one (not JSON, a column missing or extra, a value of the wrong type)."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"expected a JSON object, got {type(doc).__name__}")
    missing = [c for c in DECISION_COLUMNS if c not in doc]
    extra = sorted(set(doc) - set(DECISION_COLUMNS))
    if missing or extra:
        # An extra column is a newer schema: archiving without it would lose it silently.
        raise ValueError(f"columns differ from the decisions schema: missing {missing}, "
                         f"extra {extra}")
    values: dict[str, Any] = {"ts": parse_ts(doc["ts"])}
    for f in _SCHEMA:
        if f.name != "ts":
            _check(f.name, doc[f.name], f.type)
            values[f.name] = doc[f.name]
    return DecisionRecord(**values)


# --------------------------------------------------------------------------- parts


def _fsync(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_part(root: Path, records: Sequence[DecisionRecord], name: str) -> list[Path]:
    """Write ``records`` as ``root/decisions/date=…/<name>.parquet`` (one file per day),
    durably: staged, fsynced, renamed into place, folder fsynced. Returns the files."""
    staging = root / STAGING / uuid.uuid4().hex
    try:
        staged = write_events(staging, TABLE, records_table(records))
        out: list[Path] = []
        base = root / TABLE
        for f in staged:
            _fsync(f)
            day_dir = base / f.parent.name
            new_dir = not day_dir.exists()
            day_dir.mkdir(parents=True, exist_ok=True)
            target = day_dir / f"{name}.parquet"
            os.replace(f, target)
            _fsync(day_dir, directory=True)
            if new_dir:                     # the new day folder's entry must survive too
                _fsync(base, directory=True)
            out.append(target)
        return out
    finally:
        _remove(staging)


def _remove(folder: Path) -> None:
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        pass                             # nothing was staged: write_events wrote no file
    except OSError as exc:               # a leftover a later run removes; the part is fine
        log.warning("cannot remove staging folder %s: %s", folder, exc)


def _remove_stale_staging(root: Path) -> None:
    folder = root / STAGING
    if not folder.exists():
        return
    cutoff = time.time() - STALE_STAGING_S
    for d in folder.iterdir():
        if d.stat().st_mtime < cutoff:
            log.info("removing %s, left by a killed archiver run", d)
            _remove(d)


# --------------------------------------------------------------------------- consumer


async def _connect(url: str, timeout_s: float) -> Any:
    import nats

    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)
        log.debug("NATS archiver: %s", exc)

    try:
        # max_reconnect_attempts=0 would retry a first connection forever in nats-py:
        # a few tries, then a clear error, is what a cron job needs.
        return await asyncio.wait_for(
            nats.connect(url, connect_timeout=timeout_s, max_reconnect_attempts=3,
                         reconnect_time_wait=0.5, error_cb=on_error),
            timeout=timeout_s * 4 + 2)
    except Exception as exc:  # noqa: BLE001 - every failure to connect is one error here
        # nats-py ends with NoServersError; the socket's own error says more.
        why = errors[-1] if errors else exc
        raise ArchiveError(f"cannot connect to NATS at {url}: {why} "
                           f"({type(why).__name__}); is nats-server running (with -js)?"
                           ) from exc


class _Archiver:
    def __init__(self, settings: Settings, *, durable: str, part_size: int,
                 idle_timeout_s: float, max_messages: int | None, ack_wait_s: float,
                 on_part: Callable[[ArchivedPart], None] | None) -> None:
        self.url, self.stream = settings.nats_url, settings.nats_stream
        self.subject = settings.nats_subject
        self.root = settings.workspace.decisions
        self.durable, self.part_size = durable, part_size
        self.idle_timeout_s, self.max_messages = idle_timeout_s, max_messages
        self.ack_wait_s, self.on_part = ack_wait_s, on_part
        self.result = ArchiveResult(stream=self.stream, durable=durable)
        self._nc: Any = None
        self.end_seq = 0                  # the stream's last sequence when the run started

    async def run(self) -> ArchiveResult:
        from nats.errors import Error as NatsError
        from nats.js.errors import Error as JetStreamError

        nc = self._nc = await _connect(self.url, CONNECT_TIMEOUT_S)
        try:
            try:
                sub = await self._subscribe(nc.jetstream())
                await self._consume(sub)
                info = await sub.consumer_info()
                self.result.pending = int(info.num_pending)
            except (NatsError, JetStreamError, TimeoutError, ConnectionError) as exc:
                raise ArchiveError(f"NATS archiver ({self.stream}, consumer {self.durable}): "
                                   f"{exc!r}") from exc
        finally:
            await nc.close()
        return self.result

    async def _subscribe(self, js: Any) -> Any:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import NotFoundError

        try:
            info = await js.stream_info(self.stream)
        except NotFoundError:
            raise ArchiveError(
                f"no JetStream stream {self.stream!r} on {self.url}: the decision service "
                f"creates it with its first decision in the services profile "
                f"(ADPLATFORM_PROFILE=services); check ADPLATFORM_NATS_STREAM") from None
        self.end_seq = int(info.state.last_seq)
        # Used only when the durable is created; an existing one keeps its config.
        config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                                ack_wait=self.ack_wait_s,
                                max_ack_pending=self.part_size + FETCH_BATCH)
        return await js.pull_subscribe(self.subject, durable=self.durable, stream=self.stream,
                                       config=config)

    async def _consume(self, sub: Any) -> None:
        buffered: list[Any] = []
        fetched = 0
        while self.max_messages is None or fetched < self.max_messages:
            want = min(FETCH_BATCH, self.part_size - len(buffered))
            if self.max_messages is not None:
                want = min(want, self.max_messages - fetched)
            # With a part buffered, a short wait: the stream may just be slower than us,
            # or the consumer's max_ack_pending reached; either way, write what we have.
            wait = FLUSH_WAIT_S if buffered else self.idle_timeout_s
            try:
                msgs = await sub.fetch(want, timeout=wait)
            except TimeoutError:
                # Nothing came within ``wait``. nats-py raises its own TimeoutError, or
                # the builtin one when the deadline ran out between its no-wait probe and
                # the lingering pull (seen on a loaded machine); the first subclasses
                # the second, so one clause takes both.
                msgs = []
            fetched += len(msgs)
            buffered.extend(msgs)
            if any(m.metadata.sequence.stream > self.end_seq for m in msgs):
                break                           # past the end the stream had at the start
            if buffered and (not msgs or len(buffered) >= self.part_size):
                await self._commit(buffered)
                buffered = []
            elif not msgs:
                break                           # idle for idle_timeout_s: caught up
        if buffered:
            await self._commit(buffered)

    async def _commit(self, msgs: list[Any]) -> None:
        """Write the records of ``msgs`` durably, then ack them (terminate bad ones)."""
        good: list[Any] = []
        records: list[DecisionRecord] = []
        bad: list[Any] = []
        for m in msgs:
            try:
                records.append(decode_record(m.data))
                good.append(m)
            except ValueError as exc:
                log.error("NATS archiver: stream %s seq %d is not a decision record (%s); "
                          "terminated, not archived", self.stream, m.metadata.sequence.stream,
                          exc)
                bad.append(m)
        part = await self._write(good, records) if records else None
        for m in bad:
            await m.term()
        for m in good[:-1]:
            await m.ack()
        if good:
            await good[-1].ack_sync(timeout=ACK_CONFIRM_S)
        else:
            await self._nc.flush(timeout=ACK_CONFIRM_S)    # the terms reached the server
        r = self.result
        r.messages += len(msgs)
        if part is not None:
            r.records += part.records
            r.redelivered += sum(m.metadata.num_delivered > 1 for m in good)
            r.files.extend(part.files)
            for day, n in part.days.items():
                r.days[day] = r.days.get(day, 0) + n
        r.rejected_count += len(bad)
        room = max(MAX_REJECTED_LISTED - len(r.rejected), 0)
        r.rejected.extend(m.metadata.sequence.stream for m in bad[:room])

    async def _write(self, msgs: list[Any], records: list[DecisionRecord]) -> ArchivedPart:
        seqs = [m.metadata.sequence.stream for m in msgs]
        first, last = min(seqs), max(seqs)
        name = f"{PART_PREFIX}{first:012d}-{last:012d}-{uuid.uuid4().hex[:8]}"
        # Disk work off the event loop: the connection keeps answering the server's pings.
        files = await asyncio.to_thread(write_part, self.root, records, name)
        days = Counter(r.ts.strftime("%Y-%m-%d") for r in records)
        part = ArchivedPart(tuple(files), len(records), first, last, dict(sorted(days.items())))
        log.info("NATS archiver: %d records, seq %d..%d -> %s", len(records), first, last,
                 ", ".join(str(f) for f in files))
        if self.on_part is not None:
            self.on_part(part)
        return part


def archive_decisions(settings: Settings, *, durable: str = DEFAULT_DURABLE,
                      part_size: int = 50_000, idle_timeout_s: float = 2.0,
                      max_messages: int | None = None, ack_wait_s: float = 300.0,
                      on_part: Callable[[ArchivedPart], None] | None = None) -> ArchiveResult:
    """Archive what durable consumer ``durable`` has not archived yet of
    ``settings.nats_stream`` into ``settings.workspace.decisions`` (see the module
    docstring for the guarantees); blocks until done.

    ``part_size``: records per part (fewer when the stream runs dry). ``ack_wait_s``:
    the consumer's ack wait, set when it is created (a crashed run's messages come back
    after it). ``on_part`` is called after each part is durably written and before its
    messages are acked (progress; an exception there leaves them unacked). Raises
    :class:`ArchiveError` for NATS failures, ``OSError`` when the disk fails.
    """
    if part_size < 1:
        raise ValueError(f"part_size must be >= 1, got {part_size}")
    if not idle_timeout_s > 0 or not ack_wait_s > 0:
        raise ValueError("idle_timeout_s and ack_wait_s must be > 0")
    if max_messages is not None and max_messages < 1:
        raise ValueError(f"max_messages must be >= 1 or None, got {max_messages}")
    if not durable or any(c in durable for c in " .*>"):
        raise ValueError(f"durable must be a NATS consumer name (no spaces, '.', '*', '>'), "
                         f"got {durable!r}")
    _remove_stale_staging(settings.workspace.decisions)
    archiver = _Archiver(settings, durable=durable, part_size=part_size,
                         idle_timeout_s=idle_timeout_s, max_messages=max_messages,
                         ack_wait_s=ack_wait_s, on_part=on_part)
    return asyncio.run(archiver.run())


__all__ = ["DEFAULT_DURABLE", "ArchiveError", "ArchiveResult", "ArchivedPart",
           "archive_decisions", "decode_record", "parse_ts", "write_part"]

"""A buffered, background-flushed writer of day-partitioned parquet parts.

Subclasses say how a list of rows becomes files (:meth:`BufferedParquetWriter._write`),
and may keep each row in another form until then (:meth:`BufferedParquetWriter._encode`:
the decision sink keeps encoded bytes); this class owns the buffer, the writer thread
and the part numbers:

* rows are appended under a lock (the request path never waits on disk);
* a daemon thread flushes every ``flush_every`` rows or ``flush_interval_s`` seconds;
* each flush takes the next part number (after the highest under ``root/<table>``),
  so flushes and restarts never overwrite a file; worker ``i`` of ``n`` processes
  writing one log (``worker=(i, n)``, :mod:`decisioning.workers`) takes only numbers
  ``≡ i (mod n)``, so workers never race for a part;
* a failed write keeps its rows for the next flush (logged); :meth:`flush` and
  :meth:`close` raise it.

What a SIGKILL loses: the rows not yet flushed, i.e. at most ``flush_every`` rows or
``flush_interval_s`` seconds of them (plus a write in progress). SIGTERM (uvicorn's
graceful shutdown runs the app lifespan, which calls :meth:`close`) loses nothing.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from adplatform.errors import PartWriterError
from adplatform.partwriter import DEFAULT_WRITER, PartWriterProcess, write_with
from decisioning.errors import DecisionError

logger = logging.getLogger(__name__)

T = TypeVar("T")
_PART = re.compile(r"part-(\d+)\.parquet$")


def next_part(base: Path, worker: tuple[int, int] = (0, 1)) -> int:
    """The first part number after the highest ``part-N.parquet`` under ``base/date=*``
    that belongs to ``worker`` ``(i, n)``: the numbers ``≡ i (mod n)``; ``i`` if none."""
    index, count = worker
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"worker must be (i, n) with 0 <= i < n, got {worker!r}")
    highest = -1
    if base.exists():
        highest = max((int(m.group(1)) for p in base.glob("date=*/part-*.parquet")
                       if (m := _PART.search(p.name))), default=-1)
    return highest + 1 + (index - highest - 1) % count


class BufferedParquetWriter(Generic[T]):
    """Buffers rows of type ``T``; a background thread writes them as parquet parts."""

    table = "rows"
    what = "rows"

    def __init__(self, root: Path, *, flush_every: int = 5000,
                 flush_interval_s: float | None = 5.0,
                 worker: tuple[int, int] = (0, 1)) -> None:
        if flush_every < 1:
            raise ValueError("flush_every must be >= 1")
        self.root = Path(root)
        self.flush_every = flush_every
        self.flush_interval_s = flush_interval_s
        self._buffer: list[Any] = []              # rows as _encode returns them
        self._lock = threading.Lock()               # guards _buffer and _closing
        self._wake = threading.Condition(self._lock)
        self._write_lock = threading.Lock()         # one writer at a time; guards _part
        self._part = next_part(self.root / self.table, worker)
        self._part_step = worker[1]
        self._inflight = 0
        self._closing = False
        self._closed = False
        self.files_written: list[Path] = []
        self.write_errors = 0
        self.rows_written = 0
        self._thread = threading.Thread(target=self._run, name=f"{self.table}-writer",
                                        daemon=True)
        self._thread.start()

    def _write(self, rows: list[Any], part: int) -> list[Path]:
        """Write buffered rows (as :meth:`_encode` returned them) as part ``part``."""
        raise NotImplementedError

    def _encode(self, rows: Iterable[T]) -> list[Any]:
        """What the buffer keeps for ``rows`` (called on the caller's thread): the rows."""
        return list(rows)

    @property
    def pending(self) -> int:
        """Rows not yet in a file: buffered plus being written."""
        return len(self._buffer) + self._inflight

    def extend(self, rows: Iterable[T]) -> None:
        items = self._encode(rows)
        with self._lock:
            if self._closing:
                raise DecisionError(f"the {self.what} sink is closed")
            self._buffer.extend(items)
            if len(self._buffer) >= self.flush_every:
                self._wake.notify()

    def flush(self) -> None:
        """Write everything buffered now; raises if the write fails (rows are kept)."""
        with self._write_lock:
            with self._lock:
                rows, self._buffer = self._buffer, []
                self._inflight = len(rows)
            if not rows:
                return
            try:
                written = self._write(rows, self._part)
            except Exception:
                with self._lock:
                    self._buffer[:0] = rows
                    self._inflight = 0
                self.write_errors += 1
                raise
            self._part += self._part_step
            self.files_written.extend(written)
            self.rows_written += len(rows)
            self._inflight = 0

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._closing and len(self._buffer) < self.flush_every:
                    self._wake.wait(self.flush_interval_s)
                if self._closing:
                    return
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - rows stay buffered; close() raises if it persists
                logger.exception("%s log write failed; %d rows kept", self.what, self.pending)

    def close(self) -> None:
        """Stop the writer thread and write what is left. Idempotent."""
        if self._closed:
            return
        with self._lock:
            self._closing = True
            self._wake.notify()
        self._thread.join()
        self.flush()
        self._closed = True


class EncodedPartWriter(BufferedParquetWriter[T]):
    """A :class:`BufferedParquetWriter` that keeps each row encoded as bytes (encoded on
    the caller's thread, :meth:`_encode_row`) and writes a part with ``encoded_writer``
    (``"module:function(root, table, blob, part)"``, :mod:`adplatform.partwriter`):
    in a child process with ``writer="process"`` (the default; started by the first
    flush), so that building the table never holds this process's GIL, or in the
    writer thread with ``"thread"``. A flush whose child died or could not start fails
    (its rows are kept); after ``PROCESS_FAILURES`` such flushes in a row the sink logs
    an error and writes in its own thread from then on, rather than never again."""

    encoded_writer = DEFAULT_WRITER
    PROCESS_FAILURES = 3

    def __init__(self, root: Path, *, flush_every: int = 5000,
                 flush_interval_s: float | None = 5.0,
                 writer: Literal["process", "thread"] = "process",
                 worker: tuple[int, int] = (0, 1)) -> None:
        if writer not in ("process", "thread"):
            raise ValueError(f"writer must be 'process' or 'thread', got {writer!r}")
        self._process = PartWriterProcess() if writer == "process" else None
        self._process_failures = 0
        super().__init__(root, flush_every=flush_every, flush_interval_s=flush_interval_s,
                         worker=worker)

    def start(self) -> None:
        """Start the writer process now rather than at the first flush: spawning it
        (a new interpreter importing pyarrow) at full priority while a service answers
        auctions stalls them. The service calls this at start-up. A child that cannot
        start is logged; the first flush tries again and fails as usual (its rows kept)."""
        if self._process is None:
            return
        try:
            self._process.start()
        except PartWriterError as exc:
            logger.warning("the %s log's writer process did not start (%s); the first "
                           "flush will try again", self.what, exc)

    def _encode_row(self, row: T) -> bytes:
        raise NotImplementedError

    def _encode(self, rows: Iterable[T]) -> list[Any]:
        encode = self._encode_row
        return [encode(r) for r in rows]

    def _write(self, rows: list[bytes], part: int) -> list[Path]:
        blob = b",".join(rows)
        process = self._process
        if process is None:
            return write_with(self.encoded_writer, self.root, self.table, blob, part)
        try:
            files = process.write(self.root, self.table, blob, part, writer=self.encoded_writer)
        except PartWriterError:
            self._process_failures += 1
            if self._process_failures >= self.PROCESS_FAILURES:
                logger.error("the %s log's writer process failed %d flushes in a row; "
                             "writing in this process from now on", self.what,
                             self._process_failures)
                self._process = None
                process.close()
            raise
        self._process_failures = 0
        return files

    def close(self) -> None:
        """Flush what is left, then stop the writer process. Idempotent."""
        try:
            super().close()
        finally:
            if self._process is not None:
                self._process.close()


__all__ = ["BufferedParquetWriter", "EncodedPartWriter", "next_part"]

"""Event-log parts built and written in a child process: :class:`PartWriterProcess`.

A serving process that writes its own log parts pays for them on the request path,
even from a background thread: turning a few thousand Python rows into an Arrow table
holds the GIL for milliseconds, and every request that arrives meanwhile waits (the
decision service flushes 5,000 decisions at a time).

So rows travel as bytes instead: the caller encodes each row once when it is logged
(:func:`encode_row`, a JSON array of the table's columns in schema order, timestamps as
integer microseconds since the epoch), and a flush joins them and hands one ``bytes``
object to a child process, which decodes them (:func:`rows_table`), builds the table
and writes the part with :func:`adplatform.eventlog.write_events`. The parent's writer thread only waits on a
pipe, without the GIL.

The child is spawned (not forked: the parent runs threads and native thread pools) on
first use, runs at a lower CPU priority, ignores SIGINT and SIGTERM (the parent decides
when logging ends: its shutdown flushes through the child, then stops it) and exits
within half a second of the parent's death, after finishing a write in progress. If
it dies, the write fails with :class:`PartWriterError` (the caller keeps its rows) and
the next write starts a new child. :func:`write_encoded` does the same work in the
calling thread.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from adplatform.errors import PartWriterError
from adplatform.eventlog import SCHEMAS, write_events

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
# How much lower the child's CPU priority is: on a busy host the log can wait (its rows
# stay buffered in the parent), the answers and whatever else runs there cannot.
CHILD_NICE = 10


def timestamp_us(ts: datetime) -> int:
    """Integer microseconds since the epoch (exact); a naive datetime is taken as UTC,
    as Arrow takes it."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return (ts - _EPOCH) // _US


def encode_row(values: Sequence[Any]) -> bytes:
    """One row as a JSON array in the table's column order (timestamps already as
    :func:`timestamp_us`). Non-finite floats become null."""
    return orjson.dumps(values)


def rows_table(table: str | pa.Schema, blob: bytes) -> pa.Table:
    """The table of encoded rows joined with ``b","`` (the inverse of :func:`encode_row`);
    ``table`` names an event-log table (:data:`adplatform.eventlog.SCHEMAS`) or is a
    schema."""
    schema = SCHEMAS[table] if isinstance(table, str) else table
    rows = orjson.loads(b"[" + blob + b"]") if blob else []
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
    if len(columns) != len(schema):
        raise ValueError(f"rows have {len(columns)} columns, the schema {len(schema)}: "
                         f"{schema.names}")
    arrays = [pa.array(col, pa.int64()).cast(f.type) if pa.types.is_timestamp(f.type)
              else pa.array(col, type=f.type) for f, col in zip(schema, columns, strict=True)]
    return pa.Table.from_arrays(arrays, schema=schema)


def write_encoded(root: Path | str, table: str, blob: bytes, part: int) -> list[Path]:
    """Decode the rows and write them as part ``part`` of ``root/table`` (this thread)."""
    return write_events(Path(root), table, rows_table(table, blob), part=part)


# In the child: held while a part is written, so that the parent watch exits between writes.
_WRITING = threading.Lock()
_PARENT_POLL_S = 0.5


#: The default writer: an event-log table through :func:`write_encoded`.
DEFAULT_WRITER = "adplatform.partwriter:write_encoded"


def write_with(writer: str, root: Path | str, table: str, blob: bytes, part: int
               ) -> list[Path]:
    """Call ``writer`` (``"module:function"``) as ``function(root, table, blob, part)``
    in this thread: what the child process does for :meth:`PartWriterProcess.write`."""
    module, _, name = writer.partition(":")
    fn = getattr(importlib.import_module(module), name)
    return [Path(p) for p in fn(Path(root), table, blob, part)]


def _child_write(writer: str, root: str, table: str, blob: bytes, part: int) -> list[str]:
    with _WRITING:
        return [str(p) for p in write_with(writer, root, table, blob, part)]


def _watch_parent(parent: int) -> None:
    # The pool's queues give the child its own handle on their write ends, so it never
    # sees EOF when the parent dies: it watches its parent id instead.
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL_S)
    with _WRITING:
        os._exit(0)


def _child_init(parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.nice(CHILD_NICE)
    except OSError as exc:                          # not permitted here: full priority
        log.debug("part writer keeps its priority: %s", exc)
    threading.Thread(target=_watch_parent, args=(parent,), name="parent-watch",
                     daemon=True).start()


def _child_ready() -> int:
    return os.getpid()


def _raised_by_writer(exc: BaseException) -> bool:
    """True for an error the write itself raised in the child (a full disk, a bad path),
    which a future re-raises with the child's traceback attached as its cause."""
    return type(exc.__cause__).__name__ == "_RemoteTraceback"


class PartWriterProcess:
    """Writes encoded parts in one spawned child process (see the module docstring).
    Thread-safe: writes are serialised."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _executor(self) -> ProcessPoolExecutor:
        if self._closed:
            raise PartWriterError("the part writer is closed")
        if self._pool is None:
            try:
                self._pool = ProcessPoolExecutor(
                    max_workers=1, mp_context=mp.get_context("spawn"), initializer=_child_init,
                    initargs=(os.getpid(),))
            except (OSError, ImportError, NotImplementedError) as exc:  # e.g. no sem_open
                raise PartWriterError(f"the part writer process could not start: {exc}"
                                      ) from exc
        return self._pool

    def start(self) -> int:
        """Start the child now (it is otherwise started by the first write); its pid."""
        with self._lock:
            return int(self._call(_child_ready))

    def write(self, root: Path, table: str, blob: bytes, part: int, *,
              writer: str = DEFAULT_WRITER) -> list[Path]:
        """Write the part in the child with ``writer`` (``"module:function"``, called as
        ``function(root, table, blob, part)`` and returning the files); the files.
        Errors of the write itself (a full disk, a bad path) are raised as they were
        raised there."""
        with self._lock:
            return [Path(p) for p in self._call(_child_write, writer, str(root), table, blob,
                                                 part)]

    def _call(self, fn: Any, *args: Any) -> Any:
        pool = self._executor()
        try:
            return pool.submit(fn, *args).result()
        except BrokenProcessPool as exc:        # it died now, or while idle since the last
            self._discard(pool)
            raise PartWriterError(f"the part writer process died ({exc}); a new one "
                                  "starts with the next write") from exc
        except (OSError, RuntimeError, NotImplementedError) as exc:
            if not _raised_by_writer(exc):
                self._discard(pool)             # spawning failed: no process, no pipe
                raise PartWriterError(f"the part writer process could not start: {exc}"
                                      ) from exc
            raise

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the child after the write in progress. Idempotent."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


__all__ = ["CHILD_NICE", "DEFAULT_WRITER", "PartWriterError", "PartWriterProcess", "encode_row",
           "rows_table", "timestamp_us", "write_encoded", "write_with"]

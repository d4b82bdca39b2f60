"""The decision log: one :class:`DecisionRecord` per (request id, imp id), bid or no-bid.

Records have exactly the columns of the event log's ``decisions`` table
(:data:`adplatform.eventlog.SCHEMAS`). :class:`ParquetDecisionSink` buffers them and a
background thread writes them with :func:`adplatform.eventlog.write_events`, so the
request path never waits on disk; :class:`MemorySink` keeps them in a list for tests.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

import pandas as pd
import pyarrow as pa

from adplatform.eventlog import SCHEMAS, write_events
from decisioning.errors import DecisionError

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class DecisionRecord:
    ts: datetime                    # UTC, when the request was received
    request_id: str
    imp_id: str
    bid: bool
    price: float                    # CPM bid; 0.0 for a no-bid
    campaign_id: str                # "" for a no-bid
    creative_id: str
    reason: str                     # "bid" or the no-bid reason
    pctr: float | None              # of the chosen (or best) candidate; None if unscored
    value: float | None             # CPM value of that candidate
    propensity: float               # P(this action | context) under the logging policy
    policy: str
    variant: str
    model_version: str              # "ctr=3,fraud=1"; "" when no model was asked
    feature_service: str            # "defaults" when the online store was down
    latency_ms: float


DECISION_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(DecisionRecord))


def records_frame(records: Iterable[DecisionRecord]) -> pd.DataFrame:
    """Records as a DataFrame with the ``decisions`` columns, types and order.

    Built through Arrow (typed columns straight from the lists): about half the
    GIL-holding time of ``pd.DataFrame(rows)``, which matters in the writer thread.
    """
    rows = list(records)
    schema = SCHEMAS["decisions"]
    table = pa.table({c: pa.array([getattr(r, c) for r in rows], type=schema.field(c).type)
                      for c in DECISION_COLUMNS}, schema=schema)
    return table.to_pandas()


@runtime_checkable
class DecisionSink(Protocol):
    """Where decision records go. Implementations are thread-safe."""

    def extend(self, records: Iterable[DecisionRecord]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class MemorySink:
    """Keeps every record in :attr:`records` (tests, notebooks)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.records: list[DecisionRecord] = []
        self.closed = False

    def extend(self, records: Iterable[DecisionRecord]) -> None:
        with self._lock:
            self.records.extend(records)

    def flush(self) -> None:
        """Nothing is buffered."""

    def close(self) -> None:
        self.closed = True

    def frame(self) -> pd.DataFrame:
        with self._lock:
            return records_frame(self.records)


_PART = re.compile(r"part-(\d+)\.parquet$")


class ParquetDecisionSink:
    """Buffers records; writes ``<root>/decisions/date=…/part-NNNNN.parquet`` files.

    A background thread flushes every ``flush_every`` records or ``flush_interval_s``
    seconds, whichever comes first; :meth:`close` flushes the rest. Each flush takes the
    next part number (starting after the highest already under ``root``), so flushes and
    restarts never overwrite a file. Give each process its own ``root`` (or run one
    writer): two processes on one root would race for part numbers.

    A failed write keeps its records for the next flush and is logged; :meth:`flush` and
    :meth:`close` raise it.
    """

    def __init__(self, root: Path, *, flush_every: int = 5000,
                 flush_interval_s: float | None = 5.0) -> None:
        if flush_every < 1:
            raise ValueError("flush_every must be >= 1")
        self.root = Path(root)
        self.flush_every = flush_every
        self.flush_interval_s = flush_interval_s
        self._buffer: list[DecisionRecord] = []
        self._lock = threading.Lock()               # guards _buffer and _closing
        self._wake = threading.Condition(self._lock)
        self._write_lock = threading.Lock()         # one writer at a time; guards _part
        self._part = self._next_part()
        self._inflight = 0
        self._closing = False
        self._closed = False
        self.files_written: list[Path] = []
        self.write_errors = 0
        self._thread = threading.Thread(target=self._run, name="decision-log-writer",
                                        daemon=True)
        self._thread.start()

    def _next_part(self) -> int:
        base = self.root / "decisions"
        if not base.exists():
            return 0
        parts = [int(m.group(1)) for p in base.glob("date=*/part-*.parquet")
                 if (m := _PART.search(p.name))]
        return max(parts, default=-1) + 1

    @property
    def pending(self) -> int:
        """Records not yet in a file: buffered plus being written."""
        return len(self._buffer) + self._inflight

    def extend(self, records: Iterable[DecisionRecord]) -> None:
        with self._lock:
            if self._closing:
                raise DecisionError("the decision sink is closed")
            self._buffer.extend(records)
            if len(self._buffer) >= self.flush_every:
                self._wake.notify()

    def flush(self) -> None:
        """Write everything buffered now; raises if the write fails (records are kept)."""
        with self._write_lock:
            with self._lock:
                rows, self._buffer = self._buffer, []
                self._inflight = len(rows)
            if not rows:
                return
            try:
                written = write_events(self.root, "decisions", records_frame(rows),
                                       part=self._part)
            except Exception:
                with self._lock:
                    self._buffer[:0] = rows
                    self._inflight = 0
                self.write_errors += 1
                raise
            self._part += 1
            self.files_written.extend(written)
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
            except Exception:
                # The records stay buffered for the next try; close() raises if it persists.
                logger.exception("decision log write failed; %d records kept", self.pending)

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


__all__ = ["DECISION_COLUMNS", "DecisionRecord", "DecisionSink", "MemorySink",
           "ParquetDecisionSink", "records_frame"]

"""The decision log: one :class:`DecisionRecord` per (request id, imp id), bid or no-bid.

Records have exactly the columns of the event log's ``decisions`` table
(:data:`adplatform.eventlog.SCHEMAS`). :class:`ParquetDecisionSink` buffers them and a
background thread writes them with :func:`adplatform.eventlog.write_events`, so the
request path never waits on disk; :class:`MemorySink` keeps them in a list for tests.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

import pandas as pd
import pyarrow as pa

from adplatform.eventlog import SCHEMAS, write_events
from decisioning.buffered import BufferedParquetWriter

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


def records_table(records: Iterable[DecisionRecord]) -> pa.Table:
    """Records as an Arrow table with the ``decisions`` schema.

    Typed columns straight from the records, no pandas: the writer thread holds the
    GIL while it builds them, and ``write_events`` takes the table as it is.
    """
    rows = list(records)
    schema = SCHEMAS["decisions"]
    return pa.table({c: pa.array([getattr(r, c) for r in rows], type=schema.field(c).type)
                     for c in DECISION_COLUMNS}, schema=schema)


def records_frame(records: Iterable[DecisionRecord]) -> pd.DataFrame:
    """Records as a DataFrame with the ``decisions`` columns, types and order."""
    return records_table(records).to_pandas()


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


class ParquetDecisionSink(BufferedParquetWriter[DecisionRecord]):
    """Buffers records; writes ``<root>/decisions/date=…/part-NNNNN.parquet`` files.

    A background thread flushes every ``flush_every`` records or ``flush_interval_s``
    seconds, whichever comes first; :meth:`close` flushes the rest. Each flush takes the
    next part number (starting after the highest already under ``root``), so flushes and
    restarts never overwrite a file. Give each process its own ``root`` (or run one
    writer): two processes on one root would race for part numbers.

    A failed write keeps its records for the next flush and is logged; :meth:`flush` and
    :meth:`close` raise it. A SIGKILL loses what is buffered: at most ``flush_every``
    records or ``flush_interval_s`` seconds of them; SIGTERM loses nothing.
    """

    table = "decisions"
    what = "decision"

    def _write(self, rows: list[DecisionRecord], part: int) -> list[Path]:
        return write_events(self.root, "decisions", records_table(rows), part=part)


__all__ = ["DECISION_COLUMNS", "DecisionRecord", "DecisionSink", "MemorySink",
           "ParquetDecisionSink", "records_frame", "records_table"]

"""The decision log: one :class:`DecisionRecord` per (request id, imp id), bid or no-bid.

Records have exactly the columns of the event log's ``decisions`` table
(:data:`adplatform.eventlog.SCHEMAS`). :class:`ParquetDecisionSink` encodes each record
when it is logged, buffers the bytes, and a background thread hands each batch to a
child process that builds and writes the part (:mod:`adplatform.partwriter`), so the
request path neither waits on disk nor on a table build holding the GIL;
:class:`MemorySink` keeps them in a list for tests.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Protocol, runtime_checkable

import pandas as pd
import pyarrow as pa

from adplatform.eventlog import SCHEMAS
from adplatform.partwriter import encode_row, timestamp_us
from decisioning.buffered import EncodedPartWriter

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


def encode_record(r: DecisionRecord) -> bytes:
    """One record as the part writer's row encoding (:func:`adplatform.partwriter.encode_row`);
    :func:`adplatform.partwriter.rows_table` turns the joined rows back into the same table
    as :func:`records_table` (the engine logs no non-finite floats, which would become null)."""
    return encode_row((timestamp_us(r.ts), r.request_id, r.imp_id, r.bid, r.price,
                       r.campaign_id, r.creative_id, r.reason, r.pctr, r.value, r.propensity,
                       r.policy, r.variant, r.model_version, r.feature_service, r.latency_ms))


def records_frame(records: Iterable[DecisionRecord]) -> pd.DataFrame:
    """Records as a DataFrame with the ``decisions`` columns, types and order."""
    return records_table(records).to_pandas()


@runtime_checkable
class DecisionSink(Protocol):
    """Where decision records go. Implementations are thread-safe."""

    def extend(self, records: Iterable[DecisionRecord]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class StartableSink(Protocol):
    """A sink with work to do before the first record (the parquet sinks' writer
    process): the service calls :meth:`start` once, at start-up."""

    def start(self) -> None: ...


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


class ParquetDecisionSink(EncodedPartWriter[DecisionRecord]):
    """Buffers records; writes ``<root>/decisions/date=…/part-NNNNN.parquet`` files.

    ``writer="process"`` (the default) builds and writes each part in a child process
    (:class:`adplatform.partwriter.PartWriterProcess`, started with the first flush);
    ``"thread"`` does it in the writer thread, holding the GIL while the table is built.

    A background thread flushes every ``flush_every`` records or ``flush_interval_s``
    seconds, whichever comes first; :meth:`close` flushes the rest. Each flush takes the
    next part number (starting after the highest already under ``root``), so flushes and
    restarts never overwrite a file. Processes sharing one ``root`` must each say which
    they are (``worker=(i, n)``: part numbers ``≡ i (mod n)``), or they race for parts.

    A failed write keeps its records for the next flush and is logged; :meth:`flush` and
    :meth:`close` raise it. A SIGKILL loses what is buffered: at most ``flush_every``
    records or ``flush_interval_s`` seconds of them (a write already handed to the child
    process still completes, unless the child is killed too); SIGTERM loses nothing.
    """

    table = "decisions"
    what = "decision"

    def _encode_row(self, row: DecisionRecord) -> bytes:
        return encode_record(row)


__all__ = ["DECISION_COLUMNS", "DecisionRecord", "DecisionSink", "MemorySink",
           "ParquetDecisionSink", "StartableSink", "encode_record", "records_frame",
           "records_table"]

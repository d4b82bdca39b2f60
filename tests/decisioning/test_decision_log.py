"""Decision sinks: memory, and parquet with background flushes that never overwrite."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adplatform.eventlog import read_events
from decisioning import DecisionError, DecisionRecord, MemorySink, ParquetDecisionSink

T0 = datetime(2024, 3, 1, 23, 59, 59, tzinfo=UTC)


def _rec(i: int, ts: datetime = T0, **kw: Any) -> DecisionRecord:
    base: dict[str, Any] = dict(
        ts=ts, request_id=f"r{i:06d}", imp_id="1", bid=i % 2 == 0, price=1.5 if i % 2 == 0
        else 0.0, campaign_id="c01" if i % 2 == 0 else "", creative_id="", reason="bid"
        if i % 2 == 0 else "below_floor", pctr=0.01 if i % 3 else None, value=8.0,
        propensity=1.0, policy="shade_factor_0.7", variant="default", model_version="ctr=3",
        feature_service="ctr_v1", latency_ms=0.2)
    base.update(kw)
    return DecisionRecord(**base)


def test_memory_sink() -> None:
    sink = MemorySink()
    sink.extend([_rec(1), _rec(2)])
    sink.flush()
    assert len(sink.records) == 2 and len(sink.frame()) == 2
    sink.close()
    assert sink.closed


def test_parquet_sink_flushes_on_close_into_day_partitions(tmp_path: Path) -> None:
    sink = ParquetDecisionSink(tmp_path, flush_every=1000, flush_interval_s=None)
    sink.extend([_rec(1), _rec(3, ts=T0 + timedelta(seconds=2))])   # crosses midnight
    assert sink.pending == 2 and not sink.files_written
    sink.close()
    names = sorted(str(p.relative_to(tmp_path)) for p in sink.files_written)
    assert names == ["decisions/date=2024-03-01/part-00000.parquet",
                     "decisions/date=2024-03-02/part-00000.parquet"]
    df = read_events(tmp_path, "decisions")
    assert list(df["request_id"]) == ["r000001", "r000003"]
    assert df["pctr"].isna().tolist() == [False, True]          # unscored → null
    sink.close()                                                    # idempotent
    with pytest.raises(DecisionError, match="closed"):
        sink.extend([_rec(3)])


def test_parquet_sink_flushes_by_count_in_the_background(tmp_path: Path) -> None:
    sink = ParquetDecisionSink(tmp_path, flush_every=10, flush_interval_s=None)
    sink.extend(_rec(i) for i in range(25))
    deadline = time.monotonic() + 5
    while sink.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sink.pending == 0 and len(sink.files_written) == 1
    sink.close()
    assert len(read_events(tmp_path, "decisions")) == 25


def test_parquet_sink_flushes_by_time(tmp_path: Path) -> None:
    sink = ParquetDecisionSink(tmp_path, flush_every=10_000, flush_interval_s=0.05)
    sink.extend([_rec(1)])
    deadline = time.monotonic() + 5
    while not sink.files_written and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sink.files_written
    sink.close()


def test_part_numbers_increase_across_flushes_and_restarts(tmp_path: Path) -> None:
    sink = ParquetDecisionSink(tmp_path, flush_interval_s=None)
    for i in range(3):
        sink.extend([_rec(i)])
        sink.flush()
    sink.flush()                                    # nothing buffered: no file
    sink.close()
    again = ParquetDecisionSink(tmp_path, flush_interval_s=None)
    again.extend([_rec(9)])
    again.close()
    parts = sorted(p.name for p in (tmp_path / "decisions").rglob("*.parquet"))
    assert parts == [f"part-{i:05d}.parquet" for i in range(4)]
    assert len(read_events(tmp_path, "decisions")) == 4


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    sink = ParquetDecisionSink(tmp_path, flush_every=50, flush_interval_s=0.01)

    def write(t: int) -> None:
        for i in range(250):
            sink.extend([_rec(t * 1000 + i)])

    threads = [threading.Thread(target=write, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    sink.close()
    df = read_events(tmp_path, "decisions")
    assert len(df) == 2000 and df["request_id"].is_unique


def test_failed_writes_keep_records(tmp_path: Path) -> None:
    blocker = tmp_path / "decisions"
    blocker.write_text("a file where the table folder should be")
    sink = ParquetDecisionSink(tmp_path, flush_interval_s=None)
    sink.extend([_rec(1), _rec(2)])
    with pytest.raises(OSError):
        sink.flush()
    assert sink.pending == 2 and sink.write_errors == 1
    blocker.unlink()
    sink.close()
    assert len(read_events(tmp_path, "decisions")) == 2


def test_flush_every_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="flush_every"):
        ParquetDecisionSink(tmp_path, flush_every=0)


def test_records_go_to_parquet_as_arrow_with_the_log_schema(tmp_path: Path) -> None:
    """The writer thread hands write_events an Arrow table (no pandas round trip); a
    table whose schema is not the log's is refused, not silently cast."""
    import pyarrow as pa

    from adplatform.errors import DataError
    from adplatform.eventlog import SCHEMAS, write_events
    from decisioning.decision_log import records_frame, records_table

    recs = [_rec(i) for i in range(4)]
    table = records_table(recs)
    assert table.schema.equals(SCHEMAS["decisions"])
    write_events(tmp_path, "decisions", table)
    back = read_events(tmp_path, "decisions")
    assert back.equals(records_frame(recs))
    with pytest.raises(DataError, match="schema"):
        write_events(tmp_path, "decisions", table.drop_columns(["variant"]))
    with pytest.raises(DataError, match="schema"):
        write_events(tmp_path, "decisions",
                     table.set_column(0, "ts", pa.array([0] * 4, pa.int64())))

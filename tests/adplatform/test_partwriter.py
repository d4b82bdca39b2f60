"""The event-log part writer: the row encoding round-trips to the log schema, and the
child process writes the same parts as the calling thread, survives what it must
(SIGTERM) and is replaced when it dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from adplatform.errors import PartWriterError
from adplatform.eventlog import SCHEMAS, read_events
from adplatform.partwriter import PartWriterProcess, rows_table, timestamp_us, write_encoded
from decisioning.decision_log import (
    DecisionRecord,
    ParquetDecisionSink,
    encode_record,
    records_table,
)
from tests.conftest import process_alive
from tests.decisioning.test_decision_log import _rec as decision_record

T0 = datetime(2024, 3, 1, 23, 59, 59, 999_999, tzinfo=UTC)


def _rec(i: int, **kw: Any) -> DecisionRecord:
    """The decision-log tests' record, with values that differ from row to row."""
    varied: dict[str, Any] = dict(
        ts=T0 + timedelta(microseconds=i), request_id=f"r{i}", price=1.5 + i / 7,
        creative_id="cr-ü", pctr=None if i % 3 == 0 else 0.1 / (i + 1), latency_ms=0.2 + i)
    return decision_record(i, **{**varied, **kw})


def _blob(records: list[DecisionRecord]) -> bytes:
    return b",".join(encode_record(r) for r in records)


def test_timestamps_are_exact_microseconds() -> None:
    assert timestamp_us(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert timestamp_us(T0) == 1_709_337_599_999_999
    assert timestamp_us(T0.replace(tzinfo=None)) == timestamp_us(T0)     # naive = UTC
    cet = T0.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    assert timestamp_us(cet) == timestamp_us(T0)


def test_encoded_rows_decode_to_the_same_table_as_the_records() -> None:
    recs = [_rec(i) for i in range(50)]
    recs += [_rec(50, ts=T0.replace(tzinfo=None)), _rec(51, request_id='quote " \\ \n 🙂',
                                                        price=0.0, value=None, pctr=1e-300),
             _rec(52, latency_ms=1e9, propensity=1 / 3)]
    table = rows_table("decisions", _blob(recs))
    assert table.schema.equals(SCHEMAS["decisions"])
    assert table.equals(records_table(recs))
    assert rows_table("decisions", b"").num_rows == 0


def test_rows_of_the_wrong_width_are_refused() -> None:
    with pytest.raises(ValueError, match="columns"):
        rows_table("decisions", b'[1,"r","1"]')


def test_the_child_writes_what_the_thread_writes(tmp_path: Path) -> None:
    recs = [_rec(i) for i in range(200)]
    here = write_encoded(tmp_path / "thread", "decisions", _blob(recs), 3)
    writer = PartWriterProcess()
    try:
        pid = writer.start()
        assert pid != os.getpid()
        there = writer.write(tmp_path / "child", "decisions", _blob(recs), 3)
    finally:
        writer.close()
    assert [p.relative_to(tmp_path / "thread") for p in here] == \
        [p.relative_to(tmp_path / "child") for p in there]
    for a, b in zip(here, there, strict=True):
        assert pq.read_table(a).equals(pq.read_table(b))
    with pytest.raises(PartWriterError, match="closed"):
        writer.write(tmp_path, "decisions", _blob(recs), 4)


def test_the_child_ignores_sigterm_and_is_replaced_when_killed(tmp_path: Path) -> None:
    writer = PartWriterProcess()
    try:
        pid = writer.start()
        os.kill(pid, signal.SIGTERM)          # a process-group SIGTERM: the parent decides
        time.sleep(0.2)
        assert writer.start() == pid
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        with pytest.raises(PartWriterError, match="died"):
            writer.write(tmp_path, "decisions", _blob([_rec(1)]), 0)
        assert writer.start() != pid          # the next call starts a new child
        assert writer.write(tmp_path, "decisions", _blob([_rec(1)]), 0)
    finally:
        writer.close()


def test_a_sink_keeps_its_rows_when_the_child_dies(tmp_path: Path) -> None:
    sink = ParquetDecisionSink(tmp_path, flush_interval_s=None)
    try:
        assert sink._process is not None
        os.kill(sink._process.start(), signal.SIGKILL)
        time.sleep(0.2)
        sink.extend([_rec(1), _rec(2)])
        with pytest.raises(PartWriterError):
            sink.flush()
        assert sink.pending == 2 and sink.write_errors == 1
    finally:
        sink.close()                          # a new child writes them
    assert list(read_events(tmp_path, "decisions")["request_id"]) == ["r1", "r2"]


def test_a_write_error_in_the_child_is_raised_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "decisions").write_text("a file where the table folder should be")
    writer = PartWriterProcess()
    try:
        with pytest.raises(OSError, match="decisions"):
            writer.write(tmp_path, "decisions", _blob([_rec(1)]), 0)
    finally:
        writer.close()


_ORPHAN = """
import sys, time
from adplatform.partwriter import PartWriterProcess
w = PartWriterProcess()
print(w.start(), flush=True)
time.sleep(60)
"""


def test_the_child_exits_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and process_alive(child):
            time.sleep(0.1)
        assert not process_alive(child)
    finally:
        if parent.poll() is None:
            parent.kill()


def test_a_child_that_cannot_start_is_a_part_writer_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import adplatform.partwriter as pw

    def no_semaphores(*a: Any, **kw: Any) -> Any:
        raise OSError("This platform lacks a functioning sem_open implementation")

    monkeypatch.setattr(pw, "ProcessPoolExecutor", no_semaphores)
    writer = PartWriterProcess()
    with pytest.raises(PartWriterError, match="could not start"):
        writer.write(tmp_path, "decisions", _blob([_rec(1)]), 0)
    writer.close()


def test_a_sink_writes_in_its_own_thread_after_repeated_child_failures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = ParquetDecisionSink(tmp_path, flush_interval_s=None)
    assert sink._process is not None
    calls: list[int] = []

    def broken(*a: Any, **kw: Any) -> list[Path]:
        calls.append(1)
        raise PartWriterError("the part writer process died")

    monkeypatch.setattr(sink._process, "write", broken)
    sink.extend([_rec(1), _rec(2)])
    for _ in range(ParquetDecisionSink.PROCESS_FAILURES):
        with pytest.raises(PartWriterError):
            sink.flush()
    assert len(calls) == ParquetDecisionSink.PROCESS_FAILURES and sink.pending == 2
    assert sink._process is None                       # given up on the child
    sink.close()                                       # written in the writer thread
    assert list(read_events(tmp_path, "decisions")["request_id"]) == ["r1", "r2"]

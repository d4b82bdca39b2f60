"""The event log's files appear whole or not at all: a reader listing a day folder while
a service writes a part (the trainer reading the live decision log) never opens a
half-written file, and a failed write leaves nothing behind."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from adplatform import eventlog
from adplatform.eventlog import read_events, write_events, write_parquet
from decisioning.notices import NoticeRecord, encode_notice, write_encoded_notices
from tests.decisioning.test_decision_log import _rec

T0 = datetime(2024, 3, 1, 12, tzinfo=UTC)


def _decisions(n: int, first: int = 0) -> list[dict[str, Any]]:
    rows = []
    for i in range(first, first + n):
        rec = _rec(i, ts=T0 + timedelta(seconds=i))
        rows.append({k: getattr(rec, k) for k in eventlog.SCHEMAS["decisions"].names})
    return rows


def _tear_writes(monkeypatch: pytest.MonkeyPatch, look: Callable[[], int]) -> list[int]:
    """Make every parquet write first leave half a file at its destination (what a
    reader sees mid-write), call ``look`` at that moment, then write for real.
    Returns what ``look`` saw."""
    seen: list[int] = []
    real = pq.write_table

    def torn_write(tbl: pa.Table, where: Any, **kw: Any) -> None:
        real(tbl, where, **kw)
        data = Path(where).read_bytes()
        Path(where).write_bytes(data[: len(data) // 2])    # the footer is not there yet
        seen.append(look())
        real(tbl, where, **kw)

    monkeypatch.setattr(pq, "write_table", torn_write)
    return seen


def test_a_part_being_written_is_invisible_to_readers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_events(tmp_path, "decisions", _decisions(3), part=0)
    seen = _tear_writes(monkeypatch, lambda: len(read_events(tmp_path, "decisions")))
    written = write_events(tmp_path, "decisions", _decisions(4, first=3), part=1)
    assert seen == [3]                 # the old part only; no ArrowInvalid on a torn file
    assert [p.name for p in written] == ["part-00001.parquet"]
    assert len(read_events(tmp_path, "decisions")) == 7
    assert sorted(p.name for p in written[0].parent.iterdir()) == [
        "part-00000.parquet", "part-00001.parquet"]          # no temporary file left


def test_a_notice_part_being_written_is_invisible_to_readers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _tear_writes(
        monkeypatch, lambda: len(list((tmp_path / "notices").glob("date=*/*.parquet"))))
    rec = NoticeRecord(ts=T0, kind="win", request_id="r1", imp_id="1", bid_id="b1",
                       campaign_id="c1", creative_id="cr1", price=1.5, currency="USD",
                       cost_micros=1_500, loss_code=None, min_to_win=None)
    written = write_encoded_notices(tmp_path, "notices", encode_notice(rec), 0)
    assert seen == [0]
    assert pq.read_table(written[0]).num_rows == 1


def test_a_failed_write_leaves_no_file(tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    real = pq.write_table

    def fails_midway(tbl: pa.Table, where: Any, **kw: Any) -> None:
        real(tbl, where, **kw)
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", fails_midway)
    with pytest.raises(OSError, match="disk full"):
        write_parquet(pa.table({"x": [1]}), tmp_path / "d" / "part-00000.parquet")
    assert list((tmp_path / "d").iterdir()) == []

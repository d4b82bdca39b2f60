"""The JetStream decision log archived into the parquet decision log the reports read.

Needs the NATS server on 127.0.0.1:4222 (``-js``); each test uses its own stream and
subject and deletes the stream afterwards. Decoding is tested without a server.
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow.parquet as pq
import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from adplatform.config import Settings
from adplatform.ports import free_port
from decisioning.buffered import next_part
from decisioning.decision_log import (
    DECISION_COLUMNS,
    DecisionRecord,
    ParquetDecisionSink,
    records_frame,
)
from decisioning.decisions_cli import register
from decisioning.nats_archive import (
    ArchivedPart,
    ArchiveError,
    archive_decisions,
    decode_record,
    parse_ts,
)
from decisioning.nats_sink import NatsDecisionSink, record_payload
from mlops.reports.ab import ExperimentSpec, ab_report
from mlops.reports.events import KEY, Outcomes, decision_outcomes, load_decisions

from .conftest import delete_stream, nats_or_skip

pytestmark = pytest.mark.services

NATS = "nats://127.0.0.1:4222"
DAY1 = datetime(2024, 3, 1, 20, 0, tzinfo=UTC)
IDLE = 0.5                      # seconds without a message that end a run in these tests


def _rec(i: int, *, prefix: str = "r") -> DecisionRecord:
    """Records over two days (DAY1 20:00 onwards, one every 150 s: from ``i`` = 96 on,
    the next day), microseconds, None and NaN, a naive and a +02:00 time."""
    ts = DAY1 + timedelta(seconds=150 * i, microseconds=i)
    if i == 3:
        ts = ts.replace(tzinfo=None)                        # naive: the log takes it as UTC
    elif i == 5:
        ts = ts.astimezone(timezone(timedelta(hours=2)))
    bid = i % 2 == 0
    return DecisionRecord(
        ts=ts, request_id=f"{prefix}{i:06d}", imp_id=str(1 + i % 2), bid=bid,
        price=1.25 + i / 1000 if bid else 0.0, campaign_id="c01" if bid else "",
        creative_id="cr01" if bid else "", reason="bid" if bid else "below_floor",
        pctr=None if i % 7 == 0 else 0.01 + i / 1e5, value=math.nan if i % 11 == 0 else 8.0,
        propensity=0.5, policy="shade_factor_0.7",
        variant="exp:control" if i % 2 else "exp:treatment",
        model_version="ctr=3", feature_service="ctr_v1", latency_ms=0.2 + i / 1e4)


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    """Services-profile settings on a unique stream and subject, and a tmp workspace."""
    nats_or_skip()
    tag = uuid.uuid4().hex[:8]
    s = Settings(home=tmp_path / "ws", profile="services",  # type: ignore[call-arg]
                 nats_url=NATS, nats_stream=f"TEST_ARCHIVE_{tag}",
                 nats_subject=f"test.archive.{tag}")
    yield s
    asyncio.run(delete_stream(s.nats_stream))


def _publish(settings: Settings, records: list[DecisionRecord]) -> None:
    sink = NatsDecisionSink(settings.nats_url, stream=settings.nats_stream,
                            subject=settings.nats_subject, batch=128)
    for i in range(0, len(records), 50):
        sink.extend(records[i:i + 50])
    sink.close()
    assert sink.published == len(records) and sink.lost == 0 and sink.spilled == 0


def _archive(settings: Settings, **kw: Any) -> Any:
    return archive_decisions(settings, idle_timeout_s=IDLE, **kw)


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(KEY).reset_index(drop=True)


def _raw_rows(settings: Settings) -> int:
    files = sorted((settings.workspace.decisions / "decisions").glob("date=*/*.parquet"))
    return sum(pq.read_metadata(f).num_rows for f in files)


def test_archive_round_trip_incremental_and_beside_the_services_parts(
        settings: Settings) -> None:
    root = settings.workspace.decisions
    # The service's own spill part in the same folder: the archiver must not touch it,
    # and must not change the part numbers the service takes.
    spill = ParquetDecisionSink(root, writer="thread", flush_interval_s=None)
    spill.extend([_rec(i, prefix="spill") for i in range(3)])
    spill.close()
    (spilled,) = spill.files_written
    records = [_rec(i) for i in range(500)]
    _publish(settings, records)

    parts: list[ArchivedPart] = []
    result = _archive(settings, part_size=300, on_part=parts.append)
    assert result.records == result.messages == 500 and result.redelivered == 0
    assert result.rejected_count == 0 and result.pending == 0
    assert sorted(result.days) == ["2024-03-01", "2024-03-02"]
    assert sum(result.days.values()) == 500 and [p.records for p in parts] == [300, 200]
    assert all(f.name.startswith("nats-") for f in result.files)
    assert spilled.exists() and next_part(root / "decisions") == 1

    got = load_decisions(settings.workspace, source="live")
    want = records_frame(records + spill_records())
    pd.testing.assert_frame_equal(_sorted(got), _sorted(want))
    assert str(got["ts"].dtype) == "datetime64[us, UTC]"
    assert got.loc[got.request_id == "r000003", "ts"].item() == pd.Timestamp(
        records[3].ts.replace(tzinfo=UTC))

    again = _archive(settings)                       # the durable consumer remembers
    assert again.records == again.messages == 0 and again.files == []

    more = [_rec(i, prefix="m") for i in range(100)]
    _publish(settings, more)
    third = _archive(settings)
    assert third.records == 100 and third.redelivered == 0
    got = load_decisions(settings.workspace, source="live")
    assert len(got) == 603 and not got.duplicated(KEY).any()
    pd.testing.assert_frame_equal(_sorted(got), _sorted(records_frame(
        records + more + spill_records())))


def spill_records() -> list[DecisionRecord]:
    return [_rec(i, prefix="spill") for i in range(3)]


def test_a_crash_between_write_and_ack_redelivers_and_leaves_no_duplicates(
        settings: Settings) -> None:
    records = [_rec(i) for i in range(200)]
    _publish(settings, records)

    def crash(part: ArchivedPart) -> None:
        assert all(f.exists() for f in part.files)     # written before the ack is due
        raise RuntimeError("killed between write and ack")

    with pytest.raises(RuntimeError, match="killed"):
        _archive(settings, durable="crashy", ack_wait_s=2.0, on_part=crash)
    assert len(load_decisions(settings.workspace, source="live")) == 200
    time.sleep(2.5)                                   # the consumer's ack wait runs out
    result = _archive(settings, durable="crashy")
    assert result.records == 200 and result.redelivered == 200
    assert _raw_rows(settings) == 400                 # the parts hold each record twice
    got = load_decisions(settings.workspace, source="live")
    assert len(got) == 200 and not got.duplicated(KEY).any()
    pd.testing.assert_frame_equal(_sorted(got), _sorted(records_frame(records)))
    assert _archive(settings, durable="crashy").records == 0


def test_archived_decisions_feed_the_reports(settings: Settings) -> None:
    records = [_rec(i) for i in range(400)]
    _publish(settings, records)
    assert _archive(settings).records == 400
    decisions = load_decisions(settings.workspace)    # source="all": events + live
    joined = decision_outcomes(decisions, Outcomes.empty())
    assert len(joined) == 400 and joined["bid"].sum() == 200
    spec = ExperimentSpec("exp", {"control": 0.5, "treatment": 0.5}, "control",
                          unit="request")
    report = ab_report(decisions, Outcomes.empty(), spec)
    assert {a.arm: a.units for a in report.arms} == {"control": 200, "treatment": 200}


def test_a_run_stops_at_the_end_the_stream_had_while_the_service_keeps_logging(
        settings: Settings) -> None:
    """With a live service the stream is never idle: a cron run must still end."""
    _publish(settings, [_rec(i) for i in range(200)])
    sink = NatsDecisionSink(settings.nats_url, stream=settings.nats_stream,
                            subject=settings.nats_subject, batch=64)
    stop = threading.Event()

    def service() -> None:
        i = 0
        while not stop.is_set():
            sink.extend([_rec(i + k, prefix="live") for k in range(20)])
            i += 20
            time.sleep(0.02)

    thread = threading.Thread(target=service, daemon=True)
    thread.start()
    try:
        t0 = time.monotonic()
        first = archive_decisions(settings, idle_timeout_s=30.0)
        assert time.monotonic() - t0 < 10 and first.records >= 200
    finally:
        stop.set()
        thread.join()
        sink.close()
    rest = _archive(settings)
    assert first.records + rest.records == 200 + sink.published
    assert len(load_decisions(settings.workspace, source="live")) == 200 + sink.published


def test_a_message_that_is_not_a_decision_is_terminated_and_listed(
        settings: Settings) -> None:
    _publish(settings, [_rec(1)])

    async def publish_raw() -> None:
        import nats

        nc = await nats.connect(NATS)
        try:
            js = nc.jetstream()
            await js.publish(settings.nats_subject, b'{"request_id": "x"}')
            await js.publish(settings.nats_subject, record_payload(_rec(2)))
        finally:
            await nc.close()

    asyncio.run(publish_raw())
    result = _archive(settings)
    assert result.records == 2 and result.messages == 3
    assert result.rejected_count == 1 and result.rejected == [2]
    assert _archive(settings).messages == 0           # terminated: never delivered again


def test_a_missing_stream_is_a_clear_error(tmp_path: Path) -> None:
    nats_or_skip()
    s = Settings(home=tmp_path / "ws", nats_url=NATS,  # type: ignore[call-arg]
                 nats_stream=f"TEST_NO_SUCH_{uuid.uuid4().hex[:8]}")
    with pytest.raises(ArchiveError, match="no JetStream stream"):
        archive_decisions(s, idle_timeout_s=IDLE)


def _cli(settings: Settings) -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """test root"""

    register(app, settings=lambda: settings, console=Console(width=200, force_terminal=False))
    return app


def test_cli_unreachable_nats_exits_non_zero_with_a_message(tmp_path: Path) -> None:
    s = Settings(home=tmp_path / "ws",  # type: ignore[call-arg]
                 nats_url=f"nats://127.0.0.1:{free_port()}")
    r = CliRunner().invoke(_cli(s), ["decisions", "archive"])
    assert r.exit_code == 1, r.output
    assert "error: cannot connect to NATS at nats://127.0.0.1:" in r.output
    assert "Traceback" not in r.output and not isinstance(r.exception, ArchiveError)


def test_the_adplatform_command_has_it(tmp_path: Path) -> None:
    """What an operator (or cron) runs: the console script, registered in mlops.cli."""
    exe = Path(sys.executable).parent / "adplatform"
    if not exe.exists():
        pytest.skip(f"no console script {exe}: pip install -e .")
    env = {**os.environ, "ADPLATFORM_HOME": str(tmp_path / "ws"),
           "ADPLATFORM_NATS_URL": f"nats://127.0.0.1:{free_port()}"}
    r = subprocess.run([str(exe), "decisions", "archive"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "cannot connect to NATS" in r.stdout and "Connect call failed" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr


def test_cli_archives_and_reports_the_days(settings: Settings) -> None:
    app = _cli(settings)
    _publish(settings, [_rec(i) for i in range(150)])   # 20:00 .. 02:15 the next day
    r = CliRunner().invoke(app, ["decisions", "archive", "--idle-timeout", str(IDLE)])
    assert r.exit_code == 0, r.output
    assert "archived 150 records in 2 files" in r.output
    assert "2024-03-01" in r.output and "2024-03-02" in r.output
    r = CliRunner().invoke(app, ["decisions", "archive", "--idle-timeout", str(IDLE)])
    assert r.exit_code == 0 and "archived 0 records in 0 files" in r.output, r.output
    other = settings.model_copy(update={"nats_stream": "TEST_ARCHIVE_MISSING"})
    r = CliRunner().invoke(_cli(other), ["decisions", "archive"])
    assert r.exit_code == 1 and "no JetStream stream 'TEST_ARCHIVE_MISSING'" in r.output


# --------------------------------------------------------------------------- decoding


def test_decode_round_trips_the_sink_payload() -> None:
    for i in (0, 3, 5, 7, 11):
        r = _rec(i)
        back = decode_record(record_payload(r))
        assert back.ts == (r.ts if r.ts.tzinfo else r.ts.replace(tzinfo=UTC))
        assert back.ts.tzinfo is UTC
        for name in DECISION_COLUMNS[1:]:
            value, got = getattr(r, name), getattr(back, name)
            if isinstance(value, float) and math.isnan(value):
                assert got is None                  # NaN travels as null: a null in parquet
            else:
                assert got == value, name
    assert parse_ts("2024-03-01T23:59:59.000005Z") == datetime(2024, 3, 1, 23, 59, 59, 5,
                                                               tzinfo=UTC)


@pytest.mark.parametrize("payload, why", [
    (b"not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (orjson.dumps({"request_id": "x"}), "missing"),
    (orjson.dumps({**orjson.loads(record_payload(_rec(1))), "extra": 1}), "extra"),
    (orjson.dumps({**orjson.loads(record_payload(_rec(1))), "price": "1.5"}), "price"),
    (orjson.dumps({**orjson.loads(record_payload(_rec(1))), "bid": 1}), "bid"),
    (orjson.dumps({**orjson.loads(record_payload(_rec(1))), "ts": 17}), "ts"),
    (orjson.dumps({**orjson.loads(record_payload(_rec(1))), "request_id": None}),
     "request_id"),
])
def test_decode_rejects_what_is_not_a_decision(payload: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        decode_record(payload)

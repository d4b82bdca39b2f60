"""``adplatform serve --workers 2`` on the trained workspace: two processes on one port
decide, log every decision once between them, share budgets and notice dedupe (a
notice reaches whichever worker its connection landed on, not the one that bid), and
answer every ``/metrics`` scrape for both."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from adplatform.config import Settings
from adplatform.eventlog import read_events
from adplatform.ports import free_port
from decisioning.outcomes import read_notices
from mlops.demo import ServiceProcess

from ._workers import Traffic, send_auctions_and_notices

pytestmark = pytest.mark.slow


def _part_numbers(root: Path, table: str, ids: set[str]) -> set[int]:
    import pyarrow.parquet as pq

    parts = set()
    for f in (root / table).glob("date=*/part-*.parquet"):
        if ids & set(pq.read_table(f, columns=["request_id"]).column(0).to_pylist()):
            parts.add(int(f.stem.split("-")[1]))
    return parts


def test_two_workers_log_once_and_share_budgets_and_notice_dedupe(
        trained_workspace: Settings, tmp_path: Path) -> None:
    from decisioning.sqlite_state import SqliteBudgetLedger
    from mlops.serve import shared_state_path

    ws = trained_workspace.workspace
    port = free_port()
    argv = [sys.executable, "-c", "from mlops.cli import main; main()", "serve",
            "--port", str(port), "--workers", "2", "--watch-interval", "0"]
    service = ServiceProcess(trained_workspace, port, tmp_path / "serve.log", argv=argv)
    traffic = Traffic()
    try:
        service.wait_ready(timeout_s=300)
        traffic = send_auctions_and_notices(service.url, ws, session=31)
    finally:
        service.stop()                         # SIGTERM: both workers flush their logs
    assert service.proc.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]

    ids = set(traffic.answered)
    log = read_events(ws.decisions, "decisions")
    ours = log[log["request_id"].isin(ids)]
    assert len(ours) == len(traffic.answered)
    assert not ours.duplicated(["request_id", "imp_id"]).any()
    # both workers decided: their parts carry both parities of part number
    assert {p % 2 for p in _part_numbers(ws.decisions, "decisions", ids)} == {0, 1}

    notices = read_notices(ws.decisions)
    mine = notices[notices["request_id"].isin({req["id"] for req, _ in traffic.notified})]
    assert (mine["kind"] == "billing").sum() == len(traffic.notified)
    assert (mine["kind"] == "win").sum() == len(traffic.notified)

    state = shared_state_path(trained_workspace)
    assert state is not None and state.exists()
    ledger = SqliteBudgetLedger(state)
    try:
        today = datetime.now(UTC).date()
        for cid, micros in traffic.billed.items():
            # only this test serves with shared state in this workspace
            assert ledger.spent_micros(cid, today) == micros
    finally:
        ledger.close()

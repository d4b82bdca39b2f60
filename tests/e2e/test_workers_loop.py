"""``adplatform serve --workers 2`` on the trained workspace: two processes on one port
decide, log every decision once between them, share budgets and notice dedupe (a
notice reaches whichever worker its connection landed on, not the one that bid), and
answer every ``/metrics`` scrape for both."""

from __future__ import annotations

import json
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from adplatform.config import Settings
from adplatform.eventlog import read_events
from decisioning.outcomes import read_notices
from mlops.demo import ServiceProcess
from simulator import LiveExchange, notice_calls

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _part_numbers(root: Path, table: str, ids: set[str]) -> set[int]:
    import pyarrow.parquet as pq

    parts = set()
    for f in (root / table).glob("date=*/part-*.parquet"):
        if ids & set(pq.read_table(f, columns=["request_id"]).column(0).to_pylist()):
            parts.add(int(f.stem.split("-")[1]))
    return parts


def _scraped_requests(url: str) -> int:
    text = httpx.get(f"{url}/metrics", timeout=10).text      # a new connection each time
    line = next(m for m in text.splitlines() if m.startswith("adplatform_bid_requests_total "))
    return int(float(line.split()[1]))


def test_two_workers_log_once_and_share_budgets_and_notice_dedupe(
        trained_workspace: Settings, tmp_path: Path) -> None:
    from decisioning.sqlite_state import SqliteBudgetLedger
    from mlops.serve import shared_state_path

    ws = trained_workspace.workspace
    port = _free_port()
    argv = [sys.executable, "-c", "from mlops.cli import main; main()", "serve",
            "--port", str(port), "--workers", "2", "--watch-interval", "0"]
    service = ServiceProcess(trained_workspace, port, tmp_path / "serve.log", argv=argv)
    answered: list[str] = []
    bids = []
    notified = []
    billed: dict[str, int] = {}
    try:
        service.wait_ready(timeout_s=300)
        live = LiveExchange.from_workspace(ws, session=31)
        for req in live.requests(200):
            # a new connection per request: the kernel spreads them over both workers
            r = httpx.post(f"{service.url}/openrtb/2.6/bid", content=json.dumps(req),
                           headers={"content-type": "application/json"}, timeout=10)
            assert r.status_code in (200, 204), r.text
            answered.append(req["id"])
            if r.status_code == 200:
                bids.append((req, r.json()))
        assert len(bids) >= 10, "too few bids to check notices"
        notified = bids[:30]
        for req, resp in notified:
            # the exchange's win and billing at CPM 2.5 (2,500 micro-dollars), each sent
            # twice on fresh connections: counted once whichever worker gets them
            calls = notice_calls(req, resp, {"won": True, "paid_price": 2.5})
            for kind, url in calls:
                first = httpx.get(url, timeout=10).json()["status"]
                again = httpx.get(url, timeout=10).json()["status"]
                assert (first, again) == ("recorded", "duplicate"), (kind, url)
            cid = resp["seatbid"][0]["bid"][0]["cid"]     # the campaign that bid
            billed[cid] = billed.get(cid, 0) + 2500
        # every scrape, whichever worker answers it, counts both workers' requests
        # (the other worker's values are at most its 1 s publishing interval behind)
        deadline = time.monotonic() + 60
        while _scraped_requests(service.url) != len(answered):
            assert time.monotonic() < deadline, "the workers' metrics never added up"
            time.sleep(0.5)
        assert {_scraped_requests(service.url) for _ in range(10)} == {len(answered)}
    finally:
        service.stop()                         # SIGTERM: both workers flush their logs
    assert service.proc.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]

    ids = set(answered)
    log = read_events(ws.decisions, "decisions")
    ours = log[log["request_id"].isin(ids)]
    assert len(ours) == len(answered)
    assert not ours.duplicated(["request_id", "imp_id"]).any()
    # both workers decided: their parts carry both parities of part number
    assert {p % 2 for p in _part_numbers(ws.decisions, "decisions", ids)} == {0, 1}

    notices = read_notices(ws.decisions)
    mine = notices[notices["request_id"].isin({req["id"] for req, _ in notified})]
    assert (mine["kind"] == "billing").sum() == len(notified)
    assert (mine["kind"] == "win").sum() == len(notified)

    state = shared_state_path(trained_workspace)
    assert state is not None and state.exists()
    ledger = SqliteBudgetLedger(state)
    try:
        today = datetime.now(UTC).date()
        for cid, micros in billed.items():
            # only this test serves with shared state in this workspace
            assert ledger.spent_micros(cid, today) == micros
    finally:
        ledger.close()

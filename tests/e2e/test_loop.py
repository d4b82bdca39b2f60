"""End to end at small scale: the trained workspace served over real HTTP.

simulate -> features -> train (session fixture) -> `adplatform serve` in its own
process -> live simulated auctions and the IAB OpenRTB 2.6 examples over HTTP ->
outcomes into the event log, decisions into the decision log (flushed on SIGTERM).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from adplatform.config import Settings
from adplatform.eventlog import read_events
from adplatform.ports import free_port
from mlops.demo import ServiceProcess, send_auctions
from simulator import LiveExchange

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(trained_workspace: Settings) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(trained_workspace, free_port(),
                          trained_workspace.workspace.root / "e2e-service.log")
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def test_live_auctions_flow_into_the_logs(trained_workspace: Settings,
                                          service: ServiceProcess) -> None:
    ws = trained_workspace.workspace
    live = LiveExchange.from_workspace(ws, session=7)
    stats = send_auctions(live, service.url, 300)
    written = live.flush(ws)
    assert stats.errors == 0 and stats.requests == 300
    assert stats.bids > 0 and stats.wins > 0 and stats.impressions == stats.wins
    # the exchange's notices reached the service: win + billing per win, loss per loss
    assert stats.notice_errors == 0
    assert stats.notices == 2 * stats.wins + (stats.bids - stats.wins)
    assert written["requests"] == 300
    assert written["auctions"] == stats.bids
    ids = set(read_events(ws.events, "requests")["request_id"])
    assert sum(i.startswith("live7-") for i in ids) == 300


def test_the_running_service_has_no_torch_and_a_registry_sidecar(
        service: ServiceProcess) -> None:
    pid = service.proc.pid
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "onnxruntime" in maps                      # it serves with ONNX Runtime ...
    assert "libtorch" not in maps                     # ... and never loaded torch
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    cmdlines = [Path(f"/proc/{c}/cmdline").read_bytes().split(b"\0") for c in children]
    assert [b"-m", b"mlops.registry_sidecar"] in [c[1:3] for c in cmdlines], cmdlines


def test_spec_examples_and_errors(service: ServiceProcess, shared_data: Path) -> None:
    folder = shared_data / "openrtb_spec_examples" / "iab_openrtb2.6"
    bids_by_file: dict[str, list[dict[str, Any]]] = {}
    with httpx.Client(base_url=service.url, timeout=5) as client:
        for path in sorted(folder.glob("request_*.json")):
            req = json.loads(path.read_text())
            r = client.post("/openrtb/2.6/bid", content=path.read_bytes())
            assert r.status_code in (200, 204), (path.name, r.status_code, r.text)
            if r.status_code == 204:
                bids_by_file[path.name] = []
                continue
            body = r.json()
            assert body["id"] == req["id"]
            imps = {i["id"]: i for i in req["imp"]}
            bids = [b for sb in body["seatbid"] for b in sb["bid"]]
            assert len({b["id"] for b in bids}) == len(bids), "bid ids are unique"
            for b in bids:
                assert b["impid"] in imps
                assert b["price"] >= imps[b["impid"]].get("bidfloor", 0.0)
            bids_by_file[path.name] = bids
        assert bids_by_file["request_1_simple_banner.json"]
        assert bids_by_file["request_3_mobile_app.json"]
        bad = client.post("/openrtb/2.6/bid", content=b"{not json")
        assert bad.status_code == 400 and "error" in bad.json()
        no_imp = client.post("/openrtb/2.6/bid", content=b'{"id": "x"}')
        assert no_imp.status_code == 400 and "imp" in no_imp.text


def test_every_decision_logged_once_after_sigterm(trained_workspace: Settings,
                                                  service: ServiceProcess) -> None:
    with httpx.Client(base_url=service.url, timeout=5) as client:
        live = LiveExchange.from_workspace(trained_workspace.workspace, session=8)
        answered = []
        for req in live.requests(100):
            r = client.post("/openrtb/2.6/bid", json=req)
            assert r.status_code in (200, 204)
            answered.append(req["id"])
    service.stop()                                  # SIGTERM: the sink flushes
    log = read_events(trained_workspace.workspace.decisions, "decisions")
    ours = log[log["request_id"].isin(answered)]
    assert len(ours) == len(answered)
    assert not ours.duplicated(["request_id", "imp_id"]).any()
    assert isinstance(ours, pd.DataFrame)


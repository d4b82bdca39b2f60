"""Reliability (c): a real serving process, SIGTERM in the middle of an open-loop run.

The trained workspace is served the way ``adplatform serve`` serves it
(``mlops.serve.build_decision_service``: real Feast online reader, the ONNX champion
from the MLflow registry, the embedded profile's stores, notice URLs on; then
``decisioning.server.serve``) in its own process, with its logs in a folder of the
test's own; and as ``adplatform serve --workers 2`` serves it (two worker processes on
one port, budgets and notice dedupe in a shared SQLite file). An open-loop client sends 200
requests/s for 15 s and calls the billing notice of every bid twice (and the win notice
once); half way through the process gets SIGTERM. Then:

* the process exits cleanly (uvicorn's graceful shutdown ran the lifespan, which
  flushed the decision and notice logs; uvicorn then re-raises SIGTERM; the workers'
  supervisor passes SIGTERM to each worker and exits 0);
* every answered request has exactly one decision-log record, and no decision is
  logged twice;
* every notice the server answered is in the notice log exactly once (repeats were
  answered ``duplicate`` and not logged), and the logged spend is, to the micro-dollar,
  the sum of the billed prices.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from adplatform.config import Settings
from adplatform.eventlog import read_events
from decisioning.budget import cpm_to_micros
from decisioning.outcomes import read_notices
from tests.decisioning.conftest import free_port

pytestmark = pytest.mark.slow

RATE = 200.0
DURATION_S = 15.0
SIGTERM_AT_S = 7.5

_SERVER = """
import sys
from pathlib import Path
from adplatform.config import Settings
from decisioning.app import create_app
from decisioning.server import serve
from mlops.serve import build_decision_service, keep_torch_out, notice_url

keep_torch_out()
home, port, log_root = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
settings = Settings(home=home)
svc = build_decision_service(settings, notice_base_url=notice_url(settings, "127.0.0.1", port),
                             log_root=log_root)
serve(create_app(svc.engine, notices=svc.notices), host="127.0.0.1", port=port)
"""

_WORKERS = """
import sys
from pathlib import Path
from adplatform.config import Settings
from decisioning.workers import serve_workers

home, port, log_root = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
sys.exit(serve_workers("mlops.serve:worker_app",
                       (Settings(home=home), "127.0.0.1", port, None,
                        log_root / "state.sqlite", log_root), workers=2, port=port))
"""


def _fill(url: str, request_id: str, price: str) -> str:
    for k, v in (("${AUCTION_ID}", request_id), ("${AUCTION_IMP_ID}", "1"),
                 ("${AUCTION_PRICE}", price), ("${AUCTION_CURRENCY}", "USD")):
        url = url.replace(k, v)
    return url


class _Pool:
    """A minimal keep-alive HTTP/1.1 client over asyncio streams (httpx's async pool is
    far slower than the server here and would turn an open-loop run into a closed one)."""

    def __init__(self, port: int, max_conns: int = 256) -> None:
        self.port, self.max_conns = port, max_conns
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.open = 0

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        conn = self.idle.pop() if self.idle else None
        if conn is None:
            if self.open >= self.max_conns:
                raise ConnectionError("pool exhausted")
            self.open += 1
            try:
                conn = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                self.open -= 1
                raise
        reader, writer = conn
        try:
            writer.write((f"{method} {path} HTTP/1.1\r\nHost: bidder\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(body)}"
                          "\r\n\r\n").encode() + body)
            line = await asyncio.wait_for(reader.readline(), 10)
            if not line:
                raise ConnectionError("closed")
            status, length, close = int(line.split(b" ", 2)[1]), 0, False
            while (h := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = h.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
                elif name.lower() == b"connection" and b"close" in value.lower():
                    close = True
            data = await reader.readexactly(length) if length else b""
        except (TimeoutError, OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            self.open -= 1
            writer.close()
            raise ConnectionError("request failed") from None
        if close:
            self.open -= 1
            writer.close()
        else:
            self.idle.append(conn)
        return status, data


async def _drive(port: int, bodies: list[bytes], ids: list[str], stop_at: float,
                 terminate: Any) -> dict[str, Any]:
    answered: dict[str, int] = {}
    notices: list[tuple[str, str, str, str]] = []       # (kind, url, price, status)
    pool = _Pool(port)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.1

    async def notify(kind: str, target: str, price: str) -> None:
        path = target.split(f"127.0.0.1:{port}", 1)[1]
        try:
            status, data = await pool.request("GET", path)
        except ConnectionError:
            return
        if status == 200:
            notices.append((kind, target, price, orjson.loads(data)["status"]))

    async def one(i: int) -> None:
        try:
            status, data = await pool.request("POST", "/openrtb/2.6/bid", bodies[i])
        except ConnectionError:
            return                                      # not answered (shutting down)
        answered[ids[i]] = status
        if status == 200:
            bid = orjson.loads(data)["seatbid"][0]["bid"][0]
            price = f"{bid['price'] * 0.8:.4f}"         # cleared below the bid
            burl = _fill(bid["burl"], ids[i], price)
            await notify("win", _fill(bid["nurl"], ids[i], price), price)
            await notify("billing", burl, price)
            await notify("billing", burl, price)        # the exchange repeats it

    tasks = []
    terminated = False
    for i in range(len(bodies)):
        due = start + i / RATE
        if not terminated and due - start >= stop_at:
            terminate()
            terminated = True
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i)))
    await asyncio.gather(*tasks)
    return {"answered": answered, "notices": notices}


@pytest.mark.parametrize("server", [_SERVER, _WORKERS], ids=["one process", "two workers"])
def test_sigterm_mid_run_loses_no_decision_and_counts_notices_once(
        trained_workspace: Settings, tmp_path: Path, server: str) -> None:
    from simulator import LiveExchange

    ws = trained_workspace.workspace
    n = int(RATE * DURATION_S)
    reqs = list(LiveExchange.from_workspace(ws, session=21).requests(n))
    assert all(len(r["imp"]) == 1 for r in reqs)
    bodies = [json.dumps(r).encode() for r in reqs]
    ids = [r["id"] for r in reqs]
    port = free_port()
    log_root = tmp_path / "logs"
    with (tmp_path / "server.log").open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", server, str(ws.root), str(port),
                                 str(log_root)], stdout=out, stderr=subprocess.STDOUT,
                                cwd=Path(__file__).resolve().parents[2])
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 180
            while True:
                assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
                try:
                    if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the server did not become ready"
                time.sleep(0.2)
            result: dict[str, Any] = {}

            def run() -> None:
                result.update(asyncio.run(_drive(
                    port, bodies, ids, SIGTERM_AT_S,
                    lambda: proc.send_signal(signal.SIGTERM))))

            t = threading.Thread(target=run)
            t.start()
            t.join(DURATION_S + 120)
            code = proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
    log_text = (tmp_path / "server.log").read_text()
    # uvicorn shuts down gracefully, then re-raises the signal: -SIGTERM is a clean exit.
    assert code in (0, -signal.SIGTERM), log_text[-3000:]
    assert "Traceback" not in log_text, log_text[-3000:]
    answered: dict[str, int] = result["answered"]
    assert set(answered.values()) <= {200, 204}, answered
    assert 0 < len(answered) < n                       # SIGTERM cut the run short
    assert sum(s == 200 for s in answered.values()) > 0

    log = read_events(log_root, "decisions")
    assert not log.duplicated(["request_id", "imp_id"]).any()
    logged = log.groupby("request_id").size()
    missing = [rid for rid in answered if logged.get(rid, 0) != 1]
    assert not missing, f"{len(missing)} answered requests without exactly one record"
    bids = set(log.loc[log["bid"], "request_id"])
    assert {rid for rid, s in answered.items() if s == 200} <= bids

    notices = read_notices(log_root)
    assert not notices.duplicated(["kind", "request_id", "imp_id", "bid_id"]).any()
    answered_notices: list[tuple[str, str, str, str]] = result["notices"]
    recorded = [(k, u, p) for k, u, p, st in answered_notices if st == "recorded"]
    assert len(recorded) == len(notices)                # each logged once
    assert any(st == "duplicate" for *_, st in answered_notices)
    billing = notices[notices["kind"] == "billing"]
    billed = {u: p for k, u, p in recorded if k == "billing"}
    assert len(billing) == len(billed)
    assert int(billing["cost_micros"].sum()) == sum(cpm_to_micros(p) for p in billed.values())
    by_kind = {k: sum(1 for kk, *_ in answered_notices if kk == k) for k in ("win", "billing")}
    assert by_kind["billing"] >= len(billed)

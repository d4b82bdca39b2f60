"""HTTP suite: the decision service against a trivial FastAPI handler, open loop.

Both run under the same uvicorn set-up, one process each, and get the same schedule
of OpenRTB requests from the simulator (single imp). The trivial handler's latency is
the floor any Python HTTP service pays; the ratio shows what the decision costs.
"""

from __future__ import annotations

import orjson

from adplatform.config import Settings
from adplatform.ports import free_port
from bench.harness import Row, Server, load_row, with_ratios
from bench.loadgen import LoadResult, run_load, wait_until_healthy
from decisioning.server import KEEP_ALIVE_S

PATH = "/openrtb/2.6/bid"


def _row(name: str, baseline: str, res: LoadResult) -> Row:
    return load_row("http", name, baseline, res)


def request_bodies(settings: Settings, n: int, seed: int) -> list[bytes]:
    from simulator import LiveExchange

    live = LiveExchange.from_workspace(settings.workspace, session=seed)
    return [orjson.dumps(r) for r in live.requests(n)]


def run(settings: Settings, *, rates: list[float], duration_s: float, seed: int) -> list[Row]:
    bodies = request_bodies(settings, 5000, seed)
    env = {"ADPLATFORM_HOME": str(settings.workspace.root)}
    rows: list[Row] = []
    port_t, port_d = free_port(), free_port()
    log_dir = settings.workspace.root / "bench"
    log_dir.mkdir(parents=True, exist_ok=True)
    trivial = ("import uvicorn; from bench.trivial_app import create_app; "
               f"uvicorn.run(create_app(), host='127.0.0.1', port={port_t}, "
               f"log_level='warning', access_log=False, timeout_keep_alive={KEEP_ALIVE_S})")
    decision = (f"import sys; sys.argv = ['adplatform', 'serve', '--port', '{port_d}']; "
                "from mlops.cli import main; main()")
    with Server(trivial, env, log_dir / "trivial.log"), \
            Server(decision, env, log_dir / "decision.log"):
        wait_until_healthy(f"http://127.0.0.1:{port_t}/healthz")
        wait_until_healthy(f"http://127.0.0.1:{port_d}/readyz", timeout_s=120)
        # Warm-up: JIT-free Python still has caches, connections and allocator warm-up.
        run_load("127.0.0.1", port_d, PATH, bodies, rate=200, duration_s=2)
        for rate in rates:
            base = run_load("127.0.0.1", port_t, PATH, bodies, rate=rate, duration_s=duration_s)
            res = run_load("127.0.0.1", port_d, PATH, bodies, rate=rate, duration_s=duration_s)
            b = _row("trivial FastAPI handler", "-", base)
            rows += [b, with_ratios(_row("decision service", "trivial FastAPI handler", res), b)]
    return rows

"""The decision service overloaded: what an exchange gets when more requests come than
one process can decide.

At ``overload_rate`` (2,000/s: twice the level rate, past what one process decides on
the 2-core bench machine) for ``overload_s``, a fresh one-process decision service as
``adplatform serve`` runs it, which accepts every pending connection at once
(:mod:`decisioning.listener`), against the same service listening through uvicorn's
own server (uvloop: one accept per event-loop iteration). Overload is where they
differ: the generator's 8 pooled connections are busy, so it opens more, as an
exchange does (up to 256; a request finding all of them busy is refused and counted as
an error), and the requests on connections the service has not accepted wait unseen.

Each row has the answers and bids after the requests' tmax, the refused requests
(errors), the connections opened, the slowest answer (``max_ms``) and the requests the
service shed past their budget (``shed``, from its ``/metrics``). The target row's
ratios are against the baseline row.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from adplatform.ports import free_port
from bench.harness import Row, Server, with_ratios
from bench.loadgen import run_load, wait_until_healthy

if TYPE_CHECKING:
    from bench.decision import DecisionBenchConfig

TARGET = "decision service, overloaded"
BASELINE = "decision service, overloaded, uvloop's accept"


def shed_total(port: int) -> float:
    """The service's ``adplatform_shed_total`` counter (requests shed past their budget)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10.0).text
    for line in text.splitlines():
        if line.startswith("adplatform_shed_total "):
            return float(line.split()[1])
    raise LookupError("adplatform_shed_total not in /metrics")


def overload(home: str, campaigns: Path, bodies: list[bytes], cfg: DecisionBenchConfig,
             out: Path, env: dict[str, str]) -> list[Row]:
    """The baseline row, then the target row with its ratios against it."""
    from bench.decision import PATH, decision_row  # it imports this module

    rows: dict[bool, Row] = {}
    for accept_all in (False, True):
        port = free_port()
        log_root = out / f"overload-log-{'all' if accept_all else 'uvloop'}-{port}"
        code = (f"from bench.decision import serve_decision; serve_decision({home!r}, "
                f"{port}, {str(campaigns)!r}, {str(log_root)!r}, accept_all={accept_all})")
        log = out / f"overload-{'all' if accept_all else 'uvloop'}.log"
        with Server(code, env, log) as server:
            wait_until_healthy(f"http://127.0.0.1:{port}/readyz", timeout_s=180)
            run_load("127.0.0.1", port, PATH, bodies, rate=200, duration_s=cfg.warmup_s)
            server.settle()
            shed0 = shed_total(port)
            res = run_load("127.0.0.1", port, PATH, bodies, rate=cfg.overload_rate,
                           duration_s=cfg.overload_s)
            server.settle()
            shed = shed_total(port) - shed0
        rows[accept_all] = decision_row(
            TARGET if accept_all else BASELINE, "-", res, cfg, shed=shed,
            max_ms=round(max(res.latencies_ms, default=float("nan")), 1))
    target = replace(rows[True], baseline=BASELINE)
    return [rows[False], with_ratios(target, rows[False])]


__all__ = ["BASELINE", "TARGET", "overload", "shed_total"]

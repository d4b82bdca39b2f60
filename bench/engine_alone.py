"""The decision suite's in-process rows: ``DecisionEngine.decide`` without HTTP, back to
back and paced at the level rate (:func:`engine_alone`)."""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

import numpy as np

from adplatform.config import Settings
from bench.harness import Row, rounded_pct, with_ratios
from bench.steal import read_ticks, steal_pct


def engine_alone(world: Settings, campaigns: Path, bodies: list[bytes], n: int,
                 log_root: Path, *, paced_rate: float = 0.0, paced_n: int = 0) -> list[Row]:
    """``decide`` in process: the engine's own cost (features, model, pricing, log),
    ``n`` auctions back to back; then, with ``paced_n``, as many more started
    ``1 / paced_rate`` apart (sleeping in between, as a server between requests), with
    the back-to-back row as baseline: what spacing alone costs the same work."""
    from bench.decision import build_decision_service  # it imports this module
    from decisioning.openrtb import parse_request

    svc = build_decision_service(world, campaigns, log_root, "http://127.0.0.1:1/notice")
    engine = svc.engine
    reqs = [parse_request(b) for b in bodies]
    for r in reqs[:500]:
        engine.decide(r, engine.clock.monotonic())
    gc.collect()
    gc.freeze()
    parse = np.empty(min(n, len(bodies)))
    for i in range(len(parse)):
        t0 = time.perf_counter()
        parse_request(bodies[i])
        parse[i] = time.perf_counter() - t0
    lat, cpu_s, wall_s, steal = _decide_loop(engine, reqs, n, 0.0)
    stats = engine.stats()
    rows = [Row(suite="decision", target="engine alone (decide, in process)", baseline="-",
                rate=None, p50_ms=float(np.percentile(lat, 50)),
                p99_ms=float(np.percentile(lat, 99)), throughput=n / wall_s,
                extra={"parse_p50_ms": float(np.percentile(parse, 50) * 1000),
                       "parse_p99_ms": float(np.percentile(parse, 99) * 1000),
                       "cpu_ms_per_decide": round(1000.0 * cpu_s / n, 3),
                       "bids": stats.get("bids", 0), "decisions": stats.get("decisions", 0),
                       "steal_pct": steal, "goal_p99_ms": 1.0})]
    if paced_n > 0 and paced_rate > 0:
        lat, cpu_s, wall_s, steal = _decide_loop(engine, reqs, paced_n, 1.0 / paced_rate,
                                                 offset=n)
        rows.append(with_ratios(Row(
            suite="decision", target=f"engine alone, paced at {paced_rate:,.0f}/s",
            baseline=rows[0].target, rate=paced_rate, p50_ms=float(np.percentile(lat, 50)),
            p99_ms=float(np.percentile(lat, 99)), throughput=paced_n / wall_s,
            extra={"cpu_ms_per_decide": round(1000.0 * cpu_s / paced_n, 3),
                   "steal_pct": steal}), rows[0]))
    svc.close()
    gc.unfreeze()
    return rows


def _decide_loop(engine: Any, reqs: list[Any], n: int, gap_s: float, offset: int = 0
                 ) -> tuple[np.ndarray, float, float, float | str]:
    """``n`` decides (request ``offset + i`` of the cycle), each started ``gap_s`` after
    the previous one's due time (0: back to back). Returns each decide's milliseconds,
    the thread's CPU seconds, the wall seconds and the machine's steal in % (from two
    readings: a sampling thread would take the GIL from the loop it measures)."""
    lat = np.empty(n)
    ticks0 = read_ticks()
    cpu0 = time.thread_time()
    t_start = time.perf_counter()
    for i in range(n):
        r = reqs[(offset + i) % len(reqs)]
        if gap_s:
            wait = t_start + i * gap_s - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        t0 = time.perf_counter()
        engine.decide(r, t0)
        lat[i] = time.perf_counter() - t0
    wall = time.perf_counter() - t_start
    cpu = time.thread_time() - cpu0
    return lat * 1000.0, cpu, wall, rounded_pct(steal_pct(ticks0, read_ticks()))

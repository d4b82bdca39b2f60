"""Decision suite: the decision service end to end, against two baselines, open loop.

Setting: single-imp OpenRTB requests from the simulator, 20 candidate ads per auction
(the bench world's campaigns plus low-value filler campaigns so that every slot has at
least 20 eligible creatives; ``max_candidates=20``), embedded profile (Feast SQLite
online store through the cached reader; the fraud, CTR and shading champions in process
on ONNX Runtime, the fraud model at its registered threshold, bids priced by the shading
model; in-memory budgets), notice URLs on. Every server is one uvicorn process, except the multi-worker
row's; the open-loop load generator (:mod:`bench.loadgen`) runs in its own process.

Rows:

* ``engine alone``: ``DecisionEngine.decide`` in this process (no HTTP), p50/p99 and
  CPU per decide, back to back; then paced at ``level_rate`` (each decide started
  ``1 / level_rate`` after the last, the loop sleeping in between as a server idles
  between requests), against the back-to-back row: what spacing alone costs;
* at ``level_rate`` (1,000 req/s): the trivial FastAPI handler, the naive bidder (per
  request: ``FeatureStore.get_online_features`` for each model's feature service and
  ``mlflow.pyfunc`` ``predict`` for each registered model), the decision service with
  its bid routes on the ASGI path (``serve(fast_bid=False)``), and the decision service
  as ``adplatform serve`` runs it (bid routes answered in the HTTP protocol), with the
  decision service's ratios against the other three; and the decision service as
  ``adplatform serve --workers 2`` runs it (two worker processes on one port, budgets,
  caps and notice dedupe in the shared SQLite state; its load generator takes pooled
  connections in turn, ``pool="fifo"``, from 16 warm ones, so that the load reaches
  both workers), with its ratio against the one-process service;
* the decision service's level run repeated (``level_repeats`` runs in all: the extra
  ones back to back after the level phase) and the median of their p50 and p99: one
  run's p99 varies from run to run;
* with a CPU latency request held (``python -m bench`` holds one while it measures;
  :mod:`bench.cpu_idle`): the trivial handler's and the decision service's level runs
  once more with the request released, the machine's own idle policy, and the held
  runs' ratios against them (the cost of waking halted CPUs, in the same run);
* a rate ladder for each server: the highest rate with p99 ≤ 10 ms (and no errors),
  a step that misses tried once more (``ladder_retries``) before the ladder stops;
* overloaded (:mod:`bench.overload`): ``overload_rate`` on a fresh one-process service,
  against the same service listening through uvloop's own accept;
* a soak at ``level_rate`` for ``soak_s`` seconds: zero errors, and the decision log
  (flushed by SIGTERM) holds exactly one record per answered request.

Every row measured under load, and the engine-alone row, carries the machine's steal
during it (``steal_pct``, and ``steal_peak_pct`` for the load rows; :mod:`bench.steal`):
the CPU time the hypervisor took, which no change to the service can win back. Each
load row also counts the answers, and the bids, that came after the requests' ``tmax``
(``answers_after_tmax``, ``bids_after_tmax``): an exchange has moved on by then.

Goals (a quiet machine): p50 ≤ 1 ms and p99 ≤ 3 ms at 1,000 req/s, engine alone
p99 ≤ 1 ms, ≥ 2,000 req/s within p99 ≤ 10 ms. ``--quick`` shortens every phase.
Run: ``python -m bench.decision [--quick]`` (or through ``python -m bench``).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Request

from adplatform.config import Settings
from adplatform.ports import free_port
from bench.cpu_idle import CpuLatencyRequest
from bench.engine_alone import engine_alone
from bench.harness import Row, Server, load_row, with_ratios
from bench.loadgen import LoadResult, run_load, wait_until_healthy
from bench.overload import overload
from decisioning.server import KEEP_ALIVE_S

PATH = "/openrtb/2.6/bid"
P99_BUDGET_MS = 10.0
# The level goal's p99: answers slower than this are counted, and grouped into episodes,
# in every load row (decision_row).
SLOW_MS = 3.0
K = 20
_SIZES = (("banner", 300, 250), ("banner", 320, 50), ("banner", 728, 90),
          ("banner", 160, 600), ("video", 640, 480))


@dataclass(frozen=True)
class DecisionBenchConfig:
    level_rate: float = 1000.0
    level_s: float = 10.0
    ladder: tuple[float, ...] = (250.0, 500.0, 750.0, 1000.0, 1250.0, 1500.0, 1750.0, 2000.0,
                                 2500.0, 3000.0, 4000.0)
    step_s: float = 5.0
    # A ladder step that misses the budget is run once more before the ladder stops:
    # one stall of 30-250 ms (the shared 2-core machine; README) puts a 5 s step's p99
    # over 10 ms at any rate, and stopped the one-process ladder at its first step
    # (250/s) in two runs on 2026-12-06. Both tries are rows.
    ladder_retries: int = 1
    soak_s: float = 60.0
    warmup_s: float = 2.0
    # Level runs of the decision service in all (the extra ones after the level phase):
    # one 10 s p99 on a 2-core machine shared with the generator varies by 2-3x from run
    # to run, so the table shows every run and their median beside the first one.
    level_repeats: int = 3
    engine_n: int = 20_000
    # Decides started 1 / level_rate apart after the back-to-back ones: at 1,000/s a
    # server idles between requests, and on the bench VM the same decides cost 1.14-1.42x
    # their back-to-back CPU spaced 1 ms apart (decision runs 20-21, README); 5 s of them.
    engine_paced_n: int = 5_000
    # Distinct request bodies, replayed in a cycle: 20 s of traffic at 1,000/s, so a
    # body comes back only long after the feature cache's 5 s TTL (a 5 s cycle met
    # every cached entry just as it expired).
    n_bodies: int = 20_000
    seed: int = 99
    workers: int = 2          # the multi-worker row: one per core of the 2-core dev machine
    # The requests' OpenRTB tmax (the simulator's; run() reads it from the bodies): bids
    # answered later are counted per row (bids_after_tmax), the exchange discards them.
    tmax_ms: float = 100.0
    worker_warm_conns: int = 16  # hashed over 2 workers by the kernel: 8 ± 2 each
    # The overload rows (bench.overload): twice the level rate, past one process's
    # 1,250-1,500/s on the bench machine (runs 19-24), so that the generator's pool is
    # busy and it opens connections, as an exchange does.
    overload_rate: float = 2000.0
    overload_s: float = 5.0

    @classmethod
    def quick(cls) -> DecisionBenchConfig:
        return cls(level_s=3.0, ladder=(500.0, 1000.0, 2000.0, 3000.0), step_s=2.0,
                   soak_s=10.0, warmup_s=1.0, engine_n=3000, engine_paced_n=1000, n_bodies=2000,
                   level_repeats=1, overload_s=2.0)


# --------------------------------------------------------------------------- inputs


def bench_campaigns(world: Settings, out: Path) -> Path:
    """The world's campaigns (budgets lifted: the bench measures latency, not pacing)
    plus five untargeted low-value fillers with four creatives per slot size."""
    doc = json.loads((world.workspace.world / "campaigns.json").read_text())
    for c in doc["campaigns"]:
        if c.get("daily_budget") is not None:
            c["daily_budget"] = 1e9
    for i in range(5):
        creatives = [{"creative_id": f"bench{i}{fmt[0]}{w}x{h}{j}", "format": fmt, "w": w,
                      "h": h, "topic": (i + j) % 8, "cat": [], "adm": "<div>bench</div>"}
                     for fmt, w, h in _SIZES for j in range(4)]
        doc["campaigns"].append({
            "campaign_id": f"bench{i}", "advertiser": "bench filler",
            "adomain": [f"filler{i}.example"], "cat": ["IAB3"], "goal": "cpc",
            "cpc": 0.01 + i / 1000, "daily_budget": None, "status": "active",
            "targeting": {}, "creatives": creatives})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc))
    return out


def request_bodies(world: Settings, n: int, seed: int) -> list[bytes]:
    from simulator import LiveExchange

    live = LiveExchange.from_workspace(world.workspace, session=seed)
    return [json.dumps(r).encode() for r in live.requests(n)]


def build_decision_service(world: Settings, campaigns: Path, log_root: Path,
                           notice_base_url: str, *, worker: tuple[int, int] = (0, 1),
                           shared_state: Path | None = None) -> Any:
    """The service as ``adplatform serve`` wires it (:func:`mlops.serve.build_decision_
    service`: the champions, the fraud model at its registered threshold, the shading
    model's pricer), with the bench's campaigns and ``max_candidates``."""
    from mlops.registry_sidecar import RegistrySidecar
    from mlops.serve import build_decision_service as build
    from mlops.serve import engine_config

    with RegistrySidecar(world) as registry:
        cfg = engine_config(world, registry=registry, max_candidates=K)
        return build(world, config=cfg, registry=registry, notice_base_url=notice_base_url,
                     log_root=log_root, worker=worker, shared_state=shared_state,
                     campaigns_path=campaigns)


# --------------------------------------------------------------------------- servers


def serve_decision(home: str, port: int, campaigns: str, log_root: str,
                   fast_bid: bool = True, accept_all: bool = True) -> None:
    """Subprocess entry: the decision service as ``adplatform serve`` would run it
    (``fast_bid`` False: bid routes on the ASGI path, the protocol fast path's baseline;
    ``accept_all`` False: uvloop's one accept per loop iteration, the listener's)."""
    from decisioning.app import create_app
    from decisioning.server import serve

    world = Settings(home=Path(home))  # type: ignore[call-arg]
    svc = build_decision_service(world, Path(campaigns), Path(log_root),
                                 f"http://127.0.0.1:{port}/notice")
    serve(create_app(svc.engine, notices=svc.notices), host="127.0.0.1", port=port,
          fast_bid=fast_bid, accept_all=accept_all)


@contextmanager
def decision_worker_app(index: int, count: int, home: str, port: int, campaigns: str,
                        log_root: str, state: str) -> Iterator[Any]:
    """:func:`decisioning.workers.serve_workers`' factory for the multi-worker row."""
    from decisioning.app import create_app

    world = Settings(home=Path(home))  # type: ignore[call-arg]
    svc = build_decision_service(world, Path(campaigns), Path(log_root),
                                 f"http://127.0.0.1:{port}/notice", worker=(index, count),
                                 shared_state=Path(state))
    yield create_app(svc.engine, notices=svc.notices)   # its lifespan closes the service


def serve_decision_workers(home: str, port: int, campaigns: str, log_root: str,
                           workers: int) -> None:
    """Subprocess entry: the decision service as ``adplatform serve --workers N`` runs it
    (like the one-process row, without the registry sidecar; and without the pooled
    ``/metrics`` files, which nothing scrapes here)."""
    from decisioning.workers import serve_workers

    serve_workers("bench.decision:decision_worker_app",
                  (home, port, campaigns, log_root, str(Path(log_root) / "state.sqlite")),
                  workers=workers,
                  host="127.0.0.1", port=port)


def create_naive_app(world: Settings, campaigns: Path) -> Any:
    """What a Feast + MLflow user would write first: per request and per model, one
    ``get_online_features`` on the model's feature service and one pyfunc ``predict``."""
    from datetime import UTC, datetime

    import mlflow
    import orjson
    from fastapi import FastAPI, Response

    from decisioning.campaigns import Blocklist, FileCampaignStore
    from decisioning.openrtb import parse_request
    from decisioning.request_context import imp_context, request_facts
    from features.ivt import ivt_columns
    from features.reader import context_columns
    from features.store import open_store
    from features.vectorize import (
        CTR_RAW,
        FRAUD_RAW,
        SHADING_RAW,
        ctr_matrix,
        fraud_matrix,
        shading_matrix,
    )
    from mlops.errors import ModelNotFound
    from mlops.registry import configure, resolve

    store = open_store(world)
    configure(world)
    services = {"ctr": "ctr_v1", "fraud": "fraud_v1", "shading": "shading_v1"}
    models: dict[str, Any] = {}
    for name in services:
        try:
            resolve(world, name)
        except ModelNotFound:
            continue
        models[name] = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    fs = {name: store.get_feature_service(services[name]) for name in models}
    camp = FileCampaignStore(campaigns)
    app = FastAPI()

    def column(d: dict[str, list[Any]], f: str, n: int) -> np.ndarray:
        return np.asarray([np.nan if v is None else v for v in d.get(f, [None] * n)],
                          dtype=np.float64)

    def predict(name: str, x: np.ndarray) -> np.ndarray:
        out = models[name].predict(x)
        first = next(iter(out.values())) if isinstance(out, dict) else out
        return np.asarray(first, dtype=np.float64).reshape(-1)

    @app.post(PATH)
    async def bid(request: Request) -> Response:
        req = parse_request(await request.body())
        now = datetime.now(UTC)
        imp = req.imp[0]
        facts = request_facts(req)
        cands = camp.candidates(imp, facts, Blocklist.from_request(req), now.date(), K)
        if not cands:
            return Response(status_code=204)
        ctx = imp_context(facts, req.id, imp, now)
        ads = [c.ad for c in cands]
        k = len(ads)
        rows = [{"user_id": ctx.user_id, "creative_id": a.creative_id,
                 "publisher_id": ctx.publisher_id} for a in ads]
        d = store.get_online_features(features=fs["ctr"], entity_rows=rows).to_dict()
        raw = {f: column(d, f, k) for f in CTR_RAW}
        pctr = predict("ctr", ctr_matrix({**raw, **context_columns(ctx, ads)}))
        one = {k_: v[:1] for k_, v in context_columns(ctx, ads[:1]).items()}
        if "fraud" in models:
            d = store.get_online_features(features=fs["fraud"], entity_rows=[
                {"ip": ctx.ip, "device_id": ctx.device_id}]).to_dict()
            predict("fraud", fraud_matrix({**{f: column(d, f, 1) for f in FRAUD_RAW}, **one,
                                           **ivt_columns([ctx.ip], [ctx.ua], None)}))
        if "shading" in models:
            d = store.get_online_features(features=fs["shading"], entity_rows=[
                {"publisher_id": ctx.publisher_id}]).to_dict()
            predict("shading", shading_matrix({**{f: column(d, f, 1) for f in SHADING_RAW},
                                               **one}))
        values = pctr * np.array([c.value_per_click for c in cands])
        best = int(np.argmax(values))
        price = float(values[best]) * 0.7
        if price < imp.bidfloor or price <= 0:
            return Response(status_code=204)
        c = cands[best]
        body = {"id": req.id, "cur": "USD", "seatbid": [{"bid": [{
            "id": f"{req.id}-1", "impid": imp.id, "price": price,
            "crid": c.creative.creative_id, "cid": c.campaign.campaign_id,
            "adomain": list(c.adomain)}]}]}
        return Response(orjson.dumps(body), media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def serve_naive(home: str, port: int, campaigns: str) -> None:
    import uvicorn

    app = create_naive_app(Settings(home=Path(home)), Path(campaigns))  # type: ignore[call-arg]
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                timeout_keep_alive=KEEP_ALIVE_S)   # as decisioning.server.serve


# --------------------------------------------------------------------------- phases


def decision_row(target: str, baseline: str, res: LoadResult, cfg: DecisionBenchConfig,
                 **extra: float | str) -> Row:
    """A load row with the answers that came after the requests' tmax: bids (which the
    exchange discards, their budget reserved for nothing) and all, and the bids that
    came after tmax counted from when their request left the generator (its own late
    sending excluded); and the answers slower than the level goal's p99
    (:data:`SLOW_MS`), with the stall episodes they fall into and the largest of them
    (:meth:`LoadResult.slow_episodes`)."""
    episodes = res.slow_episodes(SLOW_MS)
    largest = max(episodes, key=lambda e: e.answers, default=None)
    return load_row("decision", target, baseline, res,
                    bids_after_tmax=res.answered_after(cfg.tmax_ms, 200),
                    answers_after_tmax=res.answered_after(cfg.tmax_ms),
                    bids_after_tmax_from_send=res.answered_after(cfg.tmax_ms, 200,
                                                                 from_send=True),
                    over_3ms=sum(e.answers for e in episodes),
                    episodes_over_3ms=len(episodes),
                    largest_episode="-" if largest is None else (
                        f"{largest.answers} answers due {largest.start_s:.2f}-"
                        f"{largest.end_s:.2f} s, up to {largest.worst_ms:.1f} ms"),
                    **extra)


def _ladder(port: int, name: str, bodies: list[bytes], cfg: DecisionBenchConfig,
            server: Server, **load: Any) -> tuple[list[Row], float]:
    """Steps up the rates until a step misses the budget (p99 ≤ 10 ms, no errors) in
    each of its ``1 + cfg.ladder_retries`` tries; a row per try. Returns the rows and
    the highest rate a try met the budget at."""
    rows, best = [], 0.0
    for rate in cfg.ladder:
        ok = False
        for attempt in range(1 + max(0, cfg.ladder_retries)):
            res = run_load("127.0.0.1", port, PATH, bodies, rate=rate,
                           duration_s=cfg.step_s, **load)
            server.settle()
            ok = res.errors == 0 and res.percentile(99) <= P99_BUDGET_MS
            label = "ladder step" if attempt == 0 else f"ladder step, try {attempt + 1}"
            rows.append(decision_row(f"{name}: {label}", "-", res, cfg, within_budget=str(ok)))
            if ok:
                break
        if not ok:
            break
        best = rate
    return rows, best


def _level_run(port: int, bodies: list[bytes], cfg: DecisionBenchConfig,
               server: Server) -> LoadResult:
    """One more run of a server at the level rate, then wait until it is idle again."""
    res = run_load("127.0.0.1", port, PATH, bodies, rate=cfg.level_rate,
                   duration_s=cfg.level_s)
    server.settle()
    return res


def _repeats(port: int, name: str, bodies: list[bytes], cfg: DecisionBenchConfig,
             server: Server, first: Row) -> list[Row]:
    """``cfg.level_repeats - 1`` more level runs of one server, back to back, a row for
    each, and a row with the median p50 and p99 of all of them (``first`` included)."""
    if cfg.level_repeats <= 1:
        return []
    rows, p50s, p99s, rps = [], [first.p50_ms], [first.p99_ms], [first.throughput]
    steals = [first.extra.get("steal_pct", "n/a")]
    slow = [f"{first.extra.get('over_3ms', 'n/a')} in {first.extra.get('episodes_over_3ms', 'n/a')}"]
    for k in range(2, cfg.level_repeats + 1):
        res = _level_run(port, bodies, cfg, server)
        rows.append(decision_row(f"{name}: level run {k} of {cfg.level_repeats}", "-", res, cfg))
        p50s.append(rows[-1].p50_ms)
        p99s.append(rows[-1].p99_ms)
        rps.append(rows[-1].throughput)
        steals.append(rows[-1].extra.get("steal_pct", "n/a"))
        slow.append(f"{rows[-1].extra['over_3ms']} in {rows[-1].extra['episodes_over_3ms']}")
    rows.append(Row(suite="decision", target=f"{name}: median of {cfg.level_repeats} level runs",
                    baseline="-", rate=cfg.level_rate, p50_ms=float(np.median(p50s)),
                    p99_ms=float(np.median(p99s)), throughput=float(np.median(rps)),
                    extra={"p99_ms_each": " / ".join(f"{p:.2f}" for p in p99s),
                           "steal_pct_each": " / ".join(str(s) for s in steals),
                           # answers over 3 ms in how many episodes, run by run
                           "over_3ms_in_episodes_each": " / ".join(slow),
                           "goal_p99_ms": SLOW_MS}))
    return rows


def _idle_policy_runs(qos: CpuLatencyRequest,
                      servers: dict[str, tuple[int, str, Server, Row]],
                      bodies: list[bytes], cfg: DecisionBenchConfig) -> list[Row]:
    """One level run of each server with ``qos`` released (the machine's own CPU idle
    policy), then each server's level row (run with the request held) with its ratios
    against that run: how much of the latency was waking halted CPUs."""
    idle: dict[str, Row] = {}
    with qos.paused():
        for key, (port, name, server, _) in servers.items():
            res = _level_run(port, bodies, cfg, server)
            idle[key] = decision_row(f"{name}: level run, CPUs halting when idle", "-", res,
                                     cfg, cpu_latency_request="released")
    rows = list(idle.values())
    for key, (_, _, _, held) in servers.items():
        rows.append(with_ratios(replace(held, baseline=idle[key].target,
                                        extra={**held.extra, "cpu_latency_request": "held"}),
                                idle[key]))
    return rows


def _log_records(log_root: Path) -> int:
    from adplatform.eventlog import read_events

    return len(read_events(log_root, "decisions"))


def run(settings: Settings, world: Settings, *,
        config: DecisionBenchConfig | None = None,
        qos: CpuLatencyRequest | None = None) -> list[Row]:
    """Every phase (see the module docstring); ``world`` is a trained workspace. ``qos``:
    the CPU latency request the caller holds while this runs (released for the rows
    of the machine's own idle policy)."""
    cfg = config or DecisionBenchConfig()
    out = settings.workspace.root / "bench" / "decision"
    out.mkdir(parents=True, exist_ok=True)
    campaigns = bench_campaigns(world, out / "campaigns.json")
    bodies = request_bodies(world, cfg.n_bodies, cfg.seed)
    cfg = replace(cfg, tmax_ms=float(json.loads(bodies[0]).get("tmax", cfg.tmax_ms)))
    rows: list[Row] = engine_alone(world, campaigns, bodies, cfg.engine_n,
                                   out / f"engine-log-{os.getpid()}",
                                   paced_rate=cfg.level_rate, paced_n=cfg.engine_paced_n)
    env = {"ADPLATFORM_HOME": str(world.workspace.root)}
    home = str(world.workspace.root)
    ports = {"trivial": free_port(), "naive": free_port(), "decision": free_port(),
             "asgi": free_port(), "workers": free_port()}
    log_root = out / f"log-{int(time.time())}"
    codes = {
        "trivial": ("import uvicorn; from bench.trivial_app import create_app; "
                    f"uvicorn.run(create_app(), host='127.0.0.1', port={ports['trivial']}, "
                    f"log_level='warning', access_log=False, timeout_keep_alive={KEEP_ALIVE_S})"),
        "naive": (f"from bench.decision import serve_naive; serve_naive({home!r}, "
                  f"{ports['naive']}, {str(campaigns)!r})"),
        "decision": (f"from bench.decision import serve_decision; serve_decision({home!r}, "
                     f"{ports['decision']}, {str(campaigns)!r}, {str(log_root)!r})"),
        "asgi": (f"from bench.decision import serve_decision; serve_decision({home!r}, "
                 f"{ports['asgi']}, {str(campaigns)!r}, {str(log_root) + '-asgi'!r}, "
                 "fast_bid=False)"),
        "workers": ("from bench.decision import serve_decision_workers; "
                    f"serve_decision_workers({home!r}, {ports['workers']}, "
                    f"{str(campaigns)!r}, {str(log_root) + '-workers'!r}, {cfg.workers})"),
    }
    names = {"trivial": "trivial FastAPI handler", "naive": "naive bidder (Feast + pyfunc)",
             "decision": "decision service", "asgi": "decision service, ASGI bid path",
             "workers": f"decision service, {cfg.workers} workers"}
    # The multi-worker server's generator spreads its requests over its connections.
    load: dict[str, dict[str, Any]] = {
        k: {} for k in ports} | {"workers": {"pool": "fifo",
                                             "warm_conns": cfg.worker_warm_conns}}
    level: dict[str, Row] = {}
    best: dict[str, float] = {}
    with Server(codes["trivial"], env, out / "trivial.log") as s_trivial, \
            Server(codes["naive"], env, out / "naive.log") as s_naive, \
            Server(codes["decision"], env, out / "decision.log") as s_decision, \
            Server(codes["asgi"], env, out / "decision-asgi.log") as s_asgi, \
            Server(codes["workers"], env, out / "decision-workers.log") as s_workers:
        servers = {"trivial": s_trivial, "naive": s_naive, "decision": s_decision,
                   "asgi": s_asgi, "workers": s_workers}
        health = {"trivial": "/healthz", "naive": "/healthz", "decision": "/readyz",
                  "asgi": "/readyz", "workers": "/readyz"}
        for key, port in ports.items():
            wait_until_healthy(f"http://127.0.0.1:{port}{health[key]}", timeout_s=180)
            run_load("127.0.0.1", port, PATH, bodies, rate=200, duration_s=cfg.warmup_s,
                     **load[key])
            servers[key].settle()
        for key in ("trivial", "naive", "asgi", "decision", "workers"):
            cpu0 = servers[key].cpu_s()
            res = run_load("127.0.0.1", ports[key], PATH, bodies, rate=cfg.level_rate,
                           duration_s=cfg.level_s, **load[key])
            # An overloaded server (the naive bidder) works through its backlog after
            # the load stops: measure the next one only once this one is idle again.
            settled = servers[key].settle()
            # Server CPU per answer (backlog and background flushes included): steadier
            # than latency percentiles on a 2-core machine shared with the generator.
            cpu_ms = 1000.0 * (servers[key].cpu_s() - cpu0) / max(len(res.latencies_ms), 1)
            level[key] = decision_row(names[key], "-", res, cfg, settle_s=round(settled, 1),
                                      server_cpu_ms_per_answer=round(cpu_ms, 3))
        rows += [level["trivial"], level["naive"], level["asgi"]]
        rows += _repeats(ports["decision"], names["decision"], bodies, cfg, s_decision,
                         level["decision"])
        rows.append(with_ratios(replace(level["decision"], baseline=names["trivial"]),
                                level["trivial"]))
        rows.append(with_ratios(replace(level["decision"], baseline=names["naive"],
                                        extra=dict(level["decision"].extra)), level["naive"]))
        rows.append(with_ratios(replace(level["decision"], baseline=names["asgi"],
                                        extra=dict(level["decision"].extra)), level["asgi"]))
        rows.append(with_ratios(replace(level["workers"], baseline=names["decision"]),
                                level["decision"]))
        if qos is not None and qos.held:
            rows += _idle_policy_runs(qos, {k: (ports[k], names[k], servers[k], level[k])
                                            for k in ("trivial", "decision")}, bodies, cfg)
        for key in ("trivial", "naive", "asgi", "decision", "workers"):
            ladder_rows, best[key] = _ladder(ports[key], names[key], bodies, cfg,
                                             servers[key], **load[key])
            rows += ladder_rows
    for key in ("trivial", "naive", "asgi", "decision", "workers"):
        rows.append(Row(suite="decision", target=f"{names[key]}: highest rate, p99 <= 10 ms",
                        baseline="-", rate=best[key], p50_ms=float("nan"),
                        p99_ms=float("nan"), throughput=best[key]))
    rows += overload(home, campaigns, bodies, cfg, out, env)
    rows.append(_soak(world, campaigns, bodies, cfg, out, env))
    return rows


def _soak(world: Settings, campaigns: Path, bodies: list[bytes], cfg: DecisionBenchConfig,
          out: Path, env: dict[str, str]) -> Row:
    """A fresh decision service, ``soak_s`` at the level rate, stopped with SIGTERM."""
    port = free_port()
    log_root = out / f"soak-log-{int(time.time())}"
    code = (f"from bench.decision import serve_decision; serve_decision("
            f"{str(world.workspace.root)!r}, {port}, {str(campaigns)!r}, {str(log_root)!r})")
    with Server(code, env, out / "soak.log"):
        wait_until_healthy(f"http://127.0.0.1:{port}/readyz", timeout_s=180)
        warm = run_load("127.0.0.1", port, PATH, bodies, rate=200, duration_s=cfg.warmup_s)
        res = run_load("127.0.0.1", port, PATH, bodies, rate=cfg.level_rate,
                       duration_s=cfg.soak_s)
    answers = len(warm.latencies_ms) + len(res.latencies_ms)
    records = _log_records(log_root)
    return decision_row(f"decision service soak {cfg.soak_s:.0f} s", "-", res, cfg,
                        answers=answers, log_records=records,
                        log_equals_answers=str(records == answers),
                        errors_total=res.errors + warm.errors)


def main() -> None:
    from rich.console import Console

    from adplatform.config import get_settings
    from bench import cpu_idle
    from bench.__main__ import bench_world
    from bench.harness import print_table, write_json

    parser = argparse.ArgumentParser(prog="python -m bench.decision")
    parser.add_argument("--quick", action="store_true", help="short phases (development)")
    parser.add_argument("--level-rate", type=float, default=1000.0)
    parser.add_argument("--soak", type=float, default=None, help="soak seconds")
    cpu_idle.add_argument(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = DecisionBenchConfig.quick() if args.quick else DecisionBenchConfig()
    cfg = replace(cfg, level_rate=args.level_rate,
                  soak_s=args.soak if args.soak is not None else cfg.soak_s)
    console = Console(width=170)
    settings = get_settings()
    world = bench_world(settings, console)
    with cpu_idle.measuring(args.cpu_qos) as qos:
        rows = run(settings, world, config=cfg, qos=qos)
        machine = cpu_idle.machine_record(qos)
    print_table(console, rows, "bench: decision")
    console.print(f"wrote {write_json(rows, settings.workspace.root / 'bench', 'decision', machine)}")


if __name__ == "__main__":
    main()

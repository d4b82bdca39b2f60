"""``adplatform demo``: the whole loop on embedded defaults, end to end.

simulate -> features (apply + materialize) -> train CTR -> register -> start the decision
service as its own process -> send live auctions from the simulated exchange through
HTTP -> outcomes -> an A/B experiment, champion vs a freshly trained challenger, on more
live auctions (:mod:`mlops.demo_ab`) -> its report (HTML + JSON) -> summary.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from adplatform.config import Settings, env_name, settings_env

if TYPE_CHECKING:
    from mlops.demo_ab import ABRun
    from simulator import LiveExchange, SimulationSummary


@dataclass
class LiveStats:
    requests: int = 0
    bids: int = 0
    wins: int = 0
    impressions: int = 0
    clicks: int = 0
    conversions: int = 0
    spend: float = 0.0
    errors: int = 0
    notices: int = 0              # win/billing/loss notices the exchange sent and we recorded
    notice_errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


class ServiceProcess:
    """``adplatform serve`` in a child process, stopped with SIGTERM (which flushes its log).

    ``argv`` runs another service command instead (it must listen on ``port``), e.g.
    :func:`mlops.demo_ab.service_argv`.
    """

    def __init__(self, settings: Settings, port: int, log_path: Path, *,
                 argv: Sequence[str] | None = None) -> None:
        # The child reads its settings from the environment: every field of ``settings``
        # goes there (not only home and profile), so one built in code (a test's Redis
        # database, schema or stream) is the one the service runs with.
        # An inherited variable of a field that is None here would override the None.
        fields = {env_name(n) for n in Settings.model_fields}
        env = {k: v for k, v in os.environ.items() if k.upper() not in fields}
        env.update(settings_env(settings), ADPLATFORM_HOME=str(settings.workspace.root))
        command = list(argv) if argv is not None else [
            sys.executable, "-c", "from mlops.cli import main; main()", "serve",
            "--port", str(port)]
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(command, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"decision service exited with {self.proc.returncode}; "
                                   f"see {self._log.name}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"decision service not ready after {timeout_s}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def send_auctions(live: LiveExchange, url: str, n: int,
                  progress: Progress | None = None, *, label: str = "live auctions"
                  ) -> LiveStats:
    """Send n simulated auctions through the running service, resolve their outcomes and
    send the service the exchange's win, billing and loss notices (its spend comes from
    the billing notices)."""
    import httpx
    import orjson

    from simulator import notice_calls

    stats = LiveStats()
    task = progress.add_task(label, total=n) if progress else None
    with httpx.Client(base_url=url, timeout=5.0) as client:
        for req in live.requests(n):
            t0 = time.perf_counter()
            try:
                r = client.post("/openrtb/2.6/bid", content=orjson.dumps(req),
                                headers={"content-type": "application/json"})
            except httpx.HTTPError:
                stats.errors += 1
                continue
            stats.latencies_ms.append((time.perf_counter() - t0) * 1000)
            stats.requests += 1
            if r.status_code >= 400:
                stats.errors += 1
            response = r.json() if r.status_code == 200 else None
            stats.bids += response is not None
            out = live.resolve(req, response)
            stats.wins += bool(out.get("won"))
            stats.impressions += bool(out.get("impression"))
            stats.clicks += int(out.get("clicks", 0))
            stats.conversions += int(out.get("conversions", 0))
            stats.spend += float(out.get("cost", 0.0))
            for _, notice in notice_calls(req, response, out):
                try:
                    ok = client.get(notice).status_code == 200
                except httpx.HTTPError:
                    ok = False
                stats.notices += ok
                stats.notice_errors += not ok
            if progress is not None and task is not None:
                progress.advance(task)
    return stats


def run_demo(settings: Settings, *, days: int, auctions: int, seed: int, port: int,
             console: Console, requests_per_day: int = 50_000,
             ab_auctions: int | None = None) -> LiveStats:
    """The whole loop; ``ab_auctions`` (default: ``auctions``; 0 skips it) live auctions
    go to the closing champion-vs-challenger experiment (:func:`mlops.demo_ab.run_ab`)."""
    from features.ops import materialize
    from mlops.demo_ab import run_ab
    from simulator import LiveExchange, simulate
    from training.ctr import ctr_frame, train_ctr

    ab_n = auctions if ab_auctions is None else ab_auctions
    ws = settings.workspace.ensure()
    t_start = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    ab: ABRun | None = None
    with Progress(*columns, console=console) as progress:
        steps = progress.add_task("pipeline", total=5 if ab_n else 4)
        progress.update(steps, description=f"simulate {days} days")
        sim = simulate(days=days, seed=seed, workspace=ws, requests_per_day=requests_per_day)
        progress.update(steps, advance=1, description="features: apply + materialize")
        materialize(settings)
        progress.update(steps, advance=1, description="train ctr (LightGBM -> ONNX -> MLflow)")
        frame = ctr_frame(settings)        # the challenger trains on the same rows
        ctr = train_ctr(settings, frame=frame)
        progress.update(steps, advance=1, description="start the decision service")
        service = ServiceProcess(settings, port, ws.root / "demo-service.log")
        try:
            service.wait_ready()
            progress.update(steps, advance=1, description="live auctions")
            live = LiveExchange.from_workspace(ws, session=1)
            stats = send_auctions(live, service.url, auctions, progress)
            live.flush(ws)
        finally:
            service.stop()
        if ab_n:
            progress.update(steps, description="A/B: train a challenger, serve champion vs "
                                               "challenger, report")
            ab = run_ab(settings, live, auctions=ab_n, port=port, frame=frame,
                        progress=progress)
            progress.update(steps, advance=1, description="pipeline done")
    _summary(console, stats, ctr.metrics, ctr.version, sim, time.perf_counter() - t_start, ws.root)
    if ab is not None:
        _ab_summary(console, ab)
    return stats


def _summary(console: Console, s: LiveStats, metrics: dict[str, float], version: str,
             sim: SimulationSummary, elapsed: float, root: Path) -> None:
    t = Table("metric", "value", title="AdPlatform demo: live auctions through the decision service")
    rows = [("requests", f"{s.requests:,}"), ("bids", f"{s.bids:,}"), ("wins", f"{s.wins:,}"),
            ("impressions", f"{s.impressions:,}"), ("clicks", f"{s.clicks:,}"),
            ("conversions", f"{s.conversions:,}"), ("spend (USD)", f"{s.spend:,.2f}"),
            ("CTR", f"{s.ctr:.3%}"), ("errors", f"{s.errors}"),
            ("notices recorded (win, billing, loss)",
             f"{s.notices:,}" + (f" ({s.notice_errors} failed)" if s.notice_errors else "")),
            ("decision latency p50 (ms, HTTP round trip)", f"{s.percentile(50):.2f}"),
            ("decision latency p99 (ms, HTTP round trip)", f"{s.percentile(99):.2f}"),
            ("ctr model", f"version {version}: AUC {metrics['auc']:.4f}, "
                          f"logloss {metrics['logloss']:.4f}"),
            ("wall time", f"{elapsed:.0f} s")]
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    console.print(f"simulated history: {sim.requests:,} requests, {sim.impressions:,} "
                  f"impressions, {sim.clicks:,} clicks over {sim.days} days (seed {sim.seed})")
    console.print(f"results under {root}: events/, decision_log/, feast/, mlflow/, reports/")
    console.print(f"MLflow UI: mlflow ui --backend-store-uri sqlite:///{root}/mlflow/mlflow.db")


def _ab_summary(console: Console, ab: ABRun) -> None:
    from mlops.reports.errors import ReportError

    rep = ab.report
    t = Table("arm", "ctr version", "units", "requests", "bids", "wins", "clicks", "CTR",
              "spend (USD)", "surplus (USD)",
              title=f"A/B experiment {ab.experiment}: champion vs challenger "
                    f"({ab.stats.requests:,} live auctions, {ab.stats.errors} errors)")
    versions = {"champion": ab.champion, "challenger": ab.challenger}
    for a in rep.arms:
        tot, m = a.totals, a.metrics
        t.add_row(a.arm, versions.get(a.arm, "?"), f"{a.units:,}", f"{tot['request']:,.0f}",
                  f"{tot['bid']:,.0f}", f"{tot['won']:,.0f}", f"{tot['clicked']:,.0f}",
                  f"{m['ctr']:.3%}", f"{tot['cost']:,.2f}", f"{tot['surplus']:,.2f}")
    console.print(t)
    for name in ("ctr", "surplus_per_1k", "win_rate"):
        try:
            r = rep.result(name)
        except ReportError:     # no campaigns file: no value, surplus or ROI
            continue
        c = r.comparison
        console.print(f"  {r.label}: lift {c.lift:+.1%} [{c.lift_ci[0]:+.1%}, "
                      f"{c.lift_ci[1]:+.1%}], p = {c.p_value:.3g} -> {r.verdict}; "
                      f"always-valid p = {r.sequential_p:.3g}", soft_wrap=True)
    srm = "sample ratio mismatch!" if rep.srm.mismatch else "no sample ratio mismatch"
    console.print(f"  {srm} (p = {rep.srm.p_value:.3g})")
    console.print(f"A/B report: {ab.html}", soft_wrap=True)
    console.print(f"            {ab.json}", soft_wrap=True)
    console.print(f"rebuild it: adplatform report ab --experiment {ab.experiment} "
                  f"(experiment file {ab.spec_path})", soft_wrap=True)


__all__ = ["LiveStats", "ServiceProcess", "run_demo", "send_auctions"]

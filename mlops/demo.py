"""``adplatform demo``: the whole loop on embedded defaults, end to end.

simulate -> features (apply + materialize) -> train CTR -> register -> start the decision
service as its own process -> send live auctions from the simulated exchange through
HTTP -> outcomes -> summary.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from adplatform.config import Settings

if TYPE_CHECKING:
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
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


class ServiceProcess:
    """``adplatform serve`` in a child process, stopped with SIGTERM (which flushes its log)."""

    def __init__(self, settings: Settings, port: int, log_path: Path) -> None:
        env = {**os.environ, "ADPLATFORM_HOME": str(settings.workspace.root),
               "ADPLATFORM_PROFILE": settings.profile}
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from mlops.cli import main; main()", "serve",
             "--port", str(port)], env=env, stdout=self._log, stderr=subprocess.STDOUT)
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
                  progress: Progress | None = None) -> LiveStats:
    """Send n simulated auctions through the running service and resolve their outcomes."""
    import httpx
    import orjson

    stats = LiveStats()
    task = progress.add_task("live auctions", total=n) if progress else None
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
            if progress is not None and task is not None:
                progress.advance(task)
    return stats


def run_demo(settings: Settings, *, days: int, auctions: int, seed: int, port: int,
             console: Console, requests_per_day: int = 50_000) -> LiveStats:
    from features.ops import materialize
    from simulator import LiveExchange, simulate
    from training.ctr import train_ctr

    ws = settings.workspace.ensure()
    t_start = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        steps = progress.add_task("pipeline", total=4)
        progress.update(steps, description=f"simulate {days} days")
        sim = simulate(days=days, seed=seed, workspace=ws, requests_per_day=requests_per_day)
        progress.update(steps, advance=1, description="features: apply + materialize")
        materialize(settings)
        progress.update(steps, advance=1, description="train ctr (LightGBM -> ONNX -> MLflow)")
        ctr = train_ctr(settings)
        progress.update(steps, advance=1, description="start the decision service")
        service = ServiceProcess(settings, port, ws.root / "demo-service.log")
        try:
            service.wait_ready()
            progress.update(steps, advance=1, description="pipeline done")
            live = LiveExchange.from_workspace(ws, session=1)
            stats = send_auctions(live, service.url, auctions, progress)
            live.flush(ws)
        finally:
            service.stop()
    _summary(console, stats, ctr.metrics, ctr.version, sim, time.perf_counter() - t_start, ws.root)
    return stats


def _summary(console: Console, s: LiveStats, metrics: dict[str, float], version: str,
             sim: SimulationSummary, elapsed: float, root: Path) -> None:
    t = Table("metric", "value", title="AdPlatform demo: live auctions through the decision service")
    rows = [("requests", f"{s.requests:,}"), ("bids", f"{s.bids:,}"), ("wins", f"{s.wins:,}"),
            ("impressions", f"{s.impressions:,}"), ("clicks", f"{s.clicks:,}"),
            ("conversions", f"{s.conversions:,}"), ("spend (USD)", f"{s.spend:,.2f}"),
            ("CTR", f"{s.ctr:.3%}"), ("errors", f"{s.errors}"),
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
    console.print(f"results under {root}: events/, decision_log/, feast/, mlflow/")
    console.print(f"MLflow UI: mlflow ui --backend-store-uri sqlite:///{root}/mlflow/mlflow.db")


__all__ = ["LiveStats", "ServiceProcess", "run_demo", "send_auctions"]

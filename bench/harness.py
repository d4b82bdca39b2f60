"""Benchmark plumbing: result rows, the table, the JSON file, server processes."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from bench.loadgen import LoadResult


@dataclass
class Row:
    suite: str
    target: str                  # what was measured
    baseline: str                # what it is compared with, measured in the same run
    rate: float | None           # offered load (req/s) for open-loop rows
    p50_ms: float
    p99_ms: float
    throughput: float            # completed per second
    errors: int = 0
    ratio_p50: float | None = None   # baseline p50 / target p50 (>1: target faster)
    ratio_p99: float | None = None
    extra: dict[str, float | str] = field(default_factory=dict)


def load_row(suite: str, target: str, baseline: str, res: LoadResult,
             **extra: float | str) -> Row:
    """The row of one open-loop run: latency percentiles from the due times, the
    generator's own send lag beside them."""
    return Row(suite=suite, target=target, baseline=baseline, rate=res.rate,
               p50_ms=res.percentile(50), p99_ms=res.percentile(99),
               throughput=res.achieved_rps, errors=res.errors,
               extra={"sent": res.sent, "statuses": str(res.statuses),
                      "send_lag_p50_ms": round(res.send_lag(50), 3),
                      "send_lag_p99_ms": round(res.send_lag(99), 3),
                      "conns_warm": res.warm_conns, "conns_opened": res.conns_opened,
                      "steal_pct": rounded_pct(res.steal_pct),
                      "steal_peak_pct": rounded_pct(res.steal_peak_pct), **extra})


def rounded_pct(value: float | None) -> float | str:
    """A percentage for a row's extras: one decimal, or "n/a" when not measured."""
    return "n/a" if value is None else round(value, 1)


def with_ratios(target: Row, baseline: Row) -> Row:
    target.ratio_p50 = baseline.p50_ms / target.p50_ms if target.p50_ms else None
    target.ratio_p99 = baseline.p99_ms / target.p99_ms if target.p99_ms else None
    return target


def print_table(console: Console, rows: list[Row], title: str) -> None:
    t = Table("suite", "target", "baseline", "rate", "p50 ms", "p99 ms", "throughput/s",
              "errors", "ratio p50", "ratio p99", "steal % (peak)", title=title)
    for r in rows:
        t.add_row(r.suite, r.target, r.baseline, "-" if r.rate is None else f"{r.rate:.0f}",
                  f"{r.p50_ms:.3f}", f"{r.p99_ms:.3f}", f"{r.throughput:,.0f}", str(r.errors),
                  "-" if r.ratio_p50 is None else f"{r.ratio_p50:.2f}x",
                  "-" if r.ratio_p99 is None else f"{r.ratio_p99:.2f}x", _steal_cell(r))
    console.print(t)


def _steal_cell(r: Row) -> str:
    """The machine's steal during the row's run (:mod:`bench.steal`), its worst half
    second in brackets; "-" for rows that do not measure it."""
    pct = r.extra.get("steal_pct")
    if pct is None:
        return "-"
    peak = r.extra.get("steal_peak_pct")
    return f"{pct}" if peak in (None, "n/a") else f"{pct} ({peak})"


def write_json(rows: list[Row], out_dir: Path, suite: str,
               machine: Mapping[str, object] | None = None) -> Path:
    """``machine``: more about the machine's state during the run (the CPU idle policy)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{suite}.json"
    doc = {"suite": suite, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                       "platform": platform.platform(), **(machine or {})},
           "rows": [asdict(r) for r in rows]}
    path.write_text(json.dumps(doc, indent=2))
    return path


class Server:
    """A server subprocess (python -c CODE) stopped at exit."""

    def __init__(self, code: str, env: dict[str, str], log: Path) -> None:
        self._log = log.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **env},
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def settle(self, *, idle_share: float = 0.1, window_s: float = 0.5,
               timeout_s: float = 120.0) -> float:
        """Wait until the server is idle (CPU below ``idle_share`` of a core over a
        window): an overloaded server keeps working through its backlog after the load
        generator stops, and would take CPU from whatever is measured next. Returns the
        seconds waited."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s and self.proc.poll() is None:
            cpu0 = self.cpu_s()
            time.sleep(window_s)
            if self.cpu_s() - cpu0 < idle_share * window_s:
                break
        return time.monotonic() - start

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server has used so far: its process and the
        ones it started (workers, log writers) that are still running."""
        import psutil

        root = psutil.Process(self.proc.pid)
        total = 0.0
        for p in (root, *root.children(recursive=True)):
            try:
                t = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

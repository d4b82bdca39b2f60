"""Check a ``train all`` report against the issue's quality thresholds.

``python -m training.check_report REPORT.json`` prints one row per threshold (value,
target, pass/miss) and exits 1 when any is missed (2 when the report is unreadable).
:func:`checks` is the library half: it returns the rows without printing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIN_DAYS = 14
MIN_HELDOUT_CLICKS = 5_000


@dataclass(frozen=True)
class Check:
    area: str
    name: str
    value: str           # the measured figure(s), formatted
    target: str
    ok: bool | None      # None: the report lacks the figures (counts as a miss)


def _get(report: dict[str, Any], path: str) -> Any:
    node: Any = report
    for part in path.split("."):
        if not isinstance(node, dict) or node.get(part) is None:
            return None
        node = node[part]
    return node


def checks(report: dict[str, Any]) -> list[Check]:
    """Every threshold of the issue, evaluated on ``report``."""
    rows: list[Check] = []

    def add(area: str, name: str, paths: tuple[str, ...], target: str,
            test: Callable[..., bool], fmt: Callable[..., str]) -> None:
        values = [_get(report, p) for p in paths]
        if any(v is None for v in values):
            missing = [p for p, v in zip(paths, values, strict=True) if v is None]
            rows.append(Check(area, name, f"missing {', '.join(missing)}", target, None))
            return
        rows.append(Check(area, name, fmt(*values), target, bool(test(*values))))

    add("size", "run size", ("size",), "full", lambda s: s == "full", str)
    add("size", "days simulated", ("workspace.days",), f">= {MIN_DAYS}",
        lambda d: d >= MIN_DAYS, lambda d: f"{d:.0f}")
    add("size", "held-out clicks (CTR test, IVT removed)", ("ctr.test_clicks",),
        f">= {MIN_HELDOUT_CLICKS:,}", lambda c: c >= MIN_HELDOUT_CLICKS, lambda c: f"{c:,.0f}")
    add("ctr", "captured log-loss gain", ("ctr.captured_gain",), ">= 0.80",
        lambda g: g >= 0.8, lambda g: f"{g:.3f}")
    add("ctr", "AUC vs oracle AUC", ("ctr.auc", "ctr.oracle_auc"), "gap <= 0.015",
        lambda a, o: o - a <= 0.015, lambda a, o: f"{a:.4f} vs {o:.4f} (gap {o - a:.4f})")
    add("ctr", "observed/expected clicks", ("ctr.calibration_ratio",), "[0.95, 1.05]",
        lambda r: 0.95 <= r <= 1.05, lambda r: f"{r:.4f}")
    add("ctr", "observed/expected, 10 largest campaigns",
        ("ctr.campaign_ratio_min", "ctr.campaign_ratio_max"), "all in [0.95, 1.05]",
        lambda lo, hi: lo >= 0.95 and hi <= 1.05, lambda lo, hi: f"{lo:.3f} .. {hi:.3f}")
    add("shading", "surplus vs oracle", ("shading.surplus", "shading.oracle_surplus"),
        ">= 90%", lambda s, o: s >= 0.9 * o, lambda s, o: f"{s / o:.2%} ({s:.1f} / {o:.1f})")
    add("shading", "surplus vs best constant factor",
        ("shading.surplus", "shading.best_constant_surplus"), ">= +5%",
        lambda s, c: s >= 1.05 * c, lambda s, c: f"{s / c - 1:+.2%} ({c:.1f})")
    # "at least 5% above the best constant factor and above a context-free Kaplan-Meier
    # landscape": the 5% margin is read as applying to both baselines.
    add("shading", "surplus vs Kaplan-Meier", ("shading.surplus", "shading.km_surplus"),
        ">= +5%", lambda s, k: s >= 1.05 * k, lambda s, k: f"{s / k - 1:+.2%} ({k:.1f})")
    add("fraud", "PR-AUC", ("fraud.pr_auc",), ">= 0.90", lambda p: p >= 0.9,
        lambda p: f"{p:.4f}")
    add("fraud", "recall at 1% FPR vs rules alone",
        ("fraud.recall_at_1pct_fpr", "fraud.rules_only_recall"), "> rules",
        lambda r, b: r > b, lambda r, b: f"{r:.4f} vs {b:.4f}")
    add("real", "Criteo: LightGBM AUC > LR", ("real.criteo.auc_lgbm", "real.criteo.auc_lr"),
        "> LR", lambda a, b: a > b, lambda a, b: f"{a:.4f} vs {b:.4f}")
    add("real", "Criteo: DCN-v2 AUC > LR", ("real.criteo.auc_deep", "real.criteo.auc_lr"),
        "> LR", lambda a, b: a > b, lambda a, b: f"{a:.4f} vs {b:.4f}")
    add("real", "iPinYou 2259: loglik model > KM",
        ("real.ipinyou_2259.loglik_model", "real.ipinyou_2259.loglik_km"), "> KM",
        lambda m, k: m > k, lambda m, k: f"{m:.4f} vs {k:.4f}")
    add("real", "TalkingData AUC", ("real.talkingdata.auc",), ">= 0.95",
        lambda a: a >= 0.95, lambda a: f"{a:.4f}")
    return rows


def context(report: dict[str, Any]) -> list[str]:
    """Lines that say what the CTR figures could have been (absent keys: no lines).

    ``ctr.ceiling_*`` (:mod:`training.ctr_ceiling`) bounds what any model of the log can
    capture; ``ctr.oracle_campaign_ratio_*`` is the oracle's own observed/expected per
    campaign, the Bernoulli noise the campaign check cannot beat.
    """
    ctr = report.get("ctr") or {}
    lines = []
    if "ceiling_history_captured_gain" in ctr:
        lines.append(
            f"CTR ceiling (true structure + each person's own history): captured gain "
            f"{ctr['ceiling_history_captured_gain']:.3f}, AUC {ctr['ceiling_history_auc']:.4f} "
            f"vs oracle {ctr['ceiling_oracle_auc']:.4f}")
        parts = [f"{k} {ctr[f'ceiling_{k}_captured_gain']:.3f}"
                 for k in ("no_quality", "no_group", "no_user")
                 if f"ceiling_{k}_captured_gain" in ctr]
        if parts:
            lines.append("CTR partial oracles (captured gain, latent term integrated out): "
                         + ", ".join(parts))
    if "oracle_campaign_ratio_min" in ctr and "oracle_campaign_ratio_max" in ctr:
        lines.append(f"oracle's own observed/expected, 10 largest campaigns: "
                     f"{ctr['oracle_campaign_ratio_min']:.3f} .. "
                     f"{ctr['oracle_campaign_ratio_max']:.3f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    args = sys.argv[1:] if argv is None else argv
    console = Console(width=max(Console().width, 110))
    if len(args) != 1:
        console.print("usage: python -m training.check_report REPORT.json")
        return 2
    try:
        report = json.loads(Path(args[0]).read_text())
    except (OSError, ValueError) as exc:
        console.print(f"[red]cannot read {args[0]}: {exc}")
        return 2
    rows = checks(report)
    table = Table("area", "threshold", "value", "target", "", title=f"quality of {args[0]}")
    for r in rows:
        mark = "[green]ok" if r.ok else "[red]MISS"
        table.add_row(r.area, r.name, r.value, r.target, mark)
    console.print(table)
    misses = [r for r in rows if not r.ok]
    for line in context(report):
        console.print(f"context: {line}")
    for note in report.get("warnings", []):
        console.print(f"[yellow]warning: {note}")
    console.print(f"{len(rows) - len(misses)} of {len(rows)} thresholds met"
                  + (f"; missed: {', '.join(r.name for r in misses)}" if misses else ""))
    return 1 if misses else 0


if __name__ == "__main__":
    raise SystemExit(main())

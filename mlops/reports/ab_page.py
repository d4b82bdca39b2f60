"""The A/B report's HTML page: tables, a forest plot of lifts, running metrics with CIs."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from mlops.reports.html import Alert, Page, Plot, Section, Table, figure_png, fmt, new_figure

if TYPE_CHECKING:
    from matplotlib.ticker import Formatter

    from mlops.reports.ab import ABReport, MetricResult

_TIMELINE_METRICS = ("ctr", "win_rate", "surplus_per_1k", "cpc", "spend_per_1k", "cvr")
_COLOURS = ("#1f6fb2", "#d9480f", "#2b8a3e", "#7048e8", "#c2255c", "#0b7285")
_ROW_CLASS = {"better": "good", "worse": "bad", "higher": "warn", "lower": "warn"}


def _naive(times: list[datetime]) -> np.ndarray:
    """UTC datetimes as numpy datetime64 (which has no time zones)."""
    return np.array([t.astimezone(UTC).replace(tzinfo=None) for t in times],
                    dtype="datetime64[us]")


def _kind(metric: str) -> str:
    from mlops.reports.ab import METRICS

    return next((m.kind for m in METRICS if m.name == metric), "num")


def _headline(r: MetricResult) -> str:
    c = r.comparison
    lift = (f"{fmt(c.lift, 'lift')} [{fmt(c.lift_ci[0], 'lift')}, {fmt(c.lift_ci[1], 'lift')}]"
            if math.isfinite(c.lift) else "no estimate")
    return (f"{r.label}: {r.arm} vs {r.control}: {r.verdict} (lift {lift}, p = "
            f"{fmt(c.p_value, 'p')}); always-valid: {r.sequential_verdict} "
            f"(p = {fmt(r.sequential_p, 'p')})")


def _alerts(rep: ABReport) -> list[Alert]:
    alerts: list[Alert] = []
    if rep.srm.mismatch:
        alerts.append(Alert("bad", rep.warnings[0]))
        rest = rep.warnings[1:]
    else:
        alerts.append(Alert("good", f"no sample ratio mismatch (p = {fmt(rep.srm.p_value, 'p')}"
                                    f", units {rep.srm.counts})"))
        rest = rep.warnings
    alerts += [Alert("warn", w) for w in rest]
    for name in ("surplus_per_1k", "ctr", "win_rate"):
        for r in rep.results:
            if r.metric == name:
                level = _ROW_CLASS.get(r.verdict, "info").replace("warn", "info")
                alerts.append(Alert(level, _headline(r)))
    return alerts


def _arms_table(rep: ABReport) -> Table:
    obs = rep.srm.observed_share
    rows = []
    for a in rep.arms:
        t, m = a.totals, a.metrics
        rows.append([
            a.arm + (" (control)" if a.arm == rep.experiment.control else ""),
            fmt(a.planned_share, "pct"), fmt(obs.get(a.arm), "pct"), fmt(a.units, "int"),
            fmt(t["request"], "int"), fmt(t["bid"], "int"), fmt(m["win_rate"], "pct"),
            fmt(t["impression"], "int"), fmt(t["clicked"], "int"), fmt(m["ctr"], "pct"),
            fmt(t["converted"], "int"), fmt(t["cost"], "usd"), fmt(m["cpc"], "usd"),
            fmt(m["cpa"], "usd"), fmt(t["value"], "usd"), fmt(t["surplus"], "usd"),
            fmt(m["roi"], "pct")])
    return Table(["arm", "planned", "observed", "units", "requests", "bids", "win rate",
                  "impressions", "clicks", "CTR", "conversions", "spend", "CPC", "CPA",
                  "value", "surplus", "ROI"], rows,
                 caption="Per arm. Clicks and conversions count clicked / converting "
                         "impressions (repeated clicks deduplicated). Money in USD.")


def _results_table(rep: ABReport) -> Table:
    rows, classes = [], []
    for r in rep.results:
        c, k = r.comparison, _kind(r.metric)
        raw = c.treatment / c.control - 1 if c.control else math.nan
        rows.append([
            r.label, r.arm, fmt(c.control, k), fmt(c.treatment, k), fmt(raw, "lift"),
            fmt(c.lift, "lift"), f"[{fmt(c.lift_ci[0], 'lift')}, {fmt(c.lift_ci[1], 'lift')}]",
            fmt(c.p_value, "p"),
            f"{c.variance_reduction:.0%}" if c.cuped else "–", r.verdict,
            fmt(r.sequential_p, "p"), r.sequential_verdict])
        classes.append(_ROW_CLASS.get(r.verdict, ""))
    return Table(["metric", "arm", "control", "arm value", "raw lift", "lift (CUPED)",
                  f"{1 - rep.alpha:.0%} CI",
                  "p (fixed)", "CUPED var. cut", "verdict", "p (always valid)",
                  "sequential verdict"], rows, classes=classes,
                 caption=f"Arm vs {rep.experiment.control} at α = {rep.alpha}. The lift, its "
                         "CI and the fixed p-value are CUPED-adjusted where a pre-period "
                         "exists (otherwise equal to the raw lift). Fixed-horizon "
                         "tests are valid if the report is read once at the planned end; "
                         "if it was watched along the way, use the always-valid columns.")


def _srm_table(rep: ABReport) -> Table:
    s = rep.srm
    obs = s.observed_share
    rows = [[a, fmt(s.counts[a], "int"), fmt(s.expected_share[a], "pct"), fmt(obs[a], "pct")]
            for a in sorted(s.counts)]
    return Table(["arm", "units", "planned share", "observed share"], rows,
                 caption=f"chi-square = {fmt(s.chi2)}, dof = {s.dof}, p = {fmt(s.p_value, 'p')}"
                         f" (alarm below {s.threshold})")


def _forest(rep: ABReport) -> Plot | None:
    rows = [r for r in rep.results if math.isfinite(r.comparison.lift)
            and all(math.isfinite(x) for x in r.comparison.lift_ci)]
    if not rows:
        return None
    fig = new_figure(9.0, 0.45 * len(rows) + 1.2)
    ax = fig.add_subplot()
    colour = {"better": "#2b8a3e", "worse": "#c92a2a"}
    for i, r in enumerate(reversed(rows)):
        c = r.comparison
        col = colour.get(r.verdict, "#495057")
        ax.errorbar([c.lift], [i], xerr=[[c.lift - c.lift_ci[0]], [c.lift_ci[1] - c.lift]],
                    fmt="o", color=col, capsize=3)
    ax.axvline(0.0, color="#868e96", lw=1, ls="--")
    lo = min(r.comparison.lift_ci[0] for r in rows)
    hi = max(r.comparison.lift_ci[1] for r in rows)
    clipped = lo < -1.0 or hi > 1.5
    if clipped:   # a few very wide intervals must not flatten the others
        ax.set_xlim(max(lo, -1.0) - 0.05, min(hi, 1.5) + 0.05)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{r.metric} ({r.arm})" for r in reversed(rows)])
    ax.xaxis.set_major_formatter(_pct_formatter())
    ax.set_xlabel(f"relative lift vs {rep.experiment.control}, {1 - rep.alpha:.0%} CI")
    ax.set_title("Lift per metric (green: better, red: worse, grey: no verdict)")
    note = " The axis is clipped to −100%…+150%; see the table for wider intervals." \
        if clipped else ""
    return Plot(figure_png(fig), "forest plot of relative lifts",
                "Relative lift with delta-method confidence intervals (CUPED where applied)."
                + note)


def _pct_formatter() -> Formatter:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(1.0)


def _timeline(rep: ABReport) -> Plot | None:
    tl = rep.timeline
    names = [m for m in _TIMELINE_METRICS if m in tl.value]
    if not names or not tl.looks:
        return None
    cols = 2
    rows = math.ceil(len(names) / cols)
    fig = new_figure(11.0, 3.0 * rows)
    x = _naive(tl.looks)
    arms = sorted(tl.value[names[0]])
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        for j, arm in enumerate(arms):
            col = _COLOURS[j % len(_COLOURS)]
            y = np.asarray(tl.value[name][arm], dtype=float)
            ax.plot(x, y, color=col, label=arm, marker=".")
            ax.fill_between(x, np.asarray(tl.ci_low[name][arm], dtype=float),
                            np.asarray(tl.ci_high[name][arm], dtype=float), color=col,
                            alpha=0.18, lw=0)
        ax.set_title(name + " (running, 95% CI)", fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        if i == 0:
            ax.legend(fontsize=8)
    return Plot(figure_png(fig), "running metrics per arm",
                "Cumulative metric per arm at each look with pointwise 95% delta-method "
                "intervals (not adjusted for peeking).")


def _sequential_plot(rep: ABReport) -> Plot | None:
    tl = rep.timeline
    names = [m for m in _TIMELINE_METRICS if m in tl.sequential_p]
    if not names or not tl.looks:
        return None
    fig = new_figure(11.0, 3.2)
    ax = fig.add_subplot()
    x = _naive(tl.looks)
    for j, name in enumerate(names):
        for arm, p in tl.sequential_p[name].items():
            ax.plot(x, p, color=_COLOURS[j % len(_COLOURS)], label=f"{name} ({arm})",
                    marker=".")
    ax.axhline(rep.alpha, color="#c92a2a", ls="--", lw=1, label=f"α = {rep.alpha}")
    ax.set_yscale("log")
    ax.set_ylim(max(1e-6, ax.get_ylim()[0]), 1.05)
    ax.set_title("Always-valid p-values (mSPRT) at each look", fontsize=10)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return Plot(figure_png(fig), "always-valid p-values over time",
                "A metric is significant once its curve crosses α; peeking does not inflate "
                "the error rate of this test.")


def ab_page(rep: ABReport) -> Page:
    spec = rep.experiment
    sub = (f"{rep.start:%Y-%m-%d %H:%M} – {rep.end:%Y-%m-%d %H:%M} UTC · unit: {spec.unit} · "
           f"control: {spec.control} · α = {rep.alpha}")
    cu = rep.cuped
    cuped_text = (f"CUPED: applied with the pre-period {cu.pre_start:%Y-%m-%d} – "
                  f"{cu.pre_end:%Y-%m-%d}; {cu.units_with_pre:.0%} of units were seen in it."
                  if cu.applied and cu.pre_start and cu.pre_end
                  else f"CUPED: not applied ({cu.reason}).")
    plots = [p for p in (_forest(rep), _timeline(rep), _sequential_plot(rep)) if p is not None]
    methods = [
        "Ratio metrics are tested at the level of the randomisation unit: the delta method "
        "gives the variance of Σnumerator/Σdenominator over units, so correlated impressions "
        "of one user are not counted as independent evidence.",
        cuped_text,
        f"Always-valid p-values: normal-mixture mSPRT (Johari et al.) on the running "
        f"difference at {len(rep.timeline.looks)} equally spaced looks, mixing scale τ = "
        f"{rep.tau_rel:.0%} of the pooled metric or the standard error of the difference "
        f"at the first look, whichever is larger.",
        "Value: the campaign's CPC × clicked impressions (CPC goal) or CPA × converting "
        "impressions (CPA goal); surplus = value − cost; ROI = surplus / spend.",
    ]
    return Page(
        title=f"A/B report: {spec.name}", subtitle=sub, alerts=_alerts(rep),
        sections=[
            Section("Arms", tables=[_arms_table(rep)]),
            Section("Results", tables=[_results_table(rep)], plots=plots[:1]),
            Section("Over time", plots=plots[1:]),
            Section("Sample ratio", tables=[_srm_table(rep)]),
            Section("Method", paragraphs=methods),
        ])


__all__ = ["ab_page"]

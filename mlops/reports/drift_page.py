"""The drift report's HTML page: PSI per feature, calibration, market drift over time."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from mlops.reports.html import Alert, Page, Plot, Section, Table, figure_png, fmt, new_figure

if TYPE_CHECKING:
    from mlops.reports.drift import DriftReport

_CLASS = {"drift": "bad", "miscalibrated": "bad", "warn": "warn", "ok": "",
          "insufficient data": "", "no data": "", "info": ""}


def _features_table(rep: DriftReport) -> Table:
    rows, classes = [], []
    for f in sorted(rep.features, key=lambda f: -(f.psi.value if math.isfinite(f.psi.value)
                                                  else -1.0)):
        rows.append([f"{f.source}.{f.feature}", f.kind, fmt(f.psi.value),
                     fmt(f.psi.n_reference, "int"), fmt(f.psi.n_current, "int"), f.status])
        classes.append(_CLASS.get(f.status, ""))
    th = rep.thresholds
    return Table(["feature", "kind", "PSI", "reference rows", "current rows", "status"], rows,
                 classes=classes, caption=f"PSI > {th.psi} flags drift, {th.psi_warn}–{th.psi} "
                                          "warns. Request context: reference "
                                          f"{rep.feature_reference.label()}, current "
                                          f"{rep.feature_current.label()} (UTC).")


def _psi_plot(rep: DriftReport) -> Plot | None:
    feats = sorted((f for f in rep.features if math.isfinite(f.psi.value)),
                   key=lambda f: -f.psi.value)[:30]
    if not feats:
        return None
    fig = new_figure(11.0, 0.28 * len(feats) + 1.2)
    ax = fig.add_subplot()
    th = rep.thresholds
    colours = ["#c92a2a" if f.status == "drift" else "#e0a800" if f.status == "warn"
               else "#1f6fb2" for f in feats]
    y = np.arange(len(feats))[::-1]
    ax.barh(y, [f.psi.value for f in feats], color=colours)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{f.source}.{f.feature}" for f in feats], fontsize=8)
    ax.axvline(th.psi, color="#c92a2a", ls="--", lw=1)
    ax.axvline(th.psi_warn, color="#e0a800", ls=":", lw=1)
    ax.set_xlabel("PSI (reference → current)")
    ax.set_title("Feature drift: the 30 largest PSI values", fontsize=10)
    return Plot(figure_png(fig), "PSI per feature", "")


def _calibration_table(rep: DriftReport) -> Table:
    rows, classes = [], []
    for c in rep.calibration:
        rows.append([c.model_version, c.window, fmt(c.impressions, "int"),
                     fmt(c.expected_clicks), fmt(c.observed_clicks, "int"), fmt(c.ratio),
                     f"[{fmt(c.ci[0])}, {fmt(c.ci[1])}]", c.status])
        classes.append(_CLASS.get(c.status, ""))
    lo, hi = rep.thresholds.calibration
    return Table(["model version", "window", "impressions", "expected clicks (Σ pCTR)",
                  "clicked impressions", "observed / expected", "95% CI", "status"], rows,
                 classes=classes, caption=f"Flagged outside [{lo}, {hi}] once "
                 f"{rep.thresholds.min_expected_clicks:g} clicks are expected.")


def _calibration_plot(rep: DriftReport) -> Plot | None:
    cal = [c for c in rep.calibration if math.isfinite(c.ratio)]
    if not cal:
        return None
    fig = new_figure(9.0, 0.4 * len(cal) + 1.3)
    ax = fig.add_subplot()
    lo, hi = rep.thresholds.calibration
    ax.axvspan(lo, hi, color="#e6f6ea")
    ax.axvline(1.0, color="#868e96", lw=1, ls="--")
    for i, c in enumerate(reversed(cal)):
        col = "#c92a2a" if c.status == "miscalibrated" else "#1f6fb2"
        err = [[max(c.ratio - c.ci[0], 0.0)], [max(c.ci[1] - c.ratio, 0.0)]]
        ax.errorbar([c.ratio], [i], xerr=err, fmt="o", color=col, capsize=3)
    ax.set_yticks(range(len(cal)))
    ax.set_yticklabels([f"{c.model_version} ({c.window})" for c in reversed(cal)])
    ax.set_xlabel("observed / expected clicks (95% Poisson CI); green band: healthy")
    return Plot(figure_png(fig), "calibration per model version", "")


def _market_table(rep: DriftReport) -> Table:
    rows, classes = [], []
    for m in rep.market:
        change = fmt(m.change) if "PSI" in m.metric else fmt(m.change, "lift")
        rows.append([m.metric, fmt(m.reference), fmt(m.current), change, fmt(m.p_value, "p"),
                     m.status])
        classes.append(_CLASS.get(m.status, ""))
    return Table(["metric", "reference", "current", "change (PSI for distributions)", "p",
                  "status"], rows, classes=classes,
                 caption=f"Decisions: reference {rep.reference.label()}, current "
                         f"{rep.current.label()} (UTC). Win rate flags beyond "
                         f"{rep.thresholds.win_rate_change:.0%} relative change "
                         f"(p < {rep.thresholds.significance}).")


def _daily_plot(rep: DriftReport) -> Plot | None:
    from matplotlib.dates import date2num

    d = rep.daily
    if d.empty:
        return None
    fig = new_figure(11.0, 3.4)
    x = d.index.to_numpy()
    for i, (col, title) in enumerate((("win_rate", "win rate"), ("mean_bid", "mean bid (CPM)"),
                                      ("o_e", "observed / expected clicks"))):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.plot(x, d[col].to_numpy(dtype=float), marker="o", color="#1f6fb2")
        for w, colour in ((rep.reference, "#e7f5ff"), (rep.current, "#fff4e6")):
            ax.axvspan(float(date2num(w.start.replace(tzinfo=None))),
                       float(date2num(w.end.replace(tzinfo=None))), color=colour, zorder=0)
        if col == "o_e":
            lo, hi = rep.thresholds.calibration
            ax.axhspan(lo, hi, color="#e6f6ea", zorder=0)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    return Plot(figure_png(fig), "daily win rate, bid and calibration",
                "Per day (UTC). Blue background: reference window; orange: current window.")


def drift_page(rep: DriftReport) -> Page:
    flagged = rep.flagged
    alerts = [Alert("bad", f) for f in flagged] + [Alert("warn", w) for w in rep.warnings]
    if not flagged:
        alerts.insert(0, Alert("good", "nothing crossed a drift or calibration threshold"))
    feature_plots = [p for p in (_psi_plot(rep),) if p is not None]
    cal_plots = [p for p in (_calibration_plot(rep),) if p is not None]
    market_plots = [p for p in (_daily_plot(rep),) if p is not None]
    return Page(
        title="Drift and model health",
        subtitle=f"reference {rep.reference.label()} · current {rep.current.label()} (UTC)",
        alerts=alerts,
        sections=[
            Section("Calibration per model version", tables=[_calibration_table(rep)],
                    plots=cal_plots),
            Section("Win rate and bid price", tables=[_market_table(rep)], plots=market_plots),
            Section("Feature drift (PSI)", tables=[_features_table(rep)], plots=feature_plots),
        ])


__all__ = ["drift_page"]

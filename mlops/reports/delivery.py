"""The delivery report: one day of traffic per campaign and per publisher, and pacing.

For the decisions logged on day ``D`` (UTC, the decision service's clock, which is also
the clock budgets are paced by): requests, bids, wins, impressions, clicked impressions,
conversions, spend, eCPM, CTR, win rate; per campaign also its pacing, spend / daily
budget, against the share of the day the log covers. Outcomes are joined by key, so a
click after midnight still counts for its day's impression.

* Per campaign, ``requests`` counts the decisions naming the campaign (the candidate it
  bid with, or would have); per publisher it counts every decision on its inventory.
* Flags: ``over budget`` (pacing above ``over_pacing``), ``under-delivering`` (an active
  campaign below ``under_pacing`` × the share of the day elapsed), ``paused but
  delivering``, ``unknown campaign`` (not in campaigns.json).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlops.reports.errors import ReportError
from mlops.reports.events import CampaignInfo, Outcomes, decision_outcomes
from mlops.reports.html import (
    Alert,
    Page,
    Plot,
    Section,
    Table,
    figure_png,
    fmt,
    new_figure,
    write_report,
)

_COUNTS = ("request", "bid", "won", "impression", "clicked", "converted", "cost", "value")


@dataclass(frozen=True)
class DeliveryRow:
    """Counts and rates of one campaign or publisher (money in USD)."""

    key: str
    requests: int
    bids: int
    wins: int
    impressions: int
    clicks: int
    conversions: int
    spend: float
    value: float
    ecpm: float
    ctr: float
    win_rate: float
    # Campaigns only:
    daily_budget: float = math.nan
    pacing: float = math.nan          # spend / daily budget
    expected_pacing: float = math.nan  # share of the day the log covers
    status: str = ""
    flags: tuple[str, ...] = ()


@dataclass
class DeliveryReport:
    day: date
    day_fraction: float                 # share of the day covered by the log
    campaigns: list[DeliveryRow]
    publishers: list[DeliveryRow]
    totals: DeliveryRow
    hourly_spend: dict[str, list[float]]  # campaign -> spend per UTC hour
    warnings: list[str] = field(default_factory=list)

    def campaign(self, campaign_id: str) -> DeliveryRow:
        for row in self.campaigns:
            if row.key == campaign_id:
                return row
        raise ReportError(f"no campaign {campaign_id!r} on {self.day}")

    def to_dict(self) -> dict[str, Any]:
        return {"report": "delivery", "day": self.day, "day_fraction": self.day_fraction,
                "totals": self.totals, "campaigns": self.campaigns,
                "publishers": self.publishers, "hourly_spend": self.hourly_spend,
                "warnings": self.warnings}

    def write(self, out_dir: Path) -> tuple[Path, Path]:
        """Write ``delivery_<day>.html`` and ``delivery_<day>.json``."""
        return write_report(out_dir, f"delivery_{self.day.isoformat()}", _page(self),
                            self.to_dict())


def _row(key: str, s: Mapping[str, float], **extra: Any) -> DeliveryRow:
    imps, bids = s["impression"], s["bid"]
    return DeliveryRow(
        key=key, requests=int(s["request"]), bids=int(bids), wins=int(s["won"]),
        impressions=int(imps), clicks=int(s["clicked"]), conversions=int(s["converted"]),
        spend=float(s["cost"]), value=float(s["value"]),
        ecpm=float(1000.0 * s["cost"] / imps) if imps else math.nan,
        ctr=float(s["clicked"] / imps) if imps else math.nan,
        win_rate=float(s["won"] / bids) if bids else math.nan, **extra)


def delivery_report(decisions: pd.DataFrame, outcomes: Outcomes,
                    campaigns: Mapping[str, CampaignInfo], day: date, *,
                    under_pacing: float = 0.5, over_pacing: float = 1.0) -> DeliveryReport:
    """Delivery of ``day`` (UTC) per campaign and publisher (see the module docstring)."""
    if not 0 <= under_pacing < over_pacing:
        raise ReportError("need 0 <= under_pacing < over_pacing")
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    end = start + timedelta(days=1)
    if "ts" not in decisions.columns:
        raise ReportError("decisions: missing column ts")
    todays = decisions.loc[(decisions["ts"] >= start) & (decisions["ts"] < end)]
    if todays.empty:
        raise ReportError(f"no decisions logged on {day.isoformat()}")
    j = decision_outcomes(todays, outcomes, dict(campaigns))
    j["value"] = j["value"].fillna(0.0)
    last = j["ts"].max().to_pydatetime()
    fraction = min(1.0, max((last - start).total_seconds() / 86400.0, 1 / 24))
    warnings: list[str] = []
    if fraction < 0.99:
        warnings.append(f"the log covers {fraction:.0%} of {day.isoformat()} (last decision "
                        f"{last:%H:%M} UTC): pacing is judged against that share of the day")
    totals = _row("all", {c: float(j[c].sum()) for c in _COUNTS})
    camp = j.loc[j["campaign_id"].notna()].groupby("campaign_id")[list(_COUNTS)].sum()
    rows = []
    for cid, s in camp.iterrows():
        info = campaigns.get(str(cid))
        rows.append(_campaign_row(str(cid), s, info, fraction, under_pacing, over_pacing))
    seen = set(camp.index.astype(str))
    for cid, info in campaigns.items():   # active campaigns that did not deliver at all
        if cid not in seen and info.status == "active":
            zero = dict.fromkeys(_COUNTS, 0.0)
            rows.append(_campaign_row(cid, zero, info, fraction, under_pacing, over_pacing))
    rows.sort(key=lambda r: (-r.spend, r.key))
    pub = j.assign(publisher_id=j["publisher_id"].fillna("(unknown)")) \
        .groupby("publisher_id")[list(_COUNTS)].sum()
    pubs = sorted((_row(str(k), s) for k, s in pub.iterrows()), key=lambda r: (-r.spend, r.key))
    hourly: dict[str, list[float]] = {}
    spent = j.loc[j["cost"] > 0]
    for cid, g in spent.groupby("campaign_id"):
        hourly[str(cid)] = np.bincount(g["ts"].dt.hour.to_numpy(), weights=g["cost"].to_numpy(),
                                       minlength=24).tolist()
    if j["publisher_id"].isna().all():
        warnings.append("no request rows joined the decisions: publishers are unknown")
    return DeliveryReport(day, fraction, rows, pubs, totals, hourly, warnings)


def _campaign_row(cid: str, s: Mapping[str, float], info: CampaignInfo | None,
                  fraction: float, under: float, over: float) -> DeliveryRow:
    flags: list[str] = []
    if info is None:
        return _row(cid, s, status="unknown", flags=("unknown campaign",))
    budget = info.daily_budget
    pacing = s["cost"] / budget if budget > 0 else math.nan
    if budget > 0 and pacing > over:
        flags.append("over budget")
    if info.status == "active" and budget > 0 and pacing < under * fraction:
        flags.append("under-delivering")
    if info.status != "active" and s["impression"] > 0:
        flags.append(f"{info.status} but delivering")
    return _row(cid, s, daily_budget=budget, pacing=pacing, expected_pacing=fraction,
                status=info.status, flags=tuple(flags))


# --------------------------------------------------------------------------- page


def _table(rows: list[DeliveryRow], *, campaigns: bool, caption: str) -> Table:
    cols = ["campaign" if campaigns else "publisher", "requests", "bids", "win rate",
            "impressions", "clicks", "CTR", "conversions", "spend", "eCPM"]
    if campaigns:
        cols += ["budget", "pacing", "status", "flags"]
    body, classes = [], []
    for r in rows:
        line = [r.key, fmt(r.requests, "int"), fmt(r.bids, "int"), fmt(r.win_rate, "pct"),
                fmt(r.impressions, "int"), fmt(r.clicks, "int"), fmt(r.ctr, "pct"),
                fmt(r.conversions, "int"), fmt(r.spend, "usd"), fmt(r.ecpm, "usd")]
        if campaigns:
            line += [fmt(r.daily_budget, "usd"), fmt(r.pacing, "pct1"), r.status,
                     ", ".join(r.flags)]
        body.append(line)
        classes.append("bad" if "over budget" in r.flags else "warn" if r.flags else "")
    return Table(cols, body, caption=caption, classes=classes)


def _pacing_plot(rep: DeliveryReport) -> Plot | None:
    rows = [r for r in rep.campaigns if math.isfinite(r.pacing)]
    if not rows:
        return None
    fig = new_figure(11.0, 3.8)
    ax = fig.add_subplot()
    colours = ["#c92a2a" if "over budget" in r.flags else "#e0a800" if r.flags else "#1f6fb2"
               for r in rows]
    ax.bar([r.key for r in rows], [r.pacing for r in rows], color=colours)
    ax.axhline(1.0, color="#c92a2a", ls="--", lw=1, label="daily budget")
    ax.axhline(rep.day_fraction, color="#495057", ls=":", lw=1, label="share of day logged")
    ax.set_ylabel("spend / daily budget")
    ax.tick_params(axis="x", labelrotation=60, labelsize=8)
    ax.legend(fontsize=8)
    ax.set_title(f"Pacing on {rep.day.isoformat()}", fontsize=10)
    return Plot(figure_png(fig), "pacing per campaign",
                "Red: over budget; yellow: flagged (under-delivering, paused, unknown).")


def _hourly_plot(rep: DeliveryReport) -> Plot | None:
    top = [r for r in rep.campaigns if r.key in rep.hourly_spend and r.daily_budget > 0][:8]
    if not top:
        return None
    fig = new_figure(11.0, 3.8)
    ax = fig.add_subplot()
    hours = np.arange(1, 25)
    for r in top:
        ax.plot(hours, np.cumsum(rep.hourly_spend[r.key]) / r.daily_budget, marker=".",
                label=r.key)
    ax.plot(hours, hours / 24.0, color="#495057", ls=":", label="even pacing")
    ax.set_xlabel("hour (UTC, end of)")
    ax.set_ylabel("cumulative spend / budget")
    ax.legend(fontsize=8, ncol=3)
    ax.set_title("Cumulative spend of the top campaigns by spend", fontsize=10)
    return Plot(figure_png(fig), "cumulative spend per hour", "")


def _page(rep: DeliveryReport) -> Page:
    t = rep.totals
    alerts = [Alert("warn", w) for w in rep.warnings]
    by_flag: dict[str, list[DeliveryRow]] = {}
    for r in rep.campaigns:
        for f in r.flags:
            by_flag.setdefault(f, []).append(r)
    for flag, rows in sorted(by_flag.items(), key=lambda kv: kv[0] != "over budget"):
        level = "bad" if flag == "over budget" else "warn"
        listed = ", ".join(f"{r.key} ({fmt(r.pacing, 'pct1')})" for r in rows[:12])
        more = f" and {len(rows) - 12} more" if len(rows) > 12 else ""
        alerts.append(Alert(level, f"{flag}: {len(rows)} campaign(s): {listed}{more}"))
    if not by_flag:
        alerts.append(Alert("good", "every campaign is within its budget and pacing"))
    summary = (f"{t.requests:,} requests, {t.bids:,} bids, {t.wins:,} wins "
               f"({fmt(t.win_rate, 'pct')}), {t.impressions:,} impressions, {t.clicks:,} "
               f"clicked ({fmt(t.ctr, 'pct')}), {t.conversions:,} conversions, spend "
               f"{fmt(t.spend, 'usd')} USD, eCPM {fmt(t.ecpm, 'usd')}.")
    plots = [p for p in (_pacing_plot(rep), _hourly_plot(rep)) if p is not None]
    return Page(
        title=f"Delivery report: {rep.day.isoformat()}",
        subtitle=f"UTC day, decision service clock · log covers {rep.day_fraction:.0%} of it",
        alerts=alerts,
        sections=[
            Section("Totals", paragraphs=[summary]),
            Section("Campaigns", tables=[_table(
                rep.campaigns, campaigns=True,
                caption="Pacing = spend / daily budget. Clicks count clicked impressions.")],
                plots=plots),
            Section("Publishers", tables=[_table(
                rep.publishers, campaigns=False, caption="Every decision on the publisher's "
                "inventory; sorted by spend.")]),
        ])


__all__ = ["DeliveryReport", "DeliveryRow", "delivery_report"]

"""Drift and model health: feature PSI, live calibration per model version, market drift.

Two windows are compared: the *reference* (the model's training window, or the days
before the current window) and the *current* window (recent traffic).

* **Feature drift** — PSI per feature, flagged above ``psi`` (0.2; 0.1–0.2 is a warning),
  from two sources, both always considered:

  - the request context in the event log (``requests``: device type, OS, country,
    publisher, format, app or site, slot size, UTC hour as categories; the floor price
    as a number), windowed by the request time: what the models see at serving time,
    present even before any feature pipeline ran;
  - the Feast offline feature tables (``<workspace>/feast/offline/*.parquet``: one row per
    entity and hour, windowed by ``event_timestamp``), every numeric column: the
    aggregates the models read. Quantile bins of the reference; missing values get a bin.

* **Calibration** — per ``model_version`` (and window): expected clicks Σ pCTR over the
  impressions the decisions led to, observed clicked impressions, observed/expected with
  an exact Poisson interval; flagged outside ``calibration`` = [0.9, 1.1] once at least
  ``min_expected_clicks`` are expected (else "insufficient data").
* **Market drift** — win rate (wins / bids; flagged when it moves by more than
  ``win_rate_change`` relative and the change is significant at 1%), bid price PSI (bids'
  CPM; flagged above ``psi``), mean bid and paid price.

Decisions are placed in time by :func:`~mlops.reports.events.event_time` (the request's
time where it is logged); the request context and the feature tables by their own time
columns. Default windows are chosen per source; the report states each.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlops.reports.drift_page import drift_page
from mlops.reports.errors import ReportError
from mlops.reports.events import Outcomes, decision_outcomes, event_time
from mlops.reports.html import write_report
from mlops.reports.stats import (
    PSIResult,
    poisson_ratio_ci,
    psi_categorical,
    psi_numeric,
    two_proportion_test,
)

#: Request columns read for feature drift (pass them as ``request_columns`` to
#: :meth:`Outcomes.from_events`).
REQUEST_FEATURE_COLUMNS = ("device_type", "os", "country", "publisher_id", "format", "is_app",
                           "w", "h", "bidfloor")
_CATEGORICAL = ("device_type", "os", "country", "publisher_id", "format", "is_app")
_NUMERIC = ("bidfloor",)
_TIME_COLUMNS = ("event_timestamp", "created", "created_timestamp", "ts")


@dataclass(frozen=True)
class Window:
    """[start, end) in UTC."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            t = getattr(self, name)
            object.__setattr__(self, name, t.replace(tzinfo=UTC) if t.tzinfo is None
                               else t.astimezone(UTC))
        if self.end <= self.start:
            raise ReportError(f"window end {self.end} is not after its start {self.start}")

    def mask(self, ts: pd.Series) -> pd.Series:
        return (ts >= self.start) & (ts < self.end)

    @classmethod
    def parse(cls, text: str) -> Window:
        """``START/END`` in ISO 8601 (the registry's ``training_window`` tag)."""
        try:
            a, b = text.split("/", 1)
            start, end = datetime.fromisoformat(a.strip()), datetime.fromisoformat(b.strip())
        except ValueError as exc:
            raise ReportError(f"window {text!r}: expected ISO START/END ({exc})") from exc
        return cls(start, end + timedelta(microseconds=1))   # the tag's end is inclusive

    def label(self) -> str:
        return f"{self.start:%Y-%m-%d %H:%M} – {self.end:%Y-%m-%d %H:%M}"


def default_windows(ts: pd.Series, *, recent_days: float = 1.0,
                    reference_days: float | None = 7.0) -> tuple[Window, Window]:
    """(reference, current): the last ``recent_days`` up to the newest timestamp (rolling,
    so a day's every hour is in it) and the ``reference_days`` before (None: all)."""
    ts = ts.dropna()
    if ts.empty:
        raise ReportError("no timestamps: cannot choose drift windows")
    if recent_days <= 0 or (reference_days is not None and reference_days <= 0):
        raise ReportError("recent_days and reference_days must be > 0")
    end = (ts.max().ceil("us") + pd.Timedelta(microseconds=1)).to_pydatetime()
    cut = end - timedelta(days=recent_days)
    first = ts.min().floor("us").to_pydatetime()
    ref_start = first if reference_days is None else max(first, cut - timedelta(
        days=reference_days))
    if ref_start >= cut:
        raise ReportError(f"the data spans less than {recent_days:g} day(s): no reference "
                          "window before the current one")
    return Window(ref_start, cut), Window(cut, end)


@dataclass(frozen=True)
class DriftThresholds:
    psi: float = 0.2
    psi_warn: float = 0.1
    calibration: tuple[float, float] = (0.9, 1.1)
    min_expected_clicks: float = 30.0
    win_rate_change: float = 0.2          # relative
    significance: float = 0.01


@dataclass(frozen=True)
class FeatureDrift:
    source: str              # "requests" or the feature table's file stem
    feature: str
    kind: str                # "categorical" | "numeric"
    psi: PSIResult
    status: str              # "ok" | "warn" | "drift" | "no data"


@dataclass(frozen=True)
class Calibration:
    model_version: str
    window: str              # "reference" | "current"
    impressions: int
    expected_clicks: float
    observed_clicks: int
    ratio: float
    ci: tuple[float, float]
    status: str              # "ok" | "miscalibrated" | "insufficient data"


@dataclass(frozen=True)
class MarketDrift:
    metric: str
    reference: float
    current: float
    change: float            # relative (current / reference − 1); PSI for distributions
    p_value: float
    status: str


@dataclass
class DriftReport:
    reference: Window
    current: Window
    feature_reference: Window
    feature_current: Window
    thresholds: DriftThresholds
    features: list[FeatureDrift]
    calibration: list[Calibration]
    market: list[MarketDrift]
    daily: pd.DataFrame            # per day: bids, wins, win_rate, mean_bid, o_e
    warnings: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> list[str]:
        """One line per flagged item."""
        out = [f"feature {f.source}.{f.feature}: PSI {f.psi.value:.3f}" for f in self.features
               if f.status == "drift"]
        out += [f"calibration {c.model_version} ({c.window}): observed/expected {c.ratio:.3f}"
                for c in self.calibration if c.status == "miscalibrated"]
        out += [f"{m.metric}: {m.reference:.4g} -> {m.current:.4g}" for m in self.market
                if m.status == "drift"]
        return out

    def feature(self, source: str, name: str) -> FeatureDrift:
        for f in self.features:
            if f.source == source and f.feature == name:
                return f
        raise ReportError(f"no feature {source}.{name}")

    def to_dict(self) -> dict[str, Any]:
        return {"report": "drift", "reference": self.reference, "current": self.current,
                "feature_reference": self.feature_reference,
                "feature_current": self.feature_current, "thresholds": self.thresholds,
                "flagged": self.flagged, "warnings": self.warnings, "features": self.features,
                "calibration": self.calibration, "market": self.market,
                "daily": self.daily.reset_index().to_dict(orient="records")}

    def write(self, out_dir: Path, stem: str = "drift") -> tuple[Path, Path]:
        """Write ``drift.html`` and ``drift.json``."""
        return write_report(out_dir, stem, drift_page(self), self.to_dict())


def load_feature_tables(offline_dir: Path) -> dict[str, pd.DataFrame]:
    """The Feast offline parquet files (``<name>.parquet`` → frame), sorted by name."""
    if not offline_dir.exists():
        return {}
    return {p.stem: pd.read_parquet(p) for p in sorted(offline_dir.glob("*.parquet"))}


def _status_psi(value: float, th: DriftThresholds) -> str:
    if math.isnan(value):
        return "no data"
    return "drift" if value > th.psi else "warn" if value > th.psi_warn else "ok"


def _request_features(requests: pd.DataFrame, ref: Window, cur: Window,
                      th: DriftThresholds) -> list[FeatureDrift]:
    if requests.empty or "ts" not in requests:
        return []
    r, c = requests.loc[ref.mask(requests["ts"])], requests.loc[cur.mask(requests["ts"])]
    out = []
    for name in _CATEGORICAL:
        if name in requests:
            p = psi_categorical(r[name].to_numpy(), c[name].to_numpy())
            out.append(FeatureDrift("requests", name, "categorical", p, _status_psi(p.value, th)))
    if "w" in requests and "h" in requests:
        size = [f"{w}x{h}" for w, h in zip(r["w"], r["h"], strict=True)]
        size_c = [f"{w}x{h}" for w, h in zip(c["w"], c["h"], strict=True)]
        p = psi_categorical(size, size_c)
        out.append(FeatureDrift("requests", "size", "categorical", p, _status_psi(p.value, th)))
    p = psi_categorical(r["ts"].dt.hour.to_numpy(), c["ts"].dt.hour.to_numpy())
    out.append(FeatureDrift("requests", "hour", "categorical", p, _status_psi(p.value, th)))
    for name in _NUMERIC:
        if name in requests:
            p = psi_numeric(r[name].to_numpy(dtype=np.float64), c[name].to_numpy(dtype=np.float64))
            out.append(FeatureDrift("requests", name, "numeric", p, _status_psi(p.value, th)))
    return out


def _table_features(name: str, frame: pd.DataFrame, ref: Window, cur: Window,
                    th: DriftThresholds) -> list[FeatureDrift]:
    tcol = next((c for c in _TIME_COLUMNS if c in frame.columns), None)
    if tcol is None:
        raise ReportError(f"feature table {name}: no time column ({', '.join(_TIME_COLUMNS)})")
    ts = pd.to_datetime(frame[tcol], utc=True)
    r, c = frame.loc[ref.mask(ts)], frame.loc[cur.mask(ts)]
    out = []
    for col in frame.columns:
        if col in _TIME_COLUMNS or not pd.api.types.is_numeric_dtype(frame[col]) \
                or pd.api.types.is_bool_dtype(frame[col]):
            continue
        p = psi_numeric(r[col].to_numpy(dtype=np.float64), c[col].to_numpy(dtype=np.float64))
        out.append(FeatureDrift(name, col, "numeric", p, _status_psi(p.value, th)))
    return out


def _calibration(j: pd.DataFrame, window: str, th: DriftThresholds) -> list[Calibration]:
    imps = j.loc[(j["impression"] > 0) & j["pctr"].notna()]
    out = []
    version = imps["model_version"].fillna("").astype(str).replace("", "(none)")
    for v, g in imps.groupby(version):
        expected = float(g["pctr"].sum())
        observed = int(g["clicked"].sum())
        ratio = observed / expected if expected > 0 else math.nan
        lo, hi = th.calibration
        if expected < th.min_expected_clicks:
            status = "insufficient data"
        else:
            status = "ok" if lo <= ratio <= hi else "miscalibrated"
        out.append(Calibration(str(v), window, len(g), expected, observed, ratio,
                               poisson_ratio_ci(observed, expected), status))
    return out


def _market(r: pd.DataFrame, c: pd.DataFrame, th: DriftThresholds) -> list[MarketDrift]:
    out = []
    bids_r, bids_c = float(r["bid"].sum()), float(c["bid"].sum())
    wins_r, wins_c = float(r["won"].sum()), float(c["won"].sum())
    wr_r = wins_r / bids_r if bids_r else math.nan
    wr_c = wins_c / bids_c if bids_c else math.nan
    change = wr_c / wr_r - 1 if wr_r else math.nan
    p = two_proportion_test(wins_r, bids_r, wins_c, bids_c)
    flagged = abs(change) > th.win_rate_change and p < th.significance
    status = "no data" if math.isnan(change) else "drift" if flagged else "ok"
    out.append(MarketDrift("win rate", wr_r, wr_c, change, p, status))
    br, bc = r["bid_price"].dropna(), c["bid_price"].dropna()
    psi = psi_numeric(br.to_numpy(), bc.to_numpy())
    out.append(MarketDrift("bid price distribution (PSI)", float(br.median()) if len(br)
                           else math.nan, float(bc.median()) if len(bc) else math.nan,
                           psi.value, math.nan, _status_psi(psi.value, th)))
    for label, frame_r, frame_c in (("mean bid (CPM)", br, bc),):
        m_r, m_c = float(frame_r.mean()), float(frame_c.mean())
        out.append(MarketDrift(label, m_r, m_c, m_c / m_r - 1 if m_r else math.nan, math.nan,
                               "info"))
    paid_r = 1000 * r["cost"].sum() / r["impression"].sum() if r["impression"].sum() else math.nan
    paid_c = 1000 * c["cost"].sum() / c["impression"].sum() if c["impression"].sum() else math.nan
    out.append(MarketDrift("mean paid price (CPM)", float(paid_r), float(paid_c),
                           float(paid_c / paid_r - 1) if paid_r else math.nan, math.nan, "info"))
    return out


def _daily(j: pd.DataFrame) -> pd.DataFrame:
    day = j["ts"].dt.floor("D").dt.tz_localize(None)
    imps = j["impression"] > 0
    g = j.assign(day=day, pctr_imp=np.where(imps, j["pctr"].fillna(0.0), 0.0),
                 click_scored=np.where(imps & j["pctr"].notna(), j["clicked"], 0.0))
    d = g.groupby("day").agg(bids=("bid", "sum"), wins=("won", "sum"),
                             mean_bid=("bid_price", "mean"), expected=("pctr_imp", "sum"),
                             observed=("click_scored", "sum"))
    d["win_rate"] = d["wins"] / d["bids"].where(d["bids"] > 0)
    d["o_e"] = d["observed"] / d["expected"].where(d["expected"] > 0)
    return d


def drift_report(decisions: pd.DataFrame, outcomes: Outcomes, *,
                 reference: Window | None = None, current: Window | None = None,
                 feature_tables: Mapping[str, pd.DataFrame] | None = None,
                 recent_days: float = 1.0, reference_days: float | None = 7.0,
                 thresholds: DriftThresholds | None = None) -> DriftReport:
    """Compare the current window with the reference (see the module docstring).

    Given windows apply to every source. Without them each source takes
    :func:`default_windows` (``recent_days``, ``reference_days``) of its own time: the
    decisions their :func:`~mlops.reports.events.event_time`, the request context and the
    feature tables the requests' time.
    """
    th = thresholds or DriftThresholds()
    warnings: list[str] = []
    j = decision_outcomes(decisions, outcomes)
    j["ts"] = event_time(j)
    if (reference is None or current is None) and j.empty:
        raise ReportError("no decisions: cannot choose drift windows")
    if reference is None or current is None:
        d_ref, d_cur = default_windows(j["ts"], recent_days=recent_days,
                                       reference_days=reference_days)
        f_ref, f_cur = d_ref, d_cur
        if len(outcomes.requests):
            f_ref, f_cur = default_windows(outcomes.requests["ts"], recent_days=recent_days,
                                           reference_days=reference_days)
        d_ref, f_ref = reference or d_ref, reference or f_ref
        d_cur, f_cur = current or d_cur, current or f_cur
    else:
        d_ref, d_cur, f_ref, f_cur = reference, current, reference, current
    jr, jc = j.loc[d_ref.mask(j["ts"])], j.loc[d_cur.mask(j["ts"])]
    if jr.empty or jc.empty:
        warnings.append(f"decisions: {len(jr):,} in the reference window, {len(jc):,} in the "
                        "current one; calibration and market drift need both")
    features = _request_features(outcomes.requests, f_ref, f_cur, th)
    if not features:
        warnings.append("no request rows: request-context drift skipped")
    for name, frame in (feature_tables or {}).items():
        features += _table_features(name, frame, f_ref, f_cur, th)
    if not feature_tables:
        warnings.append("no Feast offline feature tables: feature-table drift skipped")
    calibration = _calibration(jr, "reference", th) + _calibration(jc, "current", th)
    market = _market(jr, jc, th) if len(jr) and len(jc) else []
    return DriftReport(d_ref, d_cur, f_ref, f_cur, th, features, calibration, market,
                       _daily(j) if len(j) else pd.DataFrame(), warnings)


__all__ = ["REQUEST_FEATURE_COLUMNS", "Calibration", "DriftReport", "DriftThresholds",
           "FeatureDrift", "MarketDrift", "Window", "default_windows", "drift_report",
           "load_feature_tables"]

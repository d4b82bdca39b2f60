"""The A/B report: per-variant delivery and outcome metrics, and whether the change helped.

For each arm (variant) of an experiment: requests, bids, win rate, impressions, CTR,
CPC, CPA, spend, value and surplus (value − cost, value = the campaign's CPC × clicks or
CPA × conversions), ROI. Each treatment arm is compared with the control on every ratio
metric with

* a fixed-horizon z-test whose variance is the delta method over the randomisation unit
  (user by default: a user's impressions are correlated, so the unit, not the
  impression, is the sample; see :mod:`mlops.reports.stats`);
* CUPED when the experiment's units were seen before it started (the covariate is the
  unit's own pre-period value of the metric, linearised);
* an always-valid p-value (normal-mixture mSPRT on the running difference, evaluated at
  ``looks`` equally spaced times): the one to use if the report was read — and acted on
  — before the planned end;
* a sample-ratio-mismatch check of unit counts against the configured split.

Verdicts, per metric and arm, at level ``alpha``: ``better`` / ``worse`` (metrics with a
direction: CTR, CPC, ...), ``higher`` / ``lower`` (neutral ones: bid rate, spend),
``inconclusive``, or ``insufficient data`` (also when fewer than ``MIN_EVENT_UNITS``
units of an arm carry the metric's numerator, e.g. a CVR with 3 conversions). An SRM
makes every verdict untrustworthy;
the report says so first.

The experiment (:class:`ExperimentSpec`) names its arms and planned split. A decision
belongs to arm ``A`` of experiment ``E`` when its ``variant`` is ``A``, ``E:A`` or ``E/A``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlops.reports.ab_page import ab_page
from mlops.reports.errors import ReportError
from mlops.reports.events import CampaignInfo, Outcomes, Unit, decision_outcomes, unit_ids
from mlops.reports.html import json_safe, write_report
from mlops.reports.stats import (
    Comparison,
    SRMResult,
    compare_ratios,
    linearize,
    running_ratio,
    sequential_pvalues,
    srm_test,
)

#: Columns summed per unit (see :func:`mlops.reports.events.decision_outcomes`).
_SUMS = ("request", "bid", "won", "impression", "clicked", "converted", "cost", "value",
         "surplus")


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    numerator: str
    denominator: str
    scale: float = 1.0
    better: int = 0          # +1 higher is better, −1 lower is better, 0 neutral
    kind: str = "num"        # how tables format it (see html.fmt)
    needs_value: bool = False


METRICS: tuple[Metric, ...] = (
    Metric("bid_rate", "bid rate (bids / requests)", "bid", "request", kind="pct"),
    Metric("win_rate", "win rate (wins / bids)", "won", "bid", kind="pct"),
    Metric("ctr", "CTR (clicked impressions / impressions)", "clicked", "impression",
           better=1, kind="pct"),
    Metric("cvr", "conversions per click", "converted", "clicked", better=1, kind="pct"),
    Metric("ecpm", "eCPM (USD)", "cost", "impression", 1000.0, kind="usd"),
    Metric("cpc", "CPC (USD)", "cost", "clicked", better=-1, kind="usd"),
    Metric("cpa", "CPA (USD)", "cost", "converted", better=-1, kind="usd"),
    Metric("spend_per_1k", "spend per 1000 requests (USD)", "cost", "request", 1000.0,
           kind="usd"),
    Metric("surplus_per_1k", "surplus per 1000 requests (USD)", "surplus", "request", 1000.0,
           better=1, kind="usd", needs_value=True),
    Metric("roi", "ROI (surplus / spend)", "surplus", "cost", better=1, kind="pct",
           needs_value=True),
)
METRIC_NAMES = tuple(m.name for m in METRICS)


def _utc(t: datetime | str | None) -> datetime | None:
    if t is None:
        return None
    ts = datetime.fromisoformat(t) if isinstance(t, str) else t
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


@dataclass(frozen=True)
class ExperimentSpec:
    """An experiment: its arms with their planned shares, the control, window and unit."""

    name: str
    split: Mapping[str, float]
    control: str
    start: datetime | None = None     # None: the first decision of an arm
    end: datetime | None = None       # exclusive; None: just after the last decision
    unit: Unit = "user"
    pre_days: float = 7.0             # CUPED pre-period: [start − pre_days, start)

    def __post_init__(self) -> None:
        if not self.name:
            raise ReportError("experiment: name is empty")
        if len(self.split) < 2:
            raise ReportError(f"experiment {self.name}: needs at least two arms, got "
                              f"{sorted(self.split)}")
        if any(not (s > 0) for s in self.split.values()):
            raise ReportError(f"experiment {self.name}: split shares must be > 0")
        if self.control not in self.split:
            raise ReportError(f"experiment {self.name}: control {self.control!r} is not an arm "
                              f"({sorted(self.split)})")
        if self.unit not in ("user", "request"):
            raise ReportError(f"experiment {self.name}: unit must be user or request")
        if self.pre_days < 0:
            raise ReportError(f"experiment {self.name}: pre_days must be >= 0")
        object.__setattr__(self, "start", _utc(self.start))
        object.__setattr__(self, "end", _utc(self.end))
        if self.start and self.end and self.end <= self.start:
            raise ReportError(f"experiment {self.name}: end must be after start")

    @property
    def treatments(self) -> list[str]:
        return [a for a in sorted(self.split) if a != self.control]

    def arm_of(self, variant: pd.Series) -> pd.Series:
        """The arm of each decision's variant (NaN when not in the experiment; shadow
        records, ``<variant>:shadow:<alias set>``, are never in an arm)."""
        lookup: dict[str, str] = {}
        for arm in self.split:
            lookup.update({arm: arm, f"{self.name}:{arm}": arm, f"{self.name}/{arm}": arm})
        return variant.map(lookup)

    @classmethod
    def from_experiment(cls, experiment: Any, *, control: str | None = None,
                        start: datetime | None = None, end: datetime | None = None
                        ) -> ExperimentSpec:
        """The spec of a :class:`decisioning.experiments.Experiment` (its variants'
        weights are the split; variants of weight 0 get no traffic and are left out)."""
        split = {str(v.name): float(v.weight) for v in experiment.variants if v.weight > 0}
        return cls(name=str(experiment.name), split=split,
                   control=control or _default_control(split), start=start, end=end)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ExperimentSpec:
        """``{"name", "split": {arm: share}, "control", "start"?, "end"?, "unit"?,
        "pre_days"?}``; times are ISO 8601 (UTC when no offset)."""
        try:
            split = {str(k): float(v) for k, v in dict(doc["split"]).items()}
            return cls(name=str(doc["name"]), split=split,
                       control=str(doc.get("control") or _default_control(split)),
                       start=_utc(doc.get("start")), end=_utc(doc.get("end")),
                       unit=doc.get("unit", "user"), pre_days=float(doc.get("pre_days", 7.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ReportError(f"experiment spec: {exc!r}") from exc

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "split": dict(self.split), "control": self.control,
                "start": self.start.isoformat() if self.start else None,
                "end": self.end.isoformat() if self.end else None, "unit": self.unit,
                "pre_days": self.pre_days}


def _default_control(arms: Mapping[str, float] | list[str]) -> str:
    names = sorted(arms)
    return "control" if "control" in names else names[0]


def load_experiment(path: Path) -> ExperimentSpec:
    """An :class:`ExperimentSpec` from a JSON file (see :meth:`ExperimentSpec.from_json`)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: cannot read experiment: {exc}") from exc
    if not isinstance(doc, dict):
        raise ReportError(f"{path}: expected a JSON object")
    return ExperimentSpec.from_json(doc)


def infer_experiment(name: str, decisions: pd.DataFrame, *,
                     split: Mapping[str, float] | None = None, control: str | None = None,
                     unit: Unit = "user") -> ExperimentSpec:
    """An experiment from the decision log: arms are the variants ``NAME:arm`` (or
    ``NAME/arm``), or the arms of ``split``; without a split the arms are planned equal."""
    variants = sorted({str(v) for v in decisions["variant"].dropna().unique()})
    if split is None:
        arms = sorted({v[len(name) + 1:] for v in variants
                       if v.startswith((f"{name}:", f"{name}/")) and ":shadow:" not in v})
        if len(arms) < 2:
            raise ReportError(
                f"experiment {name!r}: no variants named {name}:<arm> in the decision log "
                f"(variants seen: {variants}); give the split, e.g. control=0.5,treatment=0.5, "
                "or an experiment file")
        split = {a: 1.0 for a in arms}
    return ExperimentSpec(name=name, split=dict(split),
                          control=control or _default_control(dict(split)), unit=unit)


# ------------------------------------------------------------------------ results


@dataclass(frozen=True)
class ArmSummary:
    arm: str
    planned_share: float
    units: int
    totals: dict[str, float]      # requests, bids, wins, impressions, clicks, ... surplus
    metrics: dict[str, float]     # METRICS by name


@dataclass(frozen=True)
class MetricResult:
    metric: str
    label: str
    arm: str
    control: str
    better: int
    comparison: Comparison                 # fixed horizon; CUPED-adjusted when applied
    plain: Comparison | None               # the unadjusted test, when CUPED was applied
    verdict: str
    sequential_p: float
    sequential_verdict: str
    first_significant_look: datetime | None


@dataclass(frozen=True)
class Timeline:
    """Running (cumulative) metric per arm at each look, with pointwise 95% CIs."""

    looks: list[datetime]
    value: dict[str, dict[str, list[float]]]    # metric -> arm -> per look
    ci_low: dict[str, dict[str, list[float]]]
    ci_high: dict[str, dict[str, list[float]]]
    sequential_p: dict[str, dict[str, list[float]]]   # metric -> treatment arm -> per look


@dataclass(frozen=True)
class CupedInfo:
    applied: bool
    pre_start: datetime | None
    pre_end: datetime | None
    units_with_pre: float          # share of experiment units seen in the pre-period
    reason: str = ""


@dataclass
class ABReport:
    experiment: ExperimentSpec
    alpha: float
    start: datetime
    end: datetime
    arms: list[ArmSummary]
    results: list[MetricResult]
    srm: SRMResult
    timeline: Timeline
    cuped: CupedInfo
    tau_rel: float
    warnings: list[str] = field(default_factory=list)

    def result(self, metric: str, arm: str | None = None) -> MetricResult:
        arm = arm or self.experiment.treatments[0]
        for r in self.results:
            if r.metric == metric and r.arm == arm:
                return r
        raise ReportError(f"no result for metric {metric!r} and arm {arm!r}")

    def arm(self, name: str) -> ArmSummary:
        for a in self.arms:
            if a.arm == name:
                return a
        raise ReportError(f"no arm {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "report": "ab", "experiment": self.experiment.to_json(), "alpha": self.alpha,
            "start": self.start, "end": self.end, "tau_rel": self.tau_rel,
            "srm": {**json_safe(self.srm), "mismatch": self.srm.mismatch,
                    "observed_share": self.srm.observed_share},
            "cuped": self.cuped, "warnings": self.warnings, "arms": self.arms,
            "results": self.results, "timeline": self.timeline,
        }

    def write(self, out_dir: Path) -> tuple[Path, Path]:
        """Write ``ab_<experiment>.html`` (with plots) and ``ab_<experiment>.json``."""
        stem = "ab_" + "".join(c if c.isalnum() or c in "-_." else "_"
                               for c in self.experiment.name)
        return write_report(out_dir, stem, ab_page(self), self.to_dict())


# ---------------------------------------------------------------------- computing


# A ratio metric's delta-method interval needs events on both sides: with a handful of
# units carrying the numerator (e.g. 0 conversions in the control arm) the variance
# estimate is itself noise and a "significant" lift of -4000% is an artefact.
MIN_EVENT_UNITS = 10


def _enough_events(arms: Sequence[_ArmData], numerator: str) -> bool:
    return all(int(np.count_nonzero(a.total(numerator))) >= MIN_EVENT_UNITS for a in arms)


def _verdict(comp: Comparison, better: int, significant: bool, enough: bool = True) -> str:
    if (not enough or math.isnan(comp.diff) or math.isnan(comp.diff_se)
            or comp.diff_se == 0):
        return "insufficient data"
    if not significant:
        return "inconclusive"
    up = comp.diff > 0
    if better == 0:
        return "higher" if up else "lower"
    return "better" if up == (better > 0) else "worse"


def _metric_values(totals: Mapping[str, float], has_value: bool) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in METRICS:
        den = totals[m.denominator]
        if (m.needs_value and not has_value) or den == 0:
            out[m.name] = math.nan
        else:
            out[m.name] = m.scale * totals[m.numerator] / den
    return out


@dataclass
class _ArmData:
    units: pd.Index                          # unit ids
    cum: dict[str, np.ndarray]               # column -> (units, looks) cumulative sums

    def total(self, col: str) -> np.ndarray:
        return np.ascontiguousarray(self.cum[col][:, -1])


def _arm_data(rows: pd.DataFrame, looks: int) -> _ArmData:
    codes, units = pd.factorize(rows["unit"], sort=True)
    cell = codes * looks + rows["look"].to_numpy()
    size = len(units) * looks
    cum: dict[str, np.ndarray] = {}
    for col in _SUMS:
        a = np.bincount(cell, weights=rows[col].to_numpy(dtype=np.float64), minlength=size)
        cum[col] = np.cumsum(a.reshape(len(units), looks), axis=1)
    return _ArmData(pd.Index(units), cum)


def _pre_period(joined: pd.DataFrame, spec: ExperimentSpec, start: datetime
                ) -> tuple[pd.DataFrame | None, CupedInfo]:
    if spec.unit != "user":
        return None, CupedInfo(False, None, None, 0.0, "randomised by request: no pre-period")
    if spec.pre_days == 0:
        return None, CupedInfo(False, None, None, 0.0, "pre_days = 0")
    pre_start = start - timedelta(days=spec.pre_days)
    pre = joined.loc[(joined["ts"] >= pre_start) & (joined["ts"] < start)]
    if pre.empty:
        return None, CupedInfo(False, pre_start, start, 0.0,
                               "no decisions in the pre-period")
    per_unit = pre.assign(unit=unit_ids(pre, "user")).groupby("unit")[list(_SUMS)].sum()
    return per_unit, CupedInfo(True, pre_start, start, 0.0)


def ab_report(decisions: pd.DataFrame, outcomes: Outcomes, experiment: ExperimentSpec, *,
              campaigns: Mapping[str, CampaignInfo] | None = None, alpha: float = 0.05,
              looks: int = 20, tau_rel: float = 0.1, min_units: int = 100,
              srm_threshold: float = 0.001) -> ABReport:
    """Compare the arms of ``experiment`` over the decision log and its outcomes.

    ``decisions`` may hold other variants and earlier days (the pre-period for CUPED);
    ``campaigns`` gives each campaign's goal (without it there is no value, surplus or
    ROI). ``looks`` equally spaced times carry the running metrics and the always-valid
    p-values; ``tau_rel`` sets the mSPRT mixing scale as a share of the pooled metric at
    the first look with ``min_units`` units per arm (never below the difference's
    standard error there; see :func:`~mlops.reports.stats.sequential_pvalues`).
    """
    if not 0 < alpha < 1:
        raise ReportError(f"alpha must be in (0, 1), got {alpha}")
    if looks < 1 or tau_rel <= 0 or min_units < 2:
        raise ReportError("looks must be >= 1, tau_rel > 0 and min_units >= 2")
    spec = experiment
    joined = decision_outcomes(decisions, outcomes, dict(campaigns) if campaigns else None)
    arm = spec.arm_of(joined["variant"].astype(str)) if "variant" in joined else None
    if arm is None or arm.isna().all():
        seen = sorted(joined["variant"].dropna().astype(str).unique()) if len(joined) else []
        raise ReportError(f"experiment {spec.name}: no decisions of arms {sorted(spec.split)} "
                          f"(variants seen: {seen[:20]})")
    exp = joined.assign(arm=arm).loc[arm.notna()]
    start = spec.start or exp["ts"].min().floor("us").to_pydatetime()
    # Without a planned end the window closes just after the last decision.
    end = spec.end or (exp["ts"].max().ceil("us") + pd.Timedelta(microseconds=1)
                       ).to_pydatetime()
    exp = exp.loc[(exp["ts"] >= start) & (exp["ts"] < end)].copy()
    if exp.empty:
        raise ReportError(f"experiment {spec.name}: no decisions between {start} and {end}")
    warnings: list[str] = []
    missing_arms = sorted(set(spec.split) - set(exp["arm"].unique()))
    if missing_arms:
        raise ReportError(f"experiment {spec.name}: arms without decisions: {missing_arms}")
    exp["unit"] = unit_ids(exp, spec.unit)
    if spec.unit == "user" and exp["user_id"].isna().all():
        warnings.append("no request rows joined the decisions: the unit falls back to the "
                        "request (the variance ignores per-user correlation)")
    multi = exp.groupby("unit")["arm"].nunique()
    if (multi > 1).any():
        warnings.append(f"{int((multi > 1).sum()):,} units appear in more than one arm "
                        "(assignment is not by unit?); they count once per arm")
    has_value = campaigns is not None and bool(exp["value"].notna().any())
    if campaigns is None:
        warnings.append("no campaigns given: value, surplus and ROI are not computed")
    elif exp.loc[exp["impression"] > 0, "value"].isna().any():
        n = int(exp.loc[exp["impression"] > 0, "value"].isna().sum())
        warnings.append(f"{n:,} impressions of campaigns missing from campaigns.json count "
                        "zero value")
    exp["value"] = exp["value"].fillna(0.0)
    exp["surplus"] = exp["value"] - exp["cost"]
    edges = pd.to_datetime([start + (end - start) * (k + 1) / looks for k in range(looks)],
                           utc=True)
    ts_ns = pd.DatetimeIndex(exp["ts"]).as_unit("ns").asi8
    exp["look"] = np.minimum(np.searchsorted(edges.as_unit("ns").asi8, ts_ns, side="left"),
                             looks - 1)
    arms = {a: _arm_data(exp.loc[exp["arm"] == a], looks) for a in sorted(spec.split)}
    srm = srm_test({a: len(d.units) for a, d in arms.items()}, spec.split,
                   threshold=srm_threshold)
    pre, cuped = _pre_period(joined, spec, start)
    if pre is not None:
        all_units = pd.Index(np.concatenate([d.units.to_numpy() for d in arms.values()]))
        share_seen = float(all_units.isin(pre.index).mean())
        cuped = replace(cuped, units_with_pre=share_seen)
        if share_seen == 0:
            pre, cuped = None, replace(cuped, applied=False,
                                       reason="no experiment unit was seen in the pre-period")
    summaries = []
    for a, d in arms.items():
        totals = {c: float(d.total(c).sum()) for c in _SUMS}
        summaries.append(ArmSummary(a, spec.split[a] / sum(spec.split.values()), len(d.units),
                                    totals, _metric_values(totals, has_value)))
    results, timeline = _compare(spec, arms, pre, edges, alpha=alpha, tau_rel=tau_rel,
                                 min_units=min_units, has_value=has_value)
    if srm.mismatch:
        warnings.insert(0, f"sample ratio mismatch (p = {srm.p_value:.2g}): unit counts "
                        f"{srm.counts} do not fit the split {dict(spec.split)}; "
                        "do not trust the verdicts")
    return ABReport(spec, alpha, start, end, summaries, results, srm, timeline, cuped, tau_rel,
                    warnings)


def _compare(spec: ExperimentSpec, arms: Mapping[str, _ArmData], pre: pd.DataFrame | None,
             edges: pd.DatetimeIndex, *, alpha: float, tau_rel: float, min_units: int,
             has_value: bool) -> tuple[list[MetricResult], Timeline]:
    z = 1.959963984540054
    looks = [t.to_pydatetime() for t in edges]
    running: dict[str, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    value: dict[str, dict[str, list[float]]] = {}
    lo: dict[str, dict[str, list[float]]] = {}
    hi: dict[str, dict[str, list[float]]] = {}
    seq: dict[str, dict[str, list[float]]] = {}
    results: list[MetricResult] = []
    metrics = [m for m in METRICS if has_value or not m.needs_value]
    pre_aligned = {} if pre is None else {
        t: pre.reindex(arms[spec.control].units.append(arms[t].units)).fillna(0.0)
        for t in spec.treatments}
    for m in metrics:
        running[m.name] = {}
        for a, d in arms.items():
            present = d.cum["request"] > 0
            r, v, n = running_ratio(m.scale * d.cum[m.numerator], d.cum[m.denominator], present)
            running[m.name][a] = (r, v, n)
        value[m.name] = {a: running[m.name][a][0].tolist() for a in arms}
        lo[m.name] = {a: (running[m.name][a][0] - z * np.sqrt(running[m.name][a][1])).tolist()
                      for a in arms}
        hi[m.name] = {a: (running[m.name][a][0] + z * np.sqrt(running[m.name][a][1])).tolist()
                      for a in arms}
        seq[m.name] = {}
        c = arms[spec.control]
        for t in spec.treatments:
            ta = arms[t]
            plain = compare_ratios((m.scale * c.total(m.numerator), c.total(m.denominator)),
                                   (m.scale * ta.total(m.numerator), ta.total(m.denominator)),
                                   alpha=alpha)
            comp, plain_kept = plain, None
            if pre is not None:
                cov = _covariates(m, pre_aligned[t], len(c.units))
                if cov is not None:
                    comp = compare_ratios(
                        (m.scale * c.total(m.numerator), c.total(m.denominator)),
                        (m.scale * ta.total(m.numerator), ta.total(m.denominator)),
                        alpha=alpha, covariates=cov)
                    plain_kept = plain
            p_seq = sequential_pvalues(running[m.name][spec.control], running[m.name][t],
                                       tau_rel=tau_rel, min_units=min_units)
            seq[m.name][t] = p_seq.tolist()
            enough = _enough_events((c, ta), m.numerator)
            hit = np.flatnonzero(p_seq <= alpha) if enough else np.array([], dtype=np.int64)
            results.append(MetricResult(
                metric=m.name, label=m.label, arm=t, control=spec.control, better=m.better,
                comparison=comp, plain=plain_kept,
                verdict=_verdict(comp, m.better, comp.significant(alpha), enough),
                sequential_p=float(p_seq[-1]),
                sequential_verdict=_verdict(plain, m.better, bool(p_seq[-1] <= alpha), enough),
                first_significant_look=looks[int(hit[0])] if len(hit) else None))
    return results, Timeline(looks, value, lo, hi, seq)


def _covariates(m: Metric, pre: pd.DataFrame, n_control: int
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """ψ per unit of each arm from the units' pre-period sums (pooled linearisation);
    ``pre`` is aligned to the control's units followed by the treatment's."""
    if float(pre[m.denominator].sum()) == 0.0:
        return None
    psi = linearize(m.scale * pre[m.numerator].to_numpy(), pre[m.denominator].to_numpy())
    return psi[:n_control], psi[n_control:]


__all__ = ["METRICS", "METRIC_NAMES", "ABReport", "ArmSummary", "CupedInfo", "ExperimentSpec",
           "Metric", "MetricResult", "Timeline", "ab_report", "infer_experiment",
           "load_experiment"]

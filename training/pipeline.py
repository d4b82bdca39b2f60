"""``adplatform train all``: fraud, then CTR on fraud-filtered data, then bid shading.

:func:`train_all` runs the three trainings in that order (each logs its run to MLflow and
registers a version: ``@champion`` the first time, ``@challenger`` after), evaluates the
real-data comparisons, and returns the report (written as JSON with ``report=PATH``)::

    {"ctr": {auc, oracle_auc, logloss, oracle_logloss, base_logloss, calibration_ratio,
             ece, captured_gain, campaign_ratio_min/max, ...},
     "shading": {surplus, oracle_surplus, best_constant_surplus, km_surplus,
                 truthful_surplus, win_rate, surplus_share_of_oracle, ...},
     "fraud": {pr_auc, recall_at_1pct_fpr, rules_only_recall, per_kind: {KIND: recall}},
     "real": {"criteo": {auc_lgbm, auc_deep, auc_lr, ...},
              "ipinyou_2259": {loglik_model, loglik_km}, "talkingdata": {auc, ...}},
     "size": "small" | "full", "workspace": {...}, "seconds": {...}, "warnings": [...]}

Every figure is computed on held-out data by that run. CTR trains without the rows the
freshly trained fraud model flags (``CTRConfig.fraud_alias`` = its alias), on top of the
general-IVT rules.

Sizes (:func:`plan`):

* ``small`` — a quick run for tests and demos: fewer boosting rounds and epochs, the
  real-data comparisons with fewer folds, seeds and bootstrap replicates;
* ``full`` — the quality run: every model at its default settings, CTR held out on the
  last four days, real data at the issue's protocol (Criteo 5-fold CV, 3 DCN seeds,
  1,000 bootstrap replicates). It refuses a workspace with fewer than
  :data:`FULL_MIN_DAYS` days or fewer than :data:`FULL_MIN_HELDOUT_CLICKS` clicks in
  the CTR hold-out (``force=True`` downgrades that to a warning in the report).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from adplatform.config import Settings
from adplatform.errors import ConfigError, DataError
from adplatform.eventlog import read_events
from training.ctr import CTRConfig
from training.fraud import FraudConfig
from training.realdata import CriteoConfig, TalkingDataConfig

log = logging.getLogger(__name__)

Size = Literal["small", "full"]
SIZES: tuple[str, ...] = get_args(Size)
FULL_MIN_DAYS = 14
FULL_MIN_HELDOUT_CLICKS = 5_000
FULL_CTR_HOLDOUT_DAYS = 4       # 150k requests a day: ~1,500 human clicks a day

# The stages in order; a callback hears (stage, "start" | "done" | "skipped", detail).
STAGES: tuple[str, ...] = ("fraud", "ctr", "ctr_deep", "shading", "real")
StageCallback = Callable[[str, str, str], None]

CTR_KEYS = ("auc", "oracle_auc", "logloss", "oracle_logloss", "base_logloss",
            "calibration_ratio", "ece", "captured_gain", "truth_ratio", "campaign_ratio_min",
            "campaign_ratio_max", "campaign_truth_ratio_min", "campaign_truth_ratio_max",
            "oracle_campaign_ratio_min", "oracle_campaign_ratio_max", "test_clicks", "n_test",
            "n_train", "n_calibration", "n_excluded", "ivt_recall", "ivt_false_positive_rate",
            "fraud_model_flagged", "fraud_model_only", "test_ivt_share", "best_iteration",
            "epochs", "onnx_parity_share", "onnx_max_abs_diff")
SHADING_KEYS = ("surplus", "oracle_surplus", "best_constant_surplus", "km_surplus",
                "truthful_surplus", "win_rate", "spend", "surplus_share_of_oracle",
                "lift_vs_best_constant", "lift_vs_km", "best_constant_factor",
                "oracle_win_rate", "best_constant_win_rate", "km_win_rate", "n_auctions")
SHADING_METRIC_KEYS = ("test_loglik_model", "test_loglik_km", "test_win_auc",
                       "test_win_calibration", "n_train", "n_test", "epochs")
FRAUD_KEYS = ("pr_auc", "recall_at_1pct_fpr", "rules_only_recall", "per_kind", "roc_auc",
              "gain_over_rules", "rules_per_kind", "rules_only_pr_auc", "fpr_at_1pct_point",
              "n_requests", "n_bots", "kind_counts", "model_only", "at_threshold")
REAL_DATASETS = {"criteo": "criteo_dac_sample", "talkingdata": "talkingdata_adtracking",
                 "ipinyou_2259": "ipinyou_2259_bid_landscape_drsa"}


@dataclass
class Plan:
    """What one ``train all`` run trains, at which settings (see the module doc)."""

    size: Size
    fraud: FraudConfig
    ctr: CTRConfig
    shading: Any                     # models.shading.ShadingConfig (torch: imported lazily)
    criteo: CriteoConfig
    talkingdata: TalkingDataConfig
    deep: Any | None = None          # training.ctr_deep.DeepCTRConfig when the DCN trains too
    real: bool = True
    min_days: int = 0
    min_heldout_clicks: int = 0
    notes: list[str] = field(default_factory=list)


def plan(size: Size, *, deep: bool = False, real: bool = True) -> Plan:
    """The configurations of a ``small`` or ``full`` run."""
    from models.shading import ShadingConfig

    if size not in SIZES:
        raise ConfigError(f"size must be one of {SIZES}, got {size!r}")
    if size == "full":
        deep_cfg = None
        if deep:
            from training.ctr_deep import DeepCTRConfig

            deep_cfg = DeepCTRConfig(holdout_days=FULL_CTR_HOLDOUT_DAYS)
        return Plan(size="full", fraud=FraudConfig(),
                    ctr=CTRConfig(holdout_days=FULL_CTR_HOLDOUT_DAYS), shading=ShadingConfig(),
                    criteo=CriteoConfig(), talkingdata=TalkingDataConfig(), deep=deep_cfg,
                    real=real, min_days=FULL_MIN_DAYS,
                    min_heldout_clicks=FULL_MIN_HELDOUT_CLICKS)
    from models.deep_ctr import DeepTrainConfig

    deep_small = None
    if deep:
        from training.ctr_deep import DeepCTRConfig

        deep_small = DeepCTRConfig(train=DeepTrainConfig(epochs=2, batch_size=1024))
    criteo = CriteoConfig(folds=2, inner_folds=2, deep_seeds=1, bootstrap=200,
                          lr_c=(0.03, 0.1),
                          deep_train=DeepTrainConfig(epochs=6, batch_size=256, lr=1e-3,
                                                     weight_decay=1e-4, patience=2))
    return Plan(size="small",
                fraud=FraudConfig(num_boost_round=150, parity_rows=2000),
                ctr=CTRConfig(num_boost_round=150),
                shading=ShadingConfig(hidden=32, n_layers=2, max_epochs=6, patience=2),
                criteo=criteo, talkingdata=TalkingDataConfig(num_boost_round=200,
                                                             bootstrap=200),
                deep=deep_small, real=real)


def workspace_scale(settings: Settings, ctr_holdout_days: int) -> dict[str, float]:
    """Days in the event log and clicks in the CTR hold-out window (bots included)."""
    clicks = read_events(settings.workspace.events, "clicks")
    imps = read_events(settings.workspace.events, "impressions")
    if imps.empty:
        raise DataError(f"no impressions under {settings.workspace.events}: simulate first")
    days = np.sort(imps["ts"].dt.floor("D").unique())
    holdout = min(ctr_holdout_days, len(days) // 3) or 1
    start = days[-holdout]
    held = int((clicks["ts"].dt.floor("D") >= start).sum()) if not clicks.empty else 0
    return {"days": float(len(days)), "impressions": float(len(imps)),
            "clicks": float(len(clicks)), "heldout_days": float(holdout),
            "heldout_clicks_all_traffic": float(held)}


def check_scale(scale: dict[str, float], p: Plan, *, force: bool) -> list[str]:
    """Problems that make a ``full`` run's figures unfit for the quality thresholds."""
    problems = []
    if scale["days"] < p.min_days:
        problems.append(f"the event log spans {scale['days']:.0f} days; {p.size} needs "
                        f">= {p.min_days}")
    if scale["heldout_clicks_all_traffic"] < p.min_heldout_clicks:
        problems.append(f"{scale['heldout_clicks_all_traffic']:.0f} clicks in the last "
                        f"{scale['heldout_days']:.0f} days; {p.size} needs >= "
                        f"{p.min_heldout_clicks} held-out clicks")
    if problems and not force:
        raise ConfigError("; ".join(problems) + " (simulate more, use --size small, or force)")
    for msg in problems:
        log.warning("train all: %s", msg)
    return problems


def _pick(metrics: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: metrics[k] for k in keys if k in metrics}


def _clean(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    return value


def missing_real_data(settings: Settings) -> dict[str, str]:
    """{report key: reason} for each real-data sample absent under ``settings.shared_data``."""
    from training.loaders.datasets import REQUIRED_FILES

    out = {}
    for key, name in REAL_DATASETS.items():
        folder = settings.shared_data / name
        absent = [f for f in REQUIRED_FILES[name] if not (folder / f).exists()]
        if absent:
            out[key] = f"{folder / absent[0]} absent (set ADPLATFORM_SHARED_DATA)"
    return out


def real_section(settings: Settings, p: Plan, drsa: dict[str, float]) -> dict[str, Any]:
    """The real-data comparisons: Criteo CV, TalkingData hold-out, iPinYou DRSA 2259."""
    from training.realdata import criteo_cv, talkingdata_holdout

    missing = missing_real_data(settings)
    out: dict[str, Any] = {}
    if "criteo" not in missing:
        out["criteo"] = criteo_cv(cfg=p.criteo)
    if "talkingdata" not in missing:
        out["talkingdata"] = talkingdata_holdout(cfg=p.talkingdata)
    if "ipinyou_2259" not in missing and drsa:
        out["ipinyou_2259"] = drsa
    if missing:
        out["skipped"] = missing
        for key, reason in missing.items():
            log.warning("train all: real-data %s skipped: %s", key, reason)
    return out


def train_all(settings: Settings, size: Size = "small", report: Path | None = None, *,
              deep: bool = False, real: bool = True, force: bool = False,
              on_stage: StageCallback | None = None, plan_: Plan | None = None
              ) -> dict[str, Any]:
    """Train fraud, CTR (fraud-filtered) and shading; register each; return the report.

    ``report`` writes the JSON there too. ``deep`` trains the DCN-v2 CTR model after
    LightGBM (registered under ``ctr`` as well; reported as ``ctr_deep``). ``real``
    False skips the real-data section. ``plan_`` overrides :func:`plan` (tests).
    """
    from training.ctr import train_ctr
    from training.fraud import train_fraud
    from training.shading import train_shading

    p = plan_ or plan(size, deep=deep, real=real)

    def stage(name: str, event: str, detail: str = "") -> None:
        log.info("train all: %s %s %s", name, event, detail)
        if on_stage is not None:
            on_stage(name, event, detail)

    scale = workspace_scale(settings, p.ctr.holdout_days)
    warnings = check_scale(scale, p, force=force)
    seconds: dict[str, float] = {}
    out: dict[str, Any] = {"size": p.size, "workspace": {**scale, "home": str(settings.home)}}

    t = time.perf_counter()
    stage("fraud", "start")
    fraud = train_fraud(settings, p.fraud)
    seconds["fraud"] = time.perf_counter() - t
    out["fraud"] = {**_pick(fraud.evaluation, FRAUD_KEYS), "threshold": fraud.threshold,
                    "feature_service": p.fraud.feature_service, "version": fraud.version,
                    "alias": fraud.alias}
    stage("fraud", "done", f"PR-AUC {fraud.evaluation['pr_auc']:.4f}, version "
          f"{fraud.version} @{fraud.alias}")

    t = time.perf_counter()
    stage("ctr", "start")
    # The model just trained screens CTR's data: its verdicts on every request, computed
    # by train_fraud with the registered graph and threshold (no second feature join).
    p.ctr.fraud_alias = fraud.alias
    ctr = train_ctr(settings, p.ctr, ivt_flags=fraud.flags)
    seconds["ctr"] = time.perf_counter() - t
    out["ctr"] = {**_pick(ctr.metrics, CTR_KEYS), "holdout_days": p.ctr.holdout_days,
                  "version": ctr.version, "alias": ctr.alias}
    if "oracle_auc" in out["ctr"]:
        # What any model of this log could attain (simulator only): see ctr_ceiling.
        from training.ctr_ceiling import CeilingConfig, ctr_ceiling

        out["ctr"].update(ctr_ceiling(settings, CeilingConfig(holdout_days=p.ctr.holdout_days)))
    stage("ctr", "done", f"AUC {ctr.metrics['auc']:.4f}, version {ctr.version} @{ctr.alias}")
    if ctr.metrics.get("test_clicks", 0.0) < p.min_heldout_clicks:
        msg = (f"the CTR hold-out has {ctr.metrics.get('test_clicks', 0.0):.0f} clicks after "
               f"IVT filtering; {p.size} needs >= {p.min_heldout_clicks}")
        log.warning("train all: %s", msg)
        warnings.append(msg)

    if p.deep is not None:
        from training.ctr_deep import train_ctr_deep

        t = time.perf_counter()
        stage("ctr_deep", "start")
        p.deep.fraud_alias = fraud.alias
        deep_result = train_ctr_deep(settings, p.deep, ivt_flags=fraud.flags)
        seconds["ctr_deep"] = time.perf_counter() - t
        out["ctr_deep"] = {**_pick(deep_result.metrics, CTR_KEYS),
                           "version": deep_result.version, "alias": deep_result.alias}
        stage("ctr_deep", "done", f"AUC {deep_result.metrics['auc']:.4f}")
    else:
        stage("ctr_deep", "skipped", "pass deep=True (--deep) to train the DCN-v2 too")

    fraud.flags = fraud.booster = None      # free the per-request verdicts (millions of rows)
    t = time.perf_counter()
    stage("shading", "start")
    missing = missing_real_data(settings) if p.real else {"ipinyou_2259": "real data off"}
    shading = train_shading(settings, p.shading, evaluate=True,
                            drsa="ipinyou_2259" not in missing)
    seconds["shading"] = time.perf_counter() - t
    ev = shading.evaluation
    out["shading"] = {**_pick(ev, SHADING_KEYS), **_pick(shading.metrics, SHADING_METRIC_KEYS),
                      "version": shading.version, "alias": shading.alias}
    stage("shading", "done", f"surplus {ev.get('surplus_share_of_oracle', float('nan')):.1%} "
          f"of oracle, version {shading.version} @{shading.alias}")

    if p.real:
        t = time.perf_counter()
        stage("real", "start")
        drsa: dict[str, float] = {k: ev[k] for k in ("loglik_model", "loglik_km") if k in ev}
        drsa.update({k[len("drsa_"):]: v for k, v in shading.metrics.items()
                     if k.startswith("drsa_") and k[len("drsa_"):] not in drsa})
        out["real"] = real_section(settings, p, drsa)
        seconds["real"] = time.perf_counter() - t
        stage("real", "done", ", ".join(k for k in out["real"] if k != "skipped"))
    else:
        out["real"] = {"skipped": {"all": "real=False (--no-real)"}}
        stage("real", "skipped", "--no-real")

    out["seconds"] = seconds
    out["warnings"] = warnings
    out = _clean(out)
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(out, indent=2, sort_keys=False) + "\n")
        log.info("train all: report written to %s", report)
    return out


__all__ = ["FULL_MIN_DAYS", "FULL_MIN_HELDOUT_CLICKS", "SIZES", "STAGES", "Plan", "Size",
           "check_scale", "missing_real_data", "plan", "real_section", "train_all",
           "workspace_scale"]

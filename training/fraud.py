"""Fraud (IVT) training: requests -> Feast point-in-time features -> LightGBM + GIVT rules -> ONNX -> MLflow.

One row per request: the fraud screen scores the request, before any auction, so the
unit is the ``requests`` row (one per OpenRTB imp), not the impression. A request is
invalid when the simulator's ground truth says ``is_bot`` (``workspace.truth``; models
never read it at serving time). Features: the ``fraud_v1`` service (ip and device
velocity, click behaviour) joined point in time with ``event_timestamp`` = the
request's time, plus the on-demand IVT columns of :func:`features.ivt.ivt_columns` and
the request context, assembled only by :func:`features.vectorize.fraud_matrix`, the
function the online reader calls too.

Splits, by time and never shuffled::

    |<------ days before the last holdout_days ------>|<-- last holdout_days -->|
    |  fit                      | validation (val_share) |  held-out test          |

LightGBM fits on *fit* and early-stops on *validation*; the threshold is set on
*validation* as the lowest score flagging at most ``target_fpr`` of its human requests;
*test* is only evaluated (:mod:`training.fraud_eval`). Humans may be subsampled in
*fit* only (``human_keep < 1``, weight ``1 / human_keep`` so probabilities keep their
scale): validation and test keep every request, so thresholds and metrics are unbiased.

The exported graph answers ``p_fraud = max(p_model, rule hit)``
(:mod:`models.fraud_rules`), input ``fraud_features`` (N, F) float32, output ``p_fraud``
(N,); the threshold is the registered version's ``threshold`` tag.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from adplatform.config import Settings
from adplatform.errors import ConfigError, DataError
from adplatform.eventlog import read_events
from features.ivt import ivt_columns
from features.vectorize import FRAUD_CONTEXT, FRAUD_FEATURES, FRAUD_RAW, fraud_matrix
from models.fraud_rules import (
    RULE_NAMES,
    append_rules,
    combine,
    rules_for_requests,
    rules_from_matrix,
)
from models.lgbm_onnx import lgbm_to_onnx, onnx_predict
from training.datasets import join_features, time_split
from training.fraud_eval import curves_figure, evaluate, flat_metrics, rates_at, threshold_for_fpr

if TYPE_CHECKING:
    import onnx
    from feast import FeatureStore

log = logging.getLogger(__name__)

FEATURE_SERVICE = "fraud_v1"
MODEL_NAME = "fraud"
INPUT_NAME = "fraud_features"
OUTPUT_NAME = "p_fraud"
MODEL_OUTPUT = "p_model"          # the LightGBM probability inside the graph, before the rules
KEYS = ["request_id", "imp_id"]
# Request columns the fraud features need (entity keys ip and device_id, IVT inputs, context).
REQUEST_COLUMNS = [*KEYS, "ts", "ip", "ua", "device_id", "device_type", "is_app"]
ENTITY_COLUMNS = ["ip", "device_id"]     # the join keys of the fraud feature views
# ONNX export must match LightGBM: 99.9% of rows within 1e-5, every row within 1e-3.
PARITY_TOLERANCES = ((1e-5, 0.999), (1e-3, 1.0))
# The request field each on-demand IVT column of features.ivt.ivt_columns depends on.
IVT_INPUTS = {"ua_crawler": "ua", "ua_len": "ua", "dc_ip": "ip"}


@dataclass(frozen=True)
class FeatureSet:
    """A fraud feature-service version and the vectorize function that builds its matrix."""

    service: str                      # the Feast feature service joined point in time
    names: list[str]                  # matrix columns, in order
    inputs: list[str]                 # raw store columns + context columns the matrix reads
    matrix: Callable[[Mapping[str, np.ndarray]], np.ndarray]


# Each version is defined in features/ (repo.py: service, vectorize.py: matrix) and listed
# here once; the served model's ``feature_service`` tag says which one it reads.
FEATURE_SETS: dict[str, FeatureSet] = {
    "fraud_v1": FeatureSet("fraud_v1", FRAUD_FEATURES, [*FRAUD_RAW, *FRAUD_CONTEXT],
                           fraud_matrix),
}


def feature_set(service: str) -> FeatureSet:
    try:
        return FEATURE_SETS[service]
    except KeyError:
        raise ConfigError(f"unknown fraud feature service {service!r}; known: "
                          f"{', '.join(FEATURE_SETS)}") from None


@dataclass
class FraudConfig:
    num_leaves: int = 31
    learning_rate: float = 0.05
    num_boost_round: int = 600      # upper bound; early stopping on validation ends sooner
    min_data_in_leaf: int = 40      # bot kinds are a few percent of requests each
    feature_fraction: float = 0.9
    lambda_l2: float = 1.0
    holdout_days: int = 1           # the last days are the held-out test (time split)
    val_share: float = 0.25         # the latest share of the training period: validation
    target_fpr: float = 0.01        # the threshold's false-positive rate on human requests
    human_keep: float = 1.0         # share of human requests kept for fitting (speed)
    seed: int = 7
    num_threads: int = 2            # the machines have 2 cores: more threads only wait
    parity_rows: int = 5000         # held-out rows checked ONNX vs LightGBM (+ NaN rows)
    feature_service: str = FEATURE_SERVICE   # a key of FEATURE_SETS
    extra: dict[str, float] = field(default_factory=dict)   # more LightGBM parameters

    def __post_init__(self) -> None:
        feature_set(self.feature_service)
        checks = [
            (0.0 < self.val_share < 1.0, "val_share must be in (0, 1)"),
            (0.0 <= self.target_fpr < 1.0, "target_fpr must be in [0, 1)"),
            (0.0 < self.human_keep <= 1.0, "human_keep must be in (0, 1]"),
            (self.holdout_days >= 1, "holdout_days must be >= 1"),
            (self.num_boost_round >= 1, "num_boost_round must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"FraudConfig: {msg}")


@dataclass
class FraudResult:
    version: str
    alias: str
    run_id: str
    threshold: float                  # p_fraud >= threshold is invalid (tag "threshold")
    metrics: dict[str, float]         # flat, as logged to MLflow
    evaluation: dict[str, Any]        # held-out: pr_auc, recall_at_1pct_fpr, per_kind, ...
    booster: Any = field(default=None, repr=False, compare=False)   # lightgbm.Booster
    # Every scored request: KEYS + ``invalid`` (the registered graph's p_fraud >= threshold),
    # so CTR can drop invalid traffic without scoring the requests again.
    flags: pd.DataFrame | None = field(default=None, repr=False, compare=False)


def request_frame(settings: Settings, *, labels: bool = True) -> pd.DataFrame:
    """One row per request with the fraud inputs and ``event_timestamp``, sorted by time.

    ``labels``: join ``is_bot`` and ``bot_kind`` from the truth table (training and
    evaluation only); a request without a truth row is an error then.
    """
    req = read_events(settings.workspace.events, "requests")[REQUEST_COLUMNS]
    if req.empty:
        raise DataError(f"no requests under {settings.workspace.events}: simulate or log some")
    req = req.assign(hour=req["ts"].dt.hour, is_app=req["is_app"].astype(np.float64),
                     event_timestamp=req["ts"])
    if labels:
        truth = read_events(settings.workspace.truth, "truth")[[*KEYS, "is_bot", "bot_kind"]]
        if truth.empty:
            raise DataError(f"no truth table under {settings.workspace.truth}: fraud labels "
                            "come from the simulator's ground truth")
        n = len(req)
        req = req.merge(truth, on=KEYS, how="inner")
        if len(req) < n:
            raise DataError(f"{n - len(req)} of {n} requests have no truth row",
                            path=str(settings.workspace.truth))
        req["is_bot"] = req["is_bot"].astype(bool)
        req["bot_kind"] = req["bot_kind"].fillna("").astype(str)
    return req.sort_values(["ts", "request_id"], kind="stable").reset_index(drop=True)


def fraud_features(df: pd.DataFrame, shared_data: Path | None,
                   features: FeatureSet = FEATURE_SETS[FEATURE_SERVICE]) -> np.ndarray:
    """(N, len(features.names)) float32 of a frame joined with ``features.service``.

    The serving matrix: built by the same vectorize function as the online reader's.

    :func:`features.ivt.ivt_columns` runs once per distinct user agent and once per
    distinct IP (the crawler patterns cost about a millisecond a user agent, and
    user agents recur), each
    column then taken from the input it depends on (:data:`IVT_INPUTS`).
    """
    cols: dict[str, np.ndarray] = {}
    for source in ("ua", "ip"):
        codes, uniques = pd.factorize(df[source].fillna("").astype(str))
        values = [str(u) for u in uniques]
        blank = [""] * len(values)
        ivt = (ivt_columns(blank, values, shared_data) if source == "ua"
               else ivt_columns(values, blank, shared_data))
        unknown = sorted(set(ivt) - set(IVT_INPUTS))
        if unknown:
            raise DataError(f"ivt_columns returned {unknown}: add them to IVT_INPUTS")
        for name, values_u in ivt.items():
            if IVT_INPUTS[name] == source:
                cols[name] = np.asarray(values_u)[codes]
    missing = [c for c in features.inputs if c not in cols and c not in df]
    if missing:
        raise DataError(f"the fraud frame lacks columns {missing}")
    for c in features.inputs:
        if c not in cols:
            cols[c] = df[c].to_numpy(dtype=np.float64, na_value=np.nan)
    x = features.matrix(cols)
    if x.shape != (len(df), len(features.names)):
        raise DataError(f"{features.service} matrix has shape {x.shape}, expected "
                        f"({len(df)}, {len(features.names)})")
    return x


def export_onnx(booster: Any, features: FeatureSet = FEATURE_SETS[FEATURE_SERVICE]
                ) -> onnx.ModelProto:
    """LightGBM -> ONNX (``p_model``) with the GIVT rules appended (``p_fraud``)."""
    proto = lgbm_to_onnx(booster, len(features.names), input_name=INPUT_NAME,
                         output_name=MODEL_OUTPUT,
                         doc=f"fraud LightGBM + GIVT rules on {features.service}")
    return append_rules(proto, model_output=MODEL_OUTPUT, output_name=OUTPUT_NAME,
                        features=features.names)


def native_scores(booster: Any, x: np.ndarray,
                  features: FeatureSet = FEATURE_SETS[FEATURE_SERVICE]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(p_model, p_fraud) of LightGBM and the rules in numpy: the reference for the graph."""
    p_model = np.asarray(booster.predict(x), dtype=np.float64)
    return p_model, combine(p_model, rules_from_matrix(x, features.names))


def with_nan_rows(x: np.ndarray, n: int = 64, seed: int = 0) -> np.ndarray:
    """``x`` plus rows that are all NaN and rows with random NaN entries (parity checks)."""
    rng = np.random.default_rng(seed)
    base = x[rng.integers(0, len(x), size=n)] if len(x) else np.zeros((n, x.shape[1]), x.dtype)
    some = base.copy()
    some[rng.random(some.shape) < 0.3] = np.nan
    return np.concatenate([x, np.full((n, x.shape[1]), np.nan, dtype=x.dtype), some])


def parity(booster: Any, proto: onnx.ModelProto, x: np.ndarray,
           features: FeatureSet = FEATURE_SETS[FEATURE_SERVICE]) -> dict[str, float]:
    """ONNX vs LightGBM + numpy rules on ``x`` (float32): max |diff| and shares within tolerances."""
    _, ref = native_scores(booster, x, features)
    got = onnx_predict(proto, x)
    diff = np.abs(got.astype(np.float64) - ref)
    out = {"max_abs_diff": float(diff.max()) if diff.size else 0.0}
    for tol, _ in PARITY_TOLERANCES:
        out[f"within_{tol:g}"] = float((diff <= tol).mean()) if diff.size else 1.0
    return out


def _check_parity(check: dict[str, float]) -> None:
    for tol, share in PARITY_TOLERANCES:
        if check[f"within_{tol:g}"] < share:
            raise DataError(f"fraud ONNX export differs from LightGBM: {check}")


def _splits(frame: pd.DataFrame, cfg: FraudConfig) -> pd.DataFrame:
    """The frame with a ``part`` column (fit / val / test); fit humans subsampled."""
    train, test = time_split(frame, cfg.holdout_days)
    if train.empty or test.empty:
        raise DataError(f"the time split left {len(train)} training and {len(test)} held-out "
                        "requests; simulate more days")
    n_val = max(1, int(round(len(train) * cfg.val_share)))
    fit, val = train.iloc[:-n_val], train.iloc[-n_val:]
    if cfg.human_keep < 1.0:
        rng = np.random.default_rng(cfg.seed)
        keep = fit["is_bot"].to_numpy() | (rng.random(len(fit)) < cfg.human_keep)
        fit = fit[keep]
    parts = [fit.assign(part="fit"), val.assign(part="val"), test.assign(part="test")]
    return pd.concat(parts, ignore_index=True)


def _fit(x: np.ndarray, y: np.ndarray, w: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
         cfg: FraudConfig, names: list[str]) -> Any:
    import lightgbm as lgb

    params: dict[str, Any] = {
        "objective": "binary", "num_leaves": cfg.num_leaves, "learning_rate": cfg.learning_rate,
        "min_data_in_leaf": cfg.min_data_in_leaf, "feature_fraction": cfg.feature_fraction,
        "lambda_l2": cfg.lambda_l2, "seed": cfg.seed, "num_threads": cfg.num_threads,
        "verbose": -1, "deterministic": True, "metric": ["binary_logloss", "average_precision"],
        "first_metric_only": True, **cfg.extra}
    dtrain = lgb.Dataset(x, y, weight=w, feature_name=names, free_raw_data=False)
    dvalid = lgb.Dataset(x_val, y_val, reference=dtrain)
    booster = lgb.train(params, dtrain, num_boost_round=cfg.num_boost_round,
                        valid_sets=[dvalid], callbacks=[lgb.early_stopping(40, verbose=False)])
    best = booster.best_iteration or booster.current_iteration()
    # Keep the best trees only, so LightGBM, ONNX and every later predict agree.
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=best))


class _Stopwatch:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self._t
        self._t = now
        log.info("fraud: %s took %.1f s", name, self.laps[name])


def train_fraud(settings: Settings, config: FraudConfig | None = None) -> FraudResult:
    """Train, export, evaluate, log and register ``fraud`` (champion first, then challenger)."""
    import mlflow
    from mlflow.models import infer_signature

    from features.store import open_store
    from mlops.registry import code_version, ensure_experiment, register

    cfg = config or FraudConfig()
    fs = feature_set(cfg.feature_service)
    clock = _Stopwatch()
    frame = _splits(request_frame(settings), cfg)
    clock.lap("read")
    df = join_features(open_store(settings), frame, fs.service, entities=ENTITY_COLUMNS)
    clock.lap("join")
    x_all = fraud_features(df, settings.shared_data, fs)
    clock.lap("features")
    y_all = df["is_bot"].to_numpy(dtype=bool)
    part = df["part"].to_numpy()
    fit, val, test = (part == "fit"), (part == "val"), (part == "test")
    if not (y_all[fit].any() and (~y_all[fit]).any() and (~y_all[val]).any()):
        raise DataError("the fit and validation periods need both bot and human requests")
    weight = np.where(y_all[fit], 1.0, 1.0 / cfg.human_keep)
    log.info("fraud: %d fit (%d bots), %d validation, %d held-out requests", int(fit.sum()),
             int(y_all[fit].sum()), int(val.sum()), int(test.sum()))

    booster = _fit(x_all[fit], y_all[fit].astype(np.float64), weight, x_all[val],
                   y_all[val].astype(np.float64), cfg, fs.names)
    clock.lap("fit")
    proto = export_onnx(booster, fs)
    x_test, y_test = x_all[test], y_all[test]
    check = parity(booster, proto, with_nan_rows(x_test[:cfg.parity_rows]), fs)
    _check_parity(check)

    # Threshold on validation humans, with the scores serving will see (the ONNX graph's).
    p_val = onnx_predict(proto, x_all[val])
    threshold = threshold_for_fpr(p_val[~y_all[val]], cfg.target_fpr)
    val_recall, val_fpr = rates_at(y_all[val], p_val, threshold)
    if val_fpr > cfg.target_fpr:
        log.warning("fraud: the threshold flags %.2f%% of validation humans, above the "
                    "%.2f%% target (rule hits score 1.0)", 100 * val_fpr, 100 * cfg.target_fpr)

    p_test = onnx_predict(proto, x_test)
    p_model_test = np.asarray(booster.predict(x_test))
    hits = rules_from_matrix(x_test, fs.names).any
    kinds = df.loc[test, "bot_kind"].to_numpy()
    evaluation = evaluate(y_test, kinds, p_test, hits, p_model=p_model_test,
                          threshold=threshold)
    clock.lap("export_evaluate")
    metrics = flat_metrics(evaluation, "test_")
    metrics.update({f"seconds_{k}": v for k, v in clock.laps.items()})
    metrics.update({f"onnx_{k}": v for k, v in check.items()})
    metrics.update({"val_recall_at_threshold": val_recall, "val_fpr_at_threshold": val_fpr,
                    "threshold": threshold, "n_fit": float(fit.sum()),
                    "n_val": float(val.sum()), "n_test": float(test.sum()),
                    "best_iteration": float(booster.current_iteration())})
    log.info("fraud: PR-AUC %.4f, recall %.4f at 1%% FPR (rules alone %.4f), threshold %.6g",
             evaluation["pr_auc"], evaluation["recall_at_1pct_fpr"],
             evaluation["rules_only_recall"], threshold)

    period = df.loc[fit | val, "event_timestamp"]
    tags = {"feature_service": fs.service,
            "training_window": f"{period.min().isoformat()}/{period.max().isoformat()}",
            "code_version": code_version(), "flavor": "lightgbm", "input": INPUT_NAME,
            "output": OUTPUT_NAME, "threshold": repr(threshold),
            "target_fpr": repr(cfg.target_fpr), "rules": ",".join(RULE_NAMES),
            "rules_in_graph": "true", "label": "truth.is_bot", "unit": "request"}
    ensure_experiment(settings, MODEL_NAME)
    with mlflow.start_run(run_name="fraud-lightgbm-givt") as run:
        mlflow.log_params({k: v for k, v in asdict(cfg).items() if k != "extra"})
        mlflow.log_params({f"lgb_{k}": v for k, v in cfg.extra.items()})
        mlflow.set_tags(tags)
        example = x_test[:5]
        info = mlflow.onnx.log_model(proto, name="model", input_example=example,
                                     signature=infer_signature(example, p_test[:5]),
                                     save_as_external_data=False)
        mlflow.log_metrics(metrics, model_id=info.model_id)
        mlflow.log_figure(curves_figure(y_test, p_test, hits, p_model=p_model_test,
                                        threshold=threshold), "roc_pr.png")
        mlflow.log_dict({"evaluation": evaluation, "features": fs.names,
                         "parity": check}, "evaluation.json")
        version, alias = register(settings, info.model_uri, MODEL_NAME, tags)
    flags = df[KEYS].assign(invalid=onnx_predict(proto, x_all) >= np.float32(threshold))
    return FraudResult(version=version, alias=alias, run_id=run.info.run_id,
                       threshold=threshold, metrics=metrics, evaluation=evaluation,
                       booster=booster, flags=flags)


def score_requests(settings: Settings, frame: pd.DataFrame, model: onnx.ModelProto | bytes,
                   *, feature_service: str = FEATURE_SERVICE,
                   store: FeatureStore | None = None) -> np.ndarray:
    """p_fraud (N,) of a :func:`request_frame`, in its row order, through ``feature_service``."""
    from features.store import open_store

    fs = feature_set(feature_service)
    if frame.empty:
        return np.zeros(0, dtype=np.float32)
    store = store or open_store(settings)
    rows = frame.assign(row_order=np.arange(len(frame)))
    df = join_features(store, rows, fs.service, entities=ENTITY_COLUMNS)
    df = df.sort_values("row_order", kind="stable")
    return onnx_predict(model, fraud_features(df, settings.shared_data, fs))


def ivt_mask(settings: Settings, frame: pd.DataFrame, *, alias: str = "champion",
             fallback_rules: bool = True, store: FeatureStore | None = None) -> np.ndarray:
    """(len(frame),) bool: the frame's rows whose request is invalid traffic.

    ``frame`` needs ``request_id`` and ``imp_id`` (e.g. :func:`training.datasets.impressions`);
    each request is scored as the fraud screen scores it at request time (point-in-time
    features, ``models:/fraud@alias``, its ``threshold`` tag). Without a registered model
    and with ``fallback_rules``, the GIVT rules alone decide (logged); otherwise
    :class:`mlops.errors.ModelNotFound` propagates. Rows without a request are kept (False).
    """
    from mlops.errors import MLOpsError, ModelNotFound
    from mlops.registry import resolve

    missing = [k for k in KEYS if k not in frame]
    if missing:
        raise DataError(f"ivt_mask needs columns {missing}")
    keys = frame[KEYS].drop_duplicates()
    req = keys.merge(request_frame(settings, labels=False), on=KEYS, how="inner")
    req = req.sort_values(["ts", "request_id"], kind="stable").reset_index(drop=True)
    try:
        model = resolve(settings, MODEL_NAME, alias)
    except ModelNotFound:
        if not fallback_rules:
            raise
        log.warning("ivt_mask: no %s@%s registered; the GIVT rules alone decide", MODEL_NAME,
                    alias)
        invalid = rules_for_requests(req["ip"].tolist(), req["ua"].tolist(),
                                     settings.shared_data).any
    else:
        if "threshold" not in model.tags:
            raise MLOpsError(f"models:/{MODEL_NAME}@{alias} (version {model.version}) has no "
                             "threshold tag")
        threshold = np.float32(float(model.tags["threshold"]))
        p = score_requests(settings, req, model.onnx_path.read_bytes(), store=store,
                           feature_service=model.tags.get("feature_service", FEATURE_SERVICE))
        invalid = p >= threshold
    flagged = req[KEYS].assign(invalid=invalid)
    out = frame[KEYS].merge(flagged, on=KEYS, how="left")["invalid"]
    if out.isna().any():
        log.warning("ivt_mask: %d rows have no request row; kept as valid", int(out.isna().sum()))
    mask = out.fillna(False).to_numpy(dtype=bool)
    log.info("ivt_mask: %d of %d rows invalid", int(mask.sum()), len(mask))
    return mask


__all__ = ["FEATURE_SERVICE", "FEATURE_SETS", "INPUT_NAME", "MODEL_NAME", "MODEL_OUTPUT", "OUTPUT_NAME",
           "FeatureSet", "FraudConfig", "FraudResult", "export_onnx", "feature_set", "fraud_features", "ivt_mask",
           "native_scores", "parity", "request_frame", "score_requests", "train_fraud",
           "with_nan_rows"]

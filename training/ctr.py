"""CTR training: event log -> Feast point-in-time features -> LightGBM -> calibrated ONNX -> MLflow.

The data half (:func:`prepare_ctr_data`, :func:`evaluate_ctr`, :func:`log_ctr_model`) is
shared with the deep model (:mod:`training.ctr_deep`), so both are trained, calibrated,
evaluated and registered the same way.

Splits (all by time, never shuffled across it):

* **test** — the last ``holdout_days`` days: evaluation only (no early stopping on it);
* **calibration** — ``calibration_fraction`` of the users, over the days before the test
  window: early stopping and the calibrator. Users, not rows, so no person is on both
  sides; the whole pre-test period rather than its last day, because a single day has
  too few clicks (~1,400 at full size, ±2.6% Bernoulli noise on the intercept);
* **train** — the other users over the same days.

Training-data hygiene:

* **Invalid traffic** — ``exclude(frame) -> bool mask`` removes rows from every split
  (the test split too: the served model only sees traffic the IVT screen passed). The
  default, :func:`general_ivt_filter`, applies general-IVT rules (declared crawler and
  headless user agents; devices/IPs/users whose clicks are mostly scripted — repeated or
  within a second of the impression). It is the hook where the fraud model plugs in
  later: ``CTRConfig(exclude=lambda f: fraud_scores(f) > t)``. The frame it receives has
  the impression context (``user_id``, ``device_id``, ``ip``, ``ua``, ...), ``click``,
  ``n_clicks`` (clicks on the impression) and ``click_delay_s`` (impression -> first
  click; NaN without a click).
* **Exploration propensities** — not used as weights by default. The bootstrap policy
  picked the creative uniformly among the eligible ones, and eligibility is a function
  of the request context (size, country, device, publisher); given the context the
  shown ad is independent of the user's unobserved click propensity, so
  P(click | x, ad shown) = P(click | x, ad): there is no confounding for weights to
  remove. Inverse-propensity weights would only move the training distribution towards
  the uniform-over-eligible-ads one (the logged propensity also contains the price
  density, so 1/propensity mostly up-weights unusual prices) and add variance.
  ``propensity_weighting=True`` trains with 1/propensity weights clipped at
  ``max_weight`` times their median and normalised to mean 1, for comparison. What weights cannot fix either: impressions exist
  only where we won, and competitors bid more for users who click more, so the
  training rows under-represent high-CTR users given x (a selection on an unobserved
  effect). The model is used on won impressions as well, so the target is the same.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from adplatform.config import Settings
from adplatform.errors import DataError
from adplatform.eventlog import read_events
from features.store import open_store
from features.vectorize import CTR_FEATURES, ctr_matrix
from models.calibration import Calibrator, expected_calibration_error, fit_calibrator
from models.lgbm_onnx import (
    lgbm_to_onnx,
    onnx_predict,
    parity,
    require_parity,
    stress_rows,
)
from training.datasets import impressions, join_features
from training.metrics import auc, logloss

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

FEATURE_SERVICE = "ctr_v1"
INPUT_NAME = "ctr_features"
OUTPUT_NAME = "pctr"
MODEL_NAME = "ctr"

ExcludeFn = Callable[[pd.DataFrame], np.ndarray]
# Impressions per Feast join call. The as-of join matches each row with every earlier
# hourly snapshot of its user, so memory grows with history: at full size (14 days) a
# 250k-row chunk late in the log passed 12 GB.
CTR_JOIN_CHUNK_ROWS = 50_000

# Declared crawlers and automation: the IAB/ABC spiders-and-bots list works the same way
# (substring rules on the user agent).
IVT_USER_AGENT = re.compile(
    r"bot\b|bot/|crawl|spider|slurp|headless|phantomjs|selenium|python-requests|curl/|wget/"
    r"|https?://", re.IGNORECASE)
SCRIPTED_CLICK_S = 1.0  # humans take seconds to click; scripts well under one


def general_ivt_filter(frame: pd.DataFrame) -> np.ndarray:
    """General-IVT rules: True for rows to exclude from CTR training and evaluation.

    * the user agent declares a crawler or headless browser (:data:`IVT_USER_AGENT`);
    * the row's device, IP or user has at least two scripted clicks, and scripted clicks
      are at least half of its clicks. A click is scripted when it repeats on the same
      impression or comes within :data:`SCRIPTED_CLICK_S` of it. The share condition
      keeps heavy human users (who make the odd fast or double click) in.

    Needs columns ``ua``, ``device_id``, ``ip``, ``user_id``, ``click``, ``n_clicks``,
    ``click_delay_s``. On the full-size simulator it removes 97% of bot rows (all
    data-centre, 97% of residential, 90% of crawler rows; the rest are crawlers that
    almost never click) and 0.07% of human rows.
    """
    need = {"ua", "device_id", "ip", "user_id", "click", "n_clicks", "click_delay_s"}
    missing = need - set(frame.columns)
    if missing:
        raise DataError(f"general_ivt_filter needs columns {sorted(missing)}")
    ua = frame["ua"].fillna("").astype(str)
    out = ua.str.contains(IVT_USER_AGENT).to_numpy(dtype=bool)
    clicks = frame["click"].to_numpy(dtype=np.float64)
    scripted = ((frame["n_clicks"].to_numpy(dtype=np.float64) > 1)
                | (frame["click_delay_s"].to_numpy(dtype=np.float64) < SCRIPTED_CLICK_S))
    for key in ("device_id", "ip", "user_id"):
        k = frame[key].fillna("").astype(str)
        g = pd.DataFrame({"k": k.to_numpy(), "s": scripted, "c": clicks}).groupby("k")[["s", "c"]]
        sums = g.transform("sum")
        flag = (sums["s"] >= 2) & (sums["s"] >= 0.5 * sums["c"]) & (k != "").to_numpy()
        out |= flag.to_numpy(dtype=bool)
    return out


@dataclass
class CTRDataConfig:
    """How CTR training data is selected and split (shared by LightGBM and the deep model)."""

    # The last days are held out (time split, no leakage); at most a third of the log.
    # Two days of full-size traffic hold ~2,900 human clicks; quality reports use 4.
    holdout_days: int = 2
    calibration_fraction: float = 0.2     # of the users: early stopping + calibrator
    # platt | isotonic | temperature (models.calibration). Platt: at full size it matched
    # isotonic on log-loss and had the lower ECE (0.0009 vs 0.0014) for LightGBM and DCN.
    calibration: str = "platt"
    # Rows to drop (True = invalid traffic); None keeps everything. See the module doc.
    exclude: ExcludeFn | None = general_ivt_filter
    # Also drop what models:/fraud@fraud_alias flags (training.fraud.ivt_mask), when that
    # version exists; None: the ``exclude`` rules alone.
    fraud_alias: str | None = "champion"
    propensity_weighting: bool = False    # see the module doc: not needed for P(click | x, ad)
    max_weight: float = 20.0              # 1/propensity is clipped at this x its median
    seed: int = 7


@dataclass
class CTRConfig(CTRDataConfig):
    """LightGBM CTR model."""

    num_leaves: int = 31            # enough capacity for user x topic interactions
    learning_rate: float = 0.05     # small steps; early stopping picks the count
    num_boost_round: int = 600      # upper bound; early stopping usually ends sooner
    early_stopping_rounds: int = 30
    min_data_in_leaf: int = 200     # clicks are rare: leaves need many rows to estimate CTR
    feature_fraction: float = 0.9
    lambda_l2: float = 1.0
    num_threads: int = 2
    extra: dict[str, float] = field(default_factory=dict)   # more LightGBM params


@dataclass
class CTRResult:
    version: str
    alias: str
    run_id: str
    metrics: dict[str, float]


@dataclass
class CTRSplit:
    """One split: the rows (with context, label, truth columns) and the model matrix."""

    frame: pd.DataFrame
    x: np.ndarray          # (N, F) float32, ctr_matrix columns
    y: np.ndarray          # (N,) float64 0/1
    w: np.ndarray          # (N,) float64 sample weights (mean 1)

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class CTRData:
    train: CTRSplit
    calib: CTRSplit
    test: CTRSplit
    excluded: int              # rows removed by the exclude hook
    window: str                # training window, ISO start/end
    truth: bool                # whether simulator truth (true_ctr) is attached (evaluation)
    stats: dict[str, float] = field(default_factory=dict)


def ctr_frame(settings: Settings) -> pd.DataFrame:
    """Impressions joined point-in-time to ``ctr_v1``, with click outcomes and propensities.

    Adds ``n_clicks``, ``click_delay_s`` (for IVT rules), ``propensity`` (the logging
    policy's), and ``true_ctr`` / ``is_bot`` when the workspace has simulator truth
    (evaluation only: never a model input).
    """
    root = settings.workspace.root
    frame = impressions(root)
    if frame.df.empty:
        raise DataError(f"no impressions under {settings.workspace.events}: simulate first")
    keys = ["request_id", "imp_id"]
    # Feast carries every entity-frame column through its point-in-time join; send only
    # the entity keys and times (strings like the user agent would multiply its memory),
    # in chunks (training.datasets.join_features).
    df = join_features(open_store(settings), frame.df, FEATURE_SERVICE,
                       entities=["user_id", "creative_id", "publisher_id"],
                       chunk_rows=CTR_JOIN_CHUNK_ROWS)
    clk = read_events(settings.workspace.events, "clicks")[[*keys, "ts"]]
    clk = clk.merge(df[[*keys, "ts"]].rename(columns={"ts": "imp_ts"}), on=keys)
    clk["delay"] = (clk["ts"] - clk["imp_ts"]).dt.total_seconds()
    outcome = clk.groupby(keys).agg(n_clicks=("delay", "size"), click_delay_s=("delay", "min"))
    df = df.merge(outcome.reset_index(), on=keys, how="left")
    df["n_clicks"] = df["n_clicks"].fillna(0).astype(np.int64)
    # Simulated traffic logs its decisions with the events; live traffic in the decision
    # service's log. Both carry the logging policy's propensity of the shown ad.
    logs = [read_events(root_, "decisions") for root_ in
            (settings.workspace.events, settings.workspace.decisions)]
    dec = pd.concat([d[[*keys, "propensity"]] for d in logs if not d.empty]
                    or [logs[0][[*keys, "propensity"]]], ignore_index=True)
    df = df.merge(dec.drop_duplicates(keys), on=keys, how="left")
    truth = read_events(settings.workspace.truth, "truth")
    if not truth.empty:
        df = df.merge(truth[[*keys, "true_ctr", "is_bot"]].drop_duplicates(keys), on=keys,
                      how="left")
    return df.sort_values(["event_timestamp", "request_id", "imp_id"]).reset_index(drop=True)


def ctr_features(df: pd.DataFrame) -> np.ndarray:
    """(N, F) float32 model matrix of a joined frame (the serving featurizer)."""
    return ctr_matrix({c: df[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in df.columns
                       if df[c].dtype.kind in "biuf"})


def _user_bucket(users: pd.Series, seed: int) -> np.ndarray:
    """Deterministic uniform [0, 1) per user id (same user -> same value)."""
    h = pd.util.hash_pandas_object(users.fillna("").astype(str) + f"#{seed}", index=False)
    return (h.to_numpy(dtype=np.uint64) % np.uint64(1_000_003)).astype(np.float64) / 1_000_003


def _weights(df: pd.DataFrame, cfg: CTRDataConfig) -> np.ndarray:
    if not cfg.propensity_weighting:
        return np.ones(len(df))
    prop = df["propensity"].to_numpy(dtype=np.float64)
    w = np.where(np.isfinite(prop) & (prop > 0), 1.0 / np.where(prop > 0, prop, 1.0), np.nan)
    median = float(np.nanmedian(w)) if np.isfinite(w).any() else 1.0
    w = np.minimum(np.where(np.isnan(w), median, w), cfg.max_weight * median)
    return w / w.mean()


def _split(df: pd.DataFrame, cfg: CTRDataConfig) -> CTRSplit:
    return CTRSplit(frame=df, x=ctr_features(df), y=df["click"].to_numpy(dtype=np.float64),
                    w=_weights(df, cfg))


def prepare_ctr_data(settings: Settings, cfg: CTRDataConfig,
                     frame: pd.DataFrame | None = None,
                     ivt_flags: pd.DataFrame | None = None) -> CTRData:
    """Load (or take) the joined frame, drop invalid traffic, split train/calibration/test.

    ``ivt_flags`` (``request_id``, ``imp_id``, ``invalid``: the fraud model's verdict per
    request, e.g. :attr:`training.fraud.FraudResult.flags`) replaces scoring the requests
    with ``models:/fraud@fraud_alias``.
    """
    if cfg.holdout_days < 1:
        raise ValueError(f"holdout_days must be >= 1, got {cfg.holdout_days}")
    if not 0.0 < cfg.calibration_fraction < 1.0:
        raise ValueError(f"calibration_fraction must be in (0, 1), got {cfg.calibration_fraction}")
    df = ctr_frame(settings) if frame is None else frame
    stats: dict[str, float] = {}
    excluded = 0
    drop = np.zeros(len(df), dtype=bool)
    if cfg.exclude is not None:
        drop = np.asarray(cfg.exclude(df), dtype=bool)
        if drop.shape != (len(df),):
            raise DataError(f"exclude returned shape {drop.shape}, expected ({len(df)},)")
    if ivt_flags is not None:
        keys = ["request_id", "imp_id"]
        got = df[keys].merge(ivt_flags[[*keys, "invalid"]].drop_duplicates(keys), on=keys,
                             how="left")["invalid"]
        fraud: np.ndarray | None = got.fillna(False).to_numpy(dtype=bool)
    else:
        fraud = fraud_model_mask(settings, df, cfg.fraud_alias)
    if fraud is not None:
        stats["fraud_model_flagged"] = float(fraud.sum())
        stats["fraud_model_only"] = float((fraud & ~drop).sum())
        drop = drop | fraud
    if cfg.exclude is not None or fraud is not None:
        excluded = int(drop.sum())
        if "is_bot" in df:       # how good the hook is, from simulator truth (evaluation)
            bot = df["is_bot"].fillna(False).to_numpy(dtype=bool)
            stats["ivt_recall"] = float(drop[bot].mean()) if bot.any() else float("nan")
            stats["ivt_false_positive_rate"] = float(drop[~bot].mean()) if (~bot).any() else 0.0
        df = df[~drop]
    day = df["event_timestamp"].dt.floor("D")
    days = np.sort(day.unique())
    # Short logs (tests, demos) keep at least two thirds of their days for training.
    holdout = min(cfg.holdout_days, len(days) // 3)
    if holdout >= 1:
        is_test = (day >= days[-holdout]).to_numpy()
    else:                       # under three days: hold out the last 20% of the time range
        ts = df["event_timestamp"]
        is_test = (ts >= ts.min() + 0.8 * (ts.max() - ts.min())).to_numpy()
    is_calib = ~is_test & (_user_bucket(df["user_id"], cfg.seed) < cfg.calibration_fraction)
    train, calib, test = df[~is_test & ~is_calib], df[is_calib], df[is_test]
    for name, part in (("train", train), ("calibration", calib), ("test", test)):
        if part.empty or part["click"].sum() == 0:
            raise DataError(f"CTR {name} split has no clicks ({len(part)} rows): "
                            "simulate more days or traffic")
    ts = train["event_timestamp"]
    window = f"{ts.min().isoformat()}/{ts.max().isoformat()}"
    log.info("ctr data: %d train, %d calibration, %d test rows; %d excluded as IVT",
             len(train), len(calib), len(test), excluded)
    return CTRData(train=_split(train, cfg), calib=_split(calib, cfg), test=_split(test, cfg),
                   excluded=excluded, window=window, truth="true_ctr" in df, stats=stats)


def fraud_model_mask(settings: Settings, df: pd.DataFrame, alias: str | None
                     ) -> np.ndarray | None:
    """Rows of ``df`` that ``models:/fraud@alias`` flags as invalid; None without that model."""
    if alias is None:
        return None
    from mlops.errors import ModelNotFound
    from training.fraud import ivt_mask

    try:
        return ivt_mask(settings, df, alias=alias, fallback_rules=False)
    except ModelNotFound:
        log.info("ctr data: no fraud@%s registered; invalid traffic by the rules alone", alias)
        return None


def quality_metrics(y: np.ndarray, p: np.ndarray, base_rate: float,
                    oracle: np.ndarray | None = None,
                    campaign: np.ndarray | None = None, top_campaigns: int = 10
                    ) -> dict[str, float]:
    """Discrimination and calibration of ``p`` on labels ``y`` (see the module doc).

    ``oracle`` (the simulator's true CTR of each row) adds ``oracle_auc``,
    ``oracle_logloss``, ``captured_gain`` = (LL_base - LL_model) / (LL_base - LL_oracle)
    and ``truth_ratio`` = sum(true CTR) / sum(p) (calibration without Bernoulli noise).
    ``campaign`` adds observed/expected clicks of the ``top_campaigns`` largest ones
    (``campaign_ratio_*``), against the truth (``campaign_truth_ratio_*``), and the
    oracle's own observed/expected (``oracle_campaign_ratio_*``, the noise floor).
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    base = np.full(len(y), float(np.clip(base_rate, 1e-6, 1 - 1e-6)))
    out = {"auc": auc(y, p), "logloss": logloss(y, p), "base_logloss": logloss(y, base),
           "calibration_ratio": float(y.sum() / max(p.sum(), 1e-12)),
           "ece": expected_calibration_error(y, p), "test_clicks": float(y.sum()),
           "n_test": float(len(y))}
    if oracle is not None:
        o = np.asarray(oracle, dtype=np.float64)
        out["oracle_auc"] = auc(y, o)
        out["oracle_logloss"] = logloss(y, o)
        gap = out["base_logloss"] - out["oracle_logloss"]
        out["captured_gain"] = (out["base_logloss"] - out["logloss"]) / gap if gap > 0 else float("nan")
        out["truth_ratio"] = float(o.sum() / max(p.sum(), 1e-12))
    if campaign is not None and len(campaign):
        camp = pd.Series(np.asarray(campaign)).fillna("")
        top = camp.value_counts().index[:top_campaigns]
        ratios, truth_ratios = [], []
        for c in top:
            m = (camp == c).to_numpy()
            ratios.append(y[m].sum() / max(p[m].sum(), 1e-12))
            if oracle is not None:
                truth_ratios.append(float(np.asarray(oracle)[m].sum() / max(p[m].sum(), 1e-12)))
        out["campaign_ratio_min"], out["campaign_ratio_max"] = float(min(ratios)), float(max(ratios))
        if truth_ratios:
            out["campaign_truth_ratio_min"] = float(min(truth_ratios))
            out["campaign_truth_ratio_max"] = float(max(truth_ratios))
            # The oracle's own observed/expected: the Bernoulli noise floor of the check.
            noise = [y[(camp == c).to_numpy()].sum()
                     / max(float(np.asarray(oracle)[(camp == c).to_numpy()].sum()), 1e-12)
                     for c in top]
            out["oracle_campaign_ratio_min"] = float(min(noise))
            out["oracle_campaign_ratio_max"] = float(max(noise))
    return out


def evaluate_ctr(data: CTRData, p_test: np.ndarray) -> dict[str, float]:
    """Quality metrics of test predictions, with the oracle when simulator truth is there."""
    f = data.test.frame
    oracle = f["true_ctr"].to_numpy(dtype=np.float64) if data.truth else None
    if oracle is not None and np.isnan(oracle).any():
        oracle = None
        log.warning("some test rows lack simulator truth; oracle metrics skipped")
    base = float(np.average(data.train.y, weights=data.train.w))
    m = quality_metrics(data.test.y, p_test, base, oracle=oracle,
                        campaign=f["campaign_id"].to_numpy() if "campaign_id" in f else None)
    m.update({"n_train": float(len(data.train)), "n_calibration": float(len(data.calib)),
              "n_excluded": float(data.excluded), **data.stats})
    if data.truth and "is_bot" in f:
        m["test_ivt_share"] = float(f["is_bot"].fillna(False).to_numpy(dtype=bool).mean())
    return m


def check_parity(onnx_model: onnx.ModelProto | bytes, native: Callable[[np.ndarray], np.ndarray],
                 x: np.ndarray, *, what: str, categorical: dict[int, float] | None = None,
                 max_rows: int = 20_000) -> dict[str, float]:
    """ONNX vs native on held-out rows plus a stressed copy (NaNs, unseen categories).

    Raises :class:`models.lgbm_onnx.ParityError` when the contract is not met.
    """
    x = x[:max_rows]
    cats = categorical if categorical is not None else ctr_unseen_categories()
    rows = np.vstack([x, stress_rows(x, categorical=cats)])
    result = parity(native(rows), onnx_predict(onnx_model, rows))
    require_parity(result, what)
    return result.metrics()


def ctr_unseen_categories() -> dict[int, float]:
    """Codes no ctr_v1 categorical column takes, for parity stress rows."""
    unseen = {"hour": 31.0, "device_type": 99.0, "is_app": 3.0, "format": 7.0, "topic": 57.0,
              "w": 333.0, "h": 77.0}
    return {CTR_FEATURES.index(k): v for k, v in unseen.items()}


def _jsonable(cfg: CTRDataConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in asdict(cfg).items():
        if callable(v):
            v = getattr(v, "__qualname__", repr(v))
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = "None" if v is None else v
    return out


def log_ctr_model(settings: Settings, onnx_model: onnx.ModelProto, *, run_name: str,
                  flavor: str, config: CTRDataConfig, metrics: dict[str, float],
                  calibrator: Calibrator, data: CTRData,
                  extra_artifacts: dict[str, dict[str, Any]] | None = None
                  ) -> tuple[str, str, str]:
    """Log the ONNX model, params, metrics and lineage in MLflow; register it under ``ctr``.

    Returns (version, alias, run_id).
    """
    import mlflow
    from mlflow.models import infer_signature

    from mlops.registry import code_version, ensure_experiment, register

    tags = {"feature_service": FEATURE_SERVICE, "training_window": data.window,
            "code_version": code_version(), "flavor": flavor, "input": INPUT_NAME,
            "output": OUTPUT_NAME, "calibration": calibrator.method,
            "exclude": _jsonable(config)["exclude"], "fraud_alias": str(config.fraud_alias)}
    ensure_experiment(settings, MODEL_NAME)
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.log_params(_jsonable(config))
        mlflow.set_tags(tags)
        example = data.test.x[:5]
        pred = onnx_predict(onnx_model, example)
        info = mlflow.onnx.log_model(onnx_model, name="model", input_example=example,
                                     signature=infer_signature(example, pred),
                                     save_as_external_data=False)
        finite = {k: float(v) for k, v in metrics.items() if np.isfinite(v)}
        mlflow.log_metrics(finite, model_id=info.model_id)
        mlflow.log_dict(calibrator.to_dict(), "calibration.json")
        for name, doc in (extra_artifacts or {}).items():
            mlflow.log_dict(doc, name)
        version, alias = register(settings, info.model_uri, MODEL_NAME, tags)
    return version, alias, run.info.run_id


def fit_lgbm(data: CTRData, cfg: CTRConfig) -> tuple[Any, Calibrator]:
    """Train LightGBM with early stopping on the calibration split; fit the calibrator."""
    import lightgbm as lgb

    params: dict[str, Any] = {
        "objective": "binary", "num_leaves": cfg.num_leaves, "learning_rate": cfg.learning_rate,
        "min_data_in_leaf": cfg.min_data_in_leaf, "feature_fraction": cfg.feature_fraction,
        "lambda_l2": cfg.lambda_l2, "seed": cfg.seed, "num_threads": cfg.num_threads,
        "verbose": -1, "deterministic": True, **cfg.extra}
    dtrain = lgb.Dataset(data.train.x, data.train.y, weight=data.train.w,
                         feature_name=CTR_FEATURES, free_raw_data=False)
    dvalid = lgb.Dataset(data.calib.x, data.calib.y, weight=data.calib.w, reference=dtrain)
    booster = lgb.train(params, dtrain, num_boost_round=cfg.num_boost_round, valid_sets=[dvalid],
                        callbacks=[lgb.early_stopping(cfg.early_stopping_rounds, verbose=False)])
    # Keep only the trees up to the best iteration, so the native model, the ONNX export
    # and every prediction use the same ensemble.
    best = booster.best_iteration or booster.current_iteration()
    booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    p_cal = np.asarray(booster.predict(data.calib.x))
    calibrator = fit_calibrator(p_cal, data.calib.y, cfg.calibration, w=data.calib.w)
    return booster, calibrator


def train_ctr(settings: Settings, config: CTRConfig | None = None, *,
              frame: pd.DataFrame | None = None,
              ivt_flags: pd.DataFrame | None = None) -> CTRResult:
    """Train, calibrate, export, check parity, evaluate and register the LightGBM CTR model.

    ``adplatform train ctr --model lgbm`` calls this. ``frame`` reuses a joined frame
    from :func:`ctr_frame` (tests, notebooks); by default it is read from the workspace.
    ``ivt_flags``: see :func:`prepare_ctr_data`.
    """
    cfg = config or CTRConfig()
    data = prepare_ctr_data(settings, cfg, frame=frame, ivt_flags=ivt_flags)
    booster, calibrator = fit_lgbm(data, cfg)

    def native(x: np.ndarray) -> np.ndarray:
        return calibrator.predict(np.asarray(booster.predict(x)))

    p_raw = np.asarray(booster.predict(data.test.x))
    p_test = calibrator.predict(p_raw)
    metrics = evaluate_ctr(data, p_test)
    metrics["raw_logloss"] = logloss(data.test.y, p_raw)
    metrics["raw_calibration_ratio"] = float(data.test.y.sum() / max(p_raw.sum(), 1e-12))
    metrics["best_iteration"] = float(booster.current_iteration())
    onnx_model = lgbm_to_onnx(booster, len(CTR_FEATURES), input_name=INPUT_NAME, output_name=OUTPUT_NAME,
                              doc=f"CTR LightGBM on {FEATURE_SERVICE}, {calibrator.method} "
                                  "calibration", calibrator=calibrator)
    metrics.update(check_parity(onnx_model, native, data.test.x, what="ctr lightgbm"))
    version, alias, run_id = log_ctr_model(
        settings, onnx_model, run_name="ctr-lightgbm", flavor="lightgbm", config=cfg,
        metrics=metrics, calibrator=calibrator, data=data)
    log.info("ctr lightgbm: auc %.4f, logloss %.5f -> version %s @%s", metrics["auc"],
             metrics["logloss"], version, alias)
    return CTRResult(version=version, alias=alias, run_id=run_id, metrics=metrics)


__all__ = ["FEATURE_SERVICE", "INPUT_NAME", "MODEL_NAME", "OUTPUT_NAME", "CTRConfig", "CTRData",
           "CTRDataConfig", "CTRResult", "CTRSplit", "ExcludeFn", "check_parity", "ctr_features",
           "ctr_frame", "ctr_unseen_categories", "evaluate_ctr", "fit_lgbm", "fraud_model_mask",
           "general_ivt_filter", "log_ctr_model", "prepare_ctr_data", "quality_metrics",
           "train_ctr"]

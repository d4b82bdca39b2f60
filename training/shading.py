"""Bid-shading training pipeline: auctions -> Feast point-in-time features -> censored MLE -> ONNX -> MLflow.

Every auction we bid in says something about the highest competing bid C (first price,
``bid >= max(C, floor)`` wins, ``min_bid_to_win = max(C, floor) + 0.01`` on some losses):

=====================================  ==========================  =====================
auction                                what it says about C        likelihood term
=====================================  ==========================  =====================
won at b                               C <= b                      log F(b)
lost, min_bid_to_win m, m - .01 > f    C = m - .01                 log f(m - .01)
lost, min_bid_to_win = f + .01         C <= f (only the floor)     log F(f)
lost at b >= f, nothing reported       C > b                       log(1 - F(b))
lost at b < f, nothing reported        nothing (the floor won)     dropped
=====================================  ==========================  =====================

The exchange reports on a random share of losses, independent of C, so the report
itself carries no information and its probability drops out of the likelihood. The
bootstrap policy's randomised bids spread the b's over each context's price range,
which is what makes F identifiable from these one-sided observations.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from adplatform.config import Settings
from adplatform.errors import AdPlatformError, DataError
from adplatform.eventlog import read_events
from features.vectorize import FORMAT_CODES, SHADING_FEATURES, shading_matrix
from models.shading import (
    INPUT_NAME,
    OUTPUT_NAME,
    CensoredData,
    Censoring,
    ShadingConfig,
    ShadingNet,
    censored_loglik,
    export_onnx,
    fit,
    parity,
    predict_landscape,
)
from models.shading_km import BinnedLandscape, log_edges, turnbull
from models.shading_landscape import mixture_cdf
from training.datasets import time_split

if TYPE_CHECKING:
    from feast import FeatureStore
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

FEATURE_SERVICE = "shading_v1"
MODEL_NAME = "shading"
MIN_BID_INCREMENT = 0.01     # the exchange adds this to the clearing price it reports
# Count- and price-like inputs span orders of magnitude: the network sees their log.
LOG_FEATURES = ("pub_bids", "pub_mean_paid", "w", "h", "bidfloor")
HOUR_FEATURES = ("hour",)
# Bins of the context-free landscape (Turnbull): 0.01 to 1000 CPM, ~4% wide each.
KM_EDGES = (0.01, 1000.0, 300)


@dataclass
class ShadingResult:
    version: str
    alias: str
    run_id: str
    metrics: dict[str, float]
    evaluation: dict[str, float] = field(default_factory=dict)


def auction_frame(settings: Settings) -> pd.DataFrame:
    """Our auctions with their request context, one row per auction, sorted by time."""
    events = settings.workspace.events
    auc = read_events(events, "auctions")
    req = read_events(events, "requests")
    ctx = ["request_id", "imp_id", "publisher_id", "device_type", "is_app", "format", "w",
           "h", "bidfloor"]
    df = auc.merge(req[ctx], on=["request_id", "imp_id"], how="inner")
    if len(df) < len(auc):
        log.warning("shading: %d auctions have no request row", len(auc) - len(df))
    df["hour"] = df["ts"].dt.hour
    df["format"] = df["format"].map(FORMAT_CODES).fillna(-1).astype(np.int64)
    df["event_timestamp"] = df["ts"]
    return df.sort_values(["ts", "request_id"]).reset_index(drop=True)


def joined_features(store: FeatureStore, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the ``shading_v1`` features joined point-in-time (Feast).

    The views are snapshotted at whole hours (``features/repo.py``), so every auction of
    a publisher within one hour joins the same snapshot as the hour's start does. Feast
    therefore joins one entity row per (publisher, hour) -- tens of thousands instead of
    millions of auctions, whose as-of join against hourly snapshots would need tens of
    GB -- and the features are attached back to the auctions by (publisher, hour). Were
    snapshots finer than an hour, features would be at most an hour stale, never from
    the future.
    """
    hour = frame["event_timestamp"].dt.floor("h")
    keys = pd.DataFrame({"publisher_id": frame["publisher_id"].to_numpy(),
                         "event_timestamp": hour.to_numpy()}).drop_duplicates()
    service = store.get_feature_service(FEATURE_SERVICE)
    feats = store.get_historical_features(entity_df=keys, features=service).to_df()
    feats = feats.rename(columns={"event_timestamp": "_hour"})
    feats["_hour"] = pd.to_datetime(feats["_hour"], utc=True).dt.floor("h")
    out = frame.assign(_hour=hour.to_numpy()).merge(feats, on=["publisher_id", "_hour"],
                                                     how="left", validate="many_to_one")
    if len(out) != len(frame):
        raise DataError(f"feature join changed the row count: {len(frame)} -> {len(out)}")
    return out.drop(columns=["_hour"])


def censoring(bid: np.ndarray, won: np.ndarray, min_bid_to_win: np.ndarray,
              floor: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(kind, lo, hi, keep) per auction; see the module docstring for the rules.

    ``min_bid_to_win`` is NaN where not reported. Rows with ``keep`` False say nothing
    about C (a loss below the floor without a report).
    """
    bid = np.asarray(bid, dtype=np.float64)
    won = np.asarray(won, dtype=bool)
    mbw = np.asarray(min_bid_to_win, dtype=np.float64)
    floor = np.asarray(floor, dtype=np.float64)
    reported = ~won & ~np.isnan(mbw)
    clearing = mbw - MIN_BID_INCREMENT
    # Half a tick of tolerance: prices are rounded to cents, floats are not exact.
    exact = reported & (clearing > floor + MIN_BID_INCREMENT / 2)
    under_floor = reported & ~exact
    right = ~won & ~reported & (bid >= floor)
    kind = np.select([won, exact, under_floor, right],
                     [Censoring.LEFT, Censoring.EXACT, Censoring.LEFT, Censoring.RIGHT],
                     default=-1).astype(np.int64)
    # A zero floor with C = 0 would give "C <= 0": one tick is the data's resolution.
    lo = np.where(exact, np.maximum(clearing, 1e-4), np.where(right, bid, 0.0))
    hi = np.where(won, bid, np.where(under_floor, np.maximum(floor, MIN_BID_INCREMENT), 1.0))
    keep = kind >= 0
    return kind, lo, np.maximum(hi, 1e-4), keep


def features_matrix(df: pd.DataFrame) -> np.ndarray:
    """(N, len(SHADING_FEATURES)) float32 from a joined frame (the serving function)."""
    return shading_matrix({c: df[c].to_numpy(dtype=np.float64, na_value=np.nan)
                           for c in df.columns if df[c].dtype.kind in "biuf"})


def censored_data(df: pd.DataFrame) -> tuple[CensoredData, np.ndarray]:
    """Training rows of a joined auction frame, and the frame rows they came from."""
    kind, lo, hi, keep = censoring(df["bid_price"].to_numpy(), df["won"].to_numpy(),
                                   df["min_bid_to_win"].to_numpy(dtype=np.float64,
                                                                  na_value=np.nan),
                                   df["bidfloor"].to_numpy())
    rows = np.flatnonzero(keep)
    x = features_matrix(df)
    return CensoredData(x[rows], kind[rows], lo[rows], hi[rows]), rows


def _columns(names: tuple[str, ...]) -> tuple[int, ...]:
    return tuple(SHADING_FEATURES.index(n) for n in names)


def fit_turnbull(data: CensoredData) -> BinnedLandscape:
    """The context-free nonparametric landscape of ``data`` (the KM baseline)."""
    low, high, n = KM_EDGES
    return turnbull(data.kind, data.lo, data.hi, log_edges(low, high, n))


def binned(data: CensoredData, edges: np.ndarray) -> CensoredData:
    """Exact prices turned into their bin of ``edges``: likelihoods comparable with KM."""
    exact = data.kind == Censoring.EXACT
    j = np.clip(np.searchsorted(edges, data.lo, side="left") - 1, 0, len(edges) - 2)
    lo = np.where(exact, edges[j], data.lo)
    hi = np.where(exact, edges[j + 1], data.hi)
    kind = np.where(exact & (lo <= 0), Censoring.LEFT, np.where(exact, Censoring.INTERVAL,
                                                                 data.kind))
    return CensoredData(data.x, kind.astype(np.int64), lo, hi)


def model_loglik(landscape: np.ndarray, data: CensoredData) -> np.ndarray:
    """Per-row censored log-likelihood (R,) of ``data`` under landscapes (R, 3M)."""
    import torch

    m = landscape.shape[1] // 3
    land = torch.from_numpy(landscape.astype(np.float64))
    log_w = torch.log(torch.clamp(land[:, :m], min=1e-300))
    with torch.no_grad():
        ll = censored_loglik(log_w, land[:, m:2 * m], land[:, 2 * m:],
                             torch.from_numpy(data.kind), torch.from_numpy(data.lo),
                             torch.from_numpy(data.hi))
    return ll.numpy()


def holdout_metrics(landscape: np.ndarray, test: CensoredData, km: BinnedLandscape,
                    test_frame: pd.DataFrame) -> dict[str, float]:
    """Held-out likelihood (binned like KM), and the predicted win rate at the logged bids."""
    from training.metrics import auc

    bt = binned(test, km.edges)
    won = test_frame["won"].to_numpy(dtype=bool)
    if len(test_frame) != landscape.shape[0]:
        raise DataError(f"{len(test_frame)} auctions but {landscape.shape[0]} landscapes")
    p_win = mixture_cdf(landscape)(
        test_frame["bid_price"].to_numpy(dtype=np.float64)[:, None])[:, 0]
    return {
        "test_loglik_model": float(model_loglik(landscape, bt).mean()),
        # A tiny uniform share: a bin the training data left empty must not score -inf.
        "test_loglik_km": float(km.smoothed(1e-6).loglik(bt.kind, bt.lo, bt.hi).mean()),
        "test_win_auc": auc(won, p_win),
        "test_win_calibration": float(won.sum() / max(p_win.sum(), 1e-9)),
    }


def train_shading(settings: Settings, config: ShadingConfig | None = None, *,
                  evaluate: bool = True, drsa: bool = True) -> ShadingResult:
    """Train, export, log and register ``shading``; evaluate on the simulator's truth.

    ``evaluate``: when the workspace holds simulator ground truth, also compute realised
    surplus against the oracle and the baselines (:mod:`training.shading_eval`); when the
    iPinYou DRSA sample is present, the censored log-likelihood of the same network
    architecture against Kaplan-Meier on it. Both are logged and returned in
    ``evaluation`` (keys ``surplus, oracle_surplus, best_constant_surplus, km_surplus,
    truthful_surplus, win_rate`` and ``loglik_model, loglik_km``). ``drsa`` False skips
    the DRSA part.
    """
    import mlflow
    from mlflow.models import infer_signature

    from features.store import open_store
    from mlops.registry import code_version, ensure_experiment, register

    cfg = config or ShadingConfig()
    store = open_store(settings)
    frame = auction_frame(settings)
    if frame.empty:
        raise DataError(f"no auctions under {settings.workspace.events}: simulate or log some")
    df = joined_features(store, frame)
    train_df, test_df = time_split(df, cfg.holdout_days)
    if len(train_df) > cfg.max_train_rows:
        train_df = train_df.iloc[-cfg.max_train_rows:]
    train_all, _ = censored_data(train_df)
    n_val = max(1, int(len(train_all) * cfg.val_share))
    tr, va = train_all.take(slice(0, len(train_all) - n_val)), train_all.take(
        slice(len(train_all) - n_val, None))
    test, test_rows = censored_data(test_df)
    log.info("shading: %d train, %d validation, %d held-out auctions", len(tr), len(va),
             len(test))
    result = fit(tr, va, cfg, log_columns=_columns(LOG_FEATURES),
                 hour_columns=_columns(HOUR_FEATURES))
    model = result.model
    km = fit_turnbull(train_all)
    test_land = predict_landscape(model, test.x)
    metrics = {"train_nll": result.train_nll, "val_nll": result.val_nll,
               "test_nll": float(-model_loglik(test_land, test).mean()),
               "epochs": float(result.epochs), "n_train": float(len(tr)),
               "n_val": float(len(va)), "n_test": float(len(test))}
    metrics.update(holdout_metrics(test_land, test, km, test_df.iloc[test_rows]))
    proto = export_onnx(model, doc=f"bid-shading landscape on {FEATURE_SERVICE}")
    check = parity(model, proto, test.x[:20000] if len(test) else va.x[:20000])
    metrics.update({f"onnx_{k}": v for k, v in check.items()})
    if check["within_1e-5"] < 0.999 or check["within_1e-3"] < 1.0:
        raise AdPlatformError(f"shading ONNX export differs from torch: {check}")

    evaluation: dict[str, float] = {}
    if evaluate and (settings.workspace.truth / "truth").exists():
        from training.shading_eval import evaluate_simulator

        evaluation = evaluate_simulator(settings, test_df.iloc[test_rows]["request_id"],
                                        test_land, train_all, km=km)
        metrics.update({f"sim_{k}": v for k, v in evaluation.items()})
    if evaluate and drsa:
        from training.loaders.datasets import available
        from training.shading_eval import evaluate_drsa

        if available("ipinyou_2259_bid_landscape_drsa"):
            on_drsa = evaluate_drsa()
            evaluation.update({"loglik_model": on_drsa["loglik_model"],
                               "loglik_km": on_drsa["loglik_km"]})
            metrics.update({f"drsa_{k}": v for k, v in on_drsa.items()})

    window = (f"{train_df['event_timestamp'].min().isoformat()}/"
              f"{train_df['event_timestamp'].max().isoformat()}")
    tags = {"feature_service": FEATURE_SERVICE, "training_window": window,
            "code_version": code_version(), "flavor": "torch", "input": INPUT_NAME,
            "output": OUTPUT_NAME, "n_components": str(model.m),
            "landscape": "lognormal_mixture"}
    ensure_experiment(settings, MODEL_NAME)
    with mlflow.start_run(run_name="shading-lognormal-mixture") as run:
        mlflow.log_params(asdict(cfg))
        mlflow.set_tags(tags)
        example = test.x[:5] if len(test) >= 5 else tr.x[:5]
        out = predict_landscape(model, example)
        info = mlflow.onnx.log_model(proto, name="model", input_example=example,
                                     signature=infer_signature(example, out),
                                     save_as_external_data=False)
        mlflow.log_metrics(metrics, model_id=info.model_id)
        mlflow.log_figure(landscape_figure(model, test.x if len(test) else tr.x, km),
                          "bid_landscape.png")
        mlflow.log_dict({"history": result.history, "features": SHADING_FEATURES},
                        "training.json")
        version, alias = register(settings, info.model_uri, MODEL_NAME, tags)
    return ShadingResult(version=version, alias=alias, run_id=run.info.run_id, metrics=metrics,
                         evaluation=evaluation)


def landscape_figure(model: ShadingNet, x: np.ndarray, km: BinnedLandscape,
                     n_rows: int = 6) -> Figure:
    """P(win | bid) of a few held-out auctions (model) against the context-free KM."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    prices = np.geomspace(0.05, 50.0, 200)
    rng = np.random.default_rng(0)
    rows = rng.choice(x.shape[0], size=min(n_rows, x.shape[0]), replace=False)
    land = predict_landscape(model, x[rows])
    cdf = mixture_cdf(land)(np.broadcast_to(prices, (len(rows), len(prices))))
    col = {name: SHADING_FEATURES.index(name) for name in ("w", "h", "device_type", "hour",
                                                           "bidfloor")}
    for i, r in enumerate(rows):
        v = {name: x[r, j] for name, j in col.items()}
        ax.plot(prices, cdf[i], lw=1.2,
                label=(f"{int(v['w'])}x{int(v['h'])}, device {int(v['device_type'])}, "
                       f"{int(v['hour']):02d}h UTC, floor {v['bidfloor']:.2f}"))
    ax.plot(prices, km.cdf(prices), "k--", lw=2, label="Kaplan-Meier (Turnbull), all")
    ax.set_xscale("log")
    ax.set_xlabel("bid (CPM)")
    ax.set_ylabel("P(win | bid) = P(competing <= bid)")
    ax.set_title("Bid landscape: held-out auctions")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


__all__ = ["FEATURE_SERVICE", "MODEL_NAME", "ShadingResult", "auction_frame", "binned",
           "censored_data", "censoring", "features_matrix", "fit_turnbull", "holdout_metrics",
           "landscape_figure", "model_loglik", "train_shading"]

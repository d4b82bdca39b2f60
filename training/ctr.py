"""CTR training pipeline: event log -> Feast point-in-time features -> LightGBM -> ONNX -> MLflow."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from adplatform.config import Settings
from features.store import open_store
from features.vectorize import CTR_FEATURES, ctr_matrix
from models.lgbm_onnx import lgbm_to_onnx, onnx_predict
from training.datasets import impressions, time_split, with_features
from training.metrics import auc, logloss

log = logging.getLogger(__name__)

FEATURE_SERVICE = "ctr_v1"
INPUT_NAME = "ctr_features"
OUTPUT_NAME = "pctr"


@dataclass
class CTRConfig:
    num_leaves: int = 31            # enough capacity for user x topic interactions
    learning_rate: float = 0.05     # small steps; early stopping picks the count
    num_boost_round: int = 400      # upper bound; early stopping usually ends sooner
    min_data_in_leaf: int = 200     # clicks are rare: leaves need many rows to estimate CTR
    feature_fraction: float = 0.9
    lambda_l2: float = 1.0
    holdout_days: int = 2           # the last days are held out (time split, no leakage)
    seed: int = 7
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class CTRResult:
    version: str
    alias: str
    run_id: str
    metrics: dict[str, float]


def train_ctr(settings: Settings, config: CTRConfig | None = None) -> CTRResult:
    import lightgbm as lgb
    import mlflow
    from mlflow.models import infer_signature

    from mlops.registry import code_version, ensure_experiment, register

    cfg = config or CTRConfig()
    store = open_store(settings)
    frame = impressions(settings.workspace.root)
    df = with_features(store, frame, FEATURE_SERVICE)
    train, test = time_split(df, cfg.holdout_days)
    x_tr, x_te = _matrix(train), _matrix(test)
    y_tr, y_te = train["click"].to_numpy(), test["click"].to_numpy()
    log.info("ctr: %d train rows (%d clicks), %d held out", len(train), int(y_tr.sum()), len(test))

    params = {"objective": "binary", "num_leaves": cfg.num_leaves,
              "learning_rate": cfg.learning_rate, "min_data_in_leaf": cfg.min_data_in_leaf,
              "feature_fraction": cfg.feature_fraction, "lambda_l2": cfg.lambda_l2,
              "seed": cfg.seed, "num_threads": 2, "verbose": -1, "deterministic": True}
    dtrain = lgb.Dataset(x_tr, y_tr, feature_name=CTR_FEATURES, free_raw_data=False)
    dvalid = lgb.Dataset(x_te, y_te, reference=dtrain)
    booster = lgb.train(params, dtrain, num_boost_round=cfg.num_boost_round, valid_sets=[dvalid],
                        callbacks=[lgb.early_stopping(30, verbose=False)])
    p_te = np.asarray(booster.predict(x_te, num_iteration=booster.best_iteration))
    base = float(np.clip(y_tr.mean(), 1e-6, 1 - 1e-6))
    metrics = {"auc": auc(y_te, p_te), "logloss": logloss(y_te, p_te),
               "base_logloss": logloss(y_te, np.full(len(y_te), base)),
               "calibration_ratio": float(y_te.sum() / max(p_te.sum(), 1e-9)),
               "n_train": float(len(train)), "n_test": float(len(test)),
               "best_iteration": float(booster.best_iteration)}
    onnx_model = lgbm_to_onnx(booster, len(CTR_FEATURES), input_name=INPUT_NAME,
                              output_name=OUTPUT_NAME, doc=f"CTR LightGBM on {FEATURE_SERVICE}")
    p_onnx = onnx_predict(onnx_model, x_te[:1000])
    metrics["onnx_max_abs_diff"] = float(np.max(np.abs(p_onnx - p_te[:1000]))) if len(p_onnx) else 0.0

    window = f"{train['event_timestamp'].min().isoformat()}/{train['event_timestamp'].max().isoformat()}"
    tags = {"feature_service": FEATURE_SERVICE, "training_window": window,
            "code_version": code_version(), "flavor": "lightgbm", "input": INPUT_NAME,
            "output": OUTPUT_NAME}
    ensure_experiment(settings, "ctr")
    with mlflow.start_run(run_name="ctr-lightgbm") as run:
        mlflow.log_params({k: v for k, v in asdict(cfg).items() if k != "extra"})
        mlflow.set_tags(tags)
        example = x_te[:5]
        info = mlflow.onnx.log_model(onnx_model, name="model", input_example=example,
                                     signature=infer_signature(example, p_te[:5].astype(np.float32)),
                                     save_as_external_data=False)
        mlflow.log_metrics(metrics, model_id=info.model_id)
        version, alias = register(settings, info.model_uri, "ctr", tags)
    return CTRResult(version=version, alias=alias, run_id=run.info.run_id, metrics=metrics)


def _matrix(df: pd.DataFrame) -> np.ndarray:
    return ctr_matrix({c: df[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in df.columns
                       if df[c].dtype.kind in "biuf"})


__all__ = ["CTRConfig", "CTRResult", "FEATURE_SERVICE", "INPUT_NAME", "OUTPUT_NAME", "train_ctr"]

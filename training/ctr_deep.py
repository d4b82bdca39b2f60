"""Deep CTR training: the same data, calibration, evaluation and registry path as LightGBM.

``adplatform train ctr --model deep`` calls :func:`train_ctr_deep`. The model is DCN-v2
(:mod:`models.deep_ctr`) over the ``ctr_v1`` matrix, so serving builds its input exactly
as for LightGBM (``ctr_features`` float32 (K, F) -> ``pctr`` float32 (K,)); the small
categorical columns are looked up against the training vocabulary inside the graph.
It is registered under ``ctr`` with flavor tag ``pytorch-dcnv2`` (``@challenger`` once a
champion exists).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from adplatform.config import Settings
from features.vectorize import CTR_FEATURES
from models.calibration import fit_calibrator
from training.ctr import (
    FEATURE_SERVICE,
    INPUT_NAME,
    OUTPUT_NAME,
    CTRData,
    CTRDataConfig,
    CTRResult,
    check_parity,
    evaluate_ctr,
    log_ctr_model,
    prepare_ctr_data,
)
from training.metrics import logloss

if TYPE_CHECKING:
    from models.calibration import Calibrator
    from models.deep_ctr import DCNConfig, DCNv2, DeepTrainConfig

log = logging.getLogger(__name__)

FLAVOR = "pytorch-dcnv2"

# ctr_v1 columns that are categories written as numbers: embedded, not scaled.
CTR_CATEGORICAL: tuple[str, ...] = ("hour", "device_type", "is_app", "format", "topic", "w", "h")


def _default_model() -> DCNConfig:
    from models.deep_ctr import DCNConfig

    return DCNConfig()


def _default_train() -> DeepTrainConfig:
    from models.deep_ctr import DeepTrainConfig

    return DeepTrainConfig()


@dataclass
class DeepCTRConfig(CTRDataConfig):
    """Data split/hygiene (as LightGBM) plus the DCN-v2 architecture and optimiser.

    Importing this module does not import torch; training does.
    """

    model: DCNConfig = field(default_factory=_default_model)
    train: DeepTrainConfig = field(default_factory=_default_train)


def fit_deep_ctr(data: CTRData, cfg: DeepCTRConfig
                 ) -> tuple[DCNv2, Calibrator, dict[str, list[float]]]:
    """(DCNv2 model, calibrator, history): early stopping and calibration on the calib split."""
    from models.deep_ctr import DCNv2, InputSpec, fit, predict

    spec = InputSpec.fit(data.train.x, vocab_cols=[CTR_FEATURES.index(c) for c in CTR_CATEGORICAL])
    model = DCNv2(spec, cfg.model)
    history = fit(model, data.train.x, data.train.y, w=data.train.w, x_val=data.calib.x,
                  y_val=data.calib.y, w_val=data.calib.w, cfg=cfg.train)
    calibrator = fit_calibrator(predict(model, data.calib.x), data.calib.y, cfg.calibration,
                                w=data.calib.w)
    return model, calibrator, history


def train_ctr_deep(settings: Settings, config: DeepCTRConfig | None = None, *,
                   frame: pd.DataFrame | None = None,
                   ivt_flags: pd.DataFrame | None = None) -> CTRResult:
    """Train, calibrate, export (torch dynamo -> ONNX), check parity, evaluate, register.

    ``frame`` reuses a joined frame from :func:`training.ctr.ctr_frame` (tests, notebooks).
    """
    from models.deep_ctr import deep_to_onnx, predict

    cfg = config or DeepCTRConfig()
    data = prepare_ctr_data(settings, cfg, frame=frame, ivt_flags=ivt_flags)
    model, calibrator, history = fit_deep_ctr(data, cfg)

    def native(x: np.ndarray) -> np.ndarray:
        return calibrator.predict(predict(model, x))

    p_raw = predict(model, data.test.x)
    p_test = calibrator.predict(p_raw)
    metrics = evaluate_ctr(data, p_test)
    metrics["raw_logloss"] = logloss(data.test.y, p_raw)
    metrics["raw_calibration_ratio"] = float(data.test.y.sum() / max(p_raw.sum(), 1e-12))
    metrics["epochs"] = float(len(history["val_logloss"]))
    onnx_model = deep_to_onnx(model, input_name=INPUT_NAME, output_name=OUTPUT_NAME,
                              doc=f"CTR DCN-v2 on {FEATURE_SERVICE}", calibrator=calibrator)
    metrics.update(check_parity(onnx_model, native, data.test.x, what="ctr dcn-v2"))
    version, alias, run_id = log_ctr_model(
        settings, onnx_model, run_name="ctr-dcnv2", flavor=FLAVOR, config=cfg, metrics=metrics,
        calibrator=calibrator, data=data,
        extra_artifacts={"dcnv2.json": {"model": asdict(cfg.model), "train": asdict(cfg.train),
                                        "history": history}})
    log.info("ctr dcn-v2: auc %.4f, logloss %.5f -> version %s @%s", metrics["auc"],
             metrics["logloss"], version, alias)
    return CTRResult(version=version, alias=alias, run_id=run_id, metrics=metrics)


__all__ = ["CTR_CATEGORICAL", "FLAVOR", "DeepCTRConfig", "fit_deep_ctr", "train_ctr_deep"]

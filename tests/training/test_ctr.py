"""LightGBM CTR pipeline: data hygiene, splits, metrics, and the registered champion.

The session fixture ``trained_workspace`` has already run :func:`training.ctr.train_ctr`
on the small simulated world; these tests read what it registered instead of training
again. The quality thresholds of the full-size simulator are in the ``slow`` test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adplatform.config import Settings
from adplatform.errors import DataError
from training.ctr import (
    CTRConfig,
    ctr_frame,
    general_ivt_filter,
    prepare_ctr_data,
    quality_metrics,
)

QUALITY_METRICS = ("auc", "logloss", "base_logloss", "oracle_auc", "oracle_logloss",
                   "captured_gain", "calibration_ratio", "ece")


def _ivt_frame() -> pd.DataFrame:
    rows = [
        # A declared crawler never clicks but is still invalid.
        dict(ua="Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
             device_id="d0", ip="1.1.1.1", user_id="", click=0, n_clicks=0, click_delay_s=np.nan),
        dict(ua="Mozilla/5.0 HeadlessChrome/132.0", device_id="d1", ip="3.3.3.3", user_id="u1",
             click=0, n_clicks=0, click_delay_s=np.nan),
        # A residential bot: repeated and sub-second clicks on one device.
        *[dict(ua="Mozilla/5.0 (Windows NT 10.0)", device_id="d2", ip=f"9.9.9.{i}",
               user_id=f"b{i}", click=1, n_clicks=3, click_delay_s=0.4) for i in range(2)],
        dict(ua="Mozilla/5.0 (Windows NT 10.0)", device_id="d2", ip="9.9.9.9", user_id="b9",
             click=0, n_clicks=0, click_delay_s=np.nan),
        # A heavy human: one accidental double click among many ordinary clicks.
        dict(ua="Mozilla/5.0 (iPhone)", device_id="d3", ip="5.5.5.5", user_id="h", click=1,
             n_clicks=2, click_delay_s=5.0),
        *[dict(ua="Mozilla/5.0 (iPhone)", device_id="d3", ip="5.5.5.5", user_id="h", click=1,
               n_clicks=1, click_delay_s=float(d)) for d in (0.8, 4.0, 7.0, 12.0)],
        dict(ua="Mozilla/5.0 (iPhone)", device_id="d3", ip="5.5.5.5", user_id="h", click=0,
             n_clicks=0, click_delay_s=np.nan),
    ]
    return pd.DataFrame(rows)


def test_general_ivt_rules_flag_bots_and_keep_heavy_humans() -> None:
    drop = general_ivt_filter(_ivt_frame())
    assert drop.tolist() == [True, True, True, True, True] + [False] * 6


def test_general_ivt_filter_names_missing_columns() -> None:
    with pytest.raises(DataError, match="click_delay_s"):
        general_ivt_filter(_ivt_frame().drop(columns="click_delay_s"))


def test_quality_metrics_against_the_oracle() -> None:
    rng = np.random.default_rng(0)
    true = rng.beta(2, 100, 100_000)
    y = (rng.random(len(true)) < true).astype(float)
    camp = rng.choice(["a", "b", "c"], len(y))
    perfect = quality_metrics(y, true, y.mean(), oracle=true, campaign=camp)
    assert perfect["captured_gain"] == pytest.approx(1.0)
    assert perfect["auc"] == perfect["oracle_auc"]
    assert perfect["truth_ratio"] == pytest.approx(1.0)
    assert perfect["oracle_campaign_ratio_min"] == perfect["campaign_ratio_min"]
    flat = quality_metrics(y, np.full(len(y), y.mean()), y.mean(), oracle=true)
    assert flat["captured_gain"] == pytest.approx(0.0, abs=1e-9)
    assert flat["calibration_ratio"] == pytest.approx(1.0)
    high = quality_metrics(y, 1.2 * true, y.mean(), oracle=true)
    assert high["truth_ratio"] == pytest.approx(1 / 1.2)
    assert high["ece"] > perfect["ece"]


@pytest.fixture(scope="module")
def frame(trained_workspace: Settings) -> pd.DataFrame:
    return ctr_frame(trained_workspace)


def test_frame_has_outcomes_propensities_and_truth(frame: pd.DataFrame) -> None:
    assert {"n_clicks", "click_delay_s", "propensity", "true_ctr", "is_bot"} <= set(frame.columns)
    clicked = frame["click"] == 1
    assert (frame.loc[clicked, "n_clicks"] >= 1).all() and (frame.loc[~clicked, "n_clicks"] == 0).all()
    assert frame.loc[clicked, "click_delay_s"].notna().all()
    assert frame["propensity"].gt(0).all()


def test_splits_are_time_ordered_user_disjoint_and_hygienic(trained_workspace: Settings,
                                                             frame: pd.DataFrame) -> None:
    data = prepare_ctr_data(trained_workspace, CTRConfig(), frame=frame)
    test_start = data.test.frame["event_timestamp"].min()
    assert data.train.frame["event_timestamp"].max() < test_start
    assert data.calib.frame["event_timestamp"].max() < test_start
    assert not set(data.train.frame["user_id"]) & set(data.calib.frame["user_id"].dropna())
    assert data.excluded > 0
    kept = pd.concat([data.train.frame, data.calib.frame, data.test.frame])
    assert kept["is_bot"].mean() < frame["is_bot"].mean() / 2
    assert data.stats["ivt_false_positive_rate"] < 0.01
    assert np.all(data.train.w == 1.0)
    assert data.train.x.dtype == np.float32


def test_exclude_hook_and_propensity_weights(trained_workspace: Settings,
                                             frame: pd.DataFrame) -> None:
    pub = frame["publisher_id"].iloc[0]

    def drop_publisher(f: pd.DataFrame) -> np.ndarray:
        return (f["publisher_id"] == pub).to_numpy()

    cfg = CTRConfig(exclude=drop_publisher, propensity_weighting=True, max_weight=5.0)
    data = prepare_ctr_data(trained_workspace, cfg, frame=frame)
    assert data.excluded == int((frame["publisher_id"] == pub).sum())
    for split in (data.train, data.calib, data.test):
        assert pub not in set(split.frame["publisher_id"])
    assert data.train.w.mean() == pytest.approx(1.0)
    w = data.train.w
    assert w.std() > 0 and w.max() <= 5.0 * np.median(w) * (1 + 1e-9)
    none = prepare_ctr_data(trained_workspace, CTRConfig(exclude=None), frame=frame)
    assert none.excluded == 0


def test_bad_config_and_empty_splits_are_refused(trained_workspace: Settings,
                                                 frame: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="calibration_fraction"):
        prepare_ctr_data(trained_workspace, CTRConfig(calibration_fraction=1.0), frame=frame)

    def drop_all(f: pd.DataFrame) -> np.ndarray:
        return np.ones(len(f), dtype=bool)

    with pytest.raises(DataError, match="no clicks"):
        prepare_ctr_data(trained_workspace, CTRConfig(exclude=drop_all), frame=frame)

    def wrong_shape(f: pd.DataFrame) -> np.ndarray:
        return np.zeros(3, dtype=bool)

    with pytest.raises(DataError, match="shape"):
        prepare_ctr_data(trained_workspace, CTRConfig(exclude=wrong_shape), frame=frame)


def test_champion_records_lineage_quality_and_parity(trained_workspace: Settings) -> None:
    from mlflow import MlflowClient

    from mlops.registry import configure, resolve

    configure(trained_workspace)
    client = MlflowClient(tracking_uri=trained_workspace.tracking_uri)
    mv = client.get_model_version_by_alias("ctr", "champion")
    assert mv.tags["flavor"] == "lightgbm"
    assert mv.tags["feature_service"] == "ctr_v1"
    assert mv.tags["calibration"] == "platt"
    assert mv.tags["exclude"] == "general_ivt_filter"
    assert "/" in mv.tags["training_window"]
    assert mv.run_id is not None
    metrics = client.get_run(mv.run_id).data.metrics
    for name in QUALITY_METRICS:
        assert name in metrics, name
    assert metrics["onnx_parity_share"] == 1.0 and metrics["onnx_max_abs_diff"] < 1e-5
    # The small world is too short for features to mature (its first day has none), so
    # only sanity bounds here; the full-size thresholds are in the slow test.
    assert metrics["oracle_auc"] > metrics["auc"] > 0.5
    assert metrics["logloss"] <= metrics["base_logloss"] * 1.01
    assert 0.7 < metrics["calibration_ratio"] < 1.4
    model = resolve(trained_workspace, "ctr", "champion")
    _scores_like_serving(model.onnx_path)


def _scores_like_serving(path: Path) -> None:
    from features.repo import N_TOPICS
    from features.vectorize import CONTEXT, CTR_RAW, ctr_matrix
    from serving.base import AuctionInputs
    from serving.onnx_backend import ModelFile, OnnxBackend

    k = 5
    cols = {c: np.full(k, 20.0) for c in CTR_RAW}
    cols.update({c: np.zeros(k) for c in CONTEXT})
    cols["topic"] = np.arange(k) % N_TOPICS
    cols["ad_imps_7d"] = np.array([np.nan, 0.0, 10.0, 100.0, 1000.0])  # one unknown ad
    backend = OnnxBackend([ModelFile("ctr", "1", path)])
    scores = backend.score(AuctionInputs(ctr=ctr_matrix(cols)))
    assert scores.pctr.shape == (k,) and scores.pctr.dtype == np.float32
    assert np.all((scores.pctr > 0) & (scores.pctr < 1))

"""CTR models on the public samples: Criteo (LightGBM and DCN-v2 vs hashed LR), TalkingData.

Each test skips with the loader's message when its sample is absent
(``ADPLATFORM_SHARED_DATA``). The full 5-fold Criteo comparison is ``slow`` (~1-2 min);
the rest takes seconds.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from training.loaders import DatasetUnavailable, require
from training.realdata import CriteoConfig, criteo_matrix, criteo_numeric, paired_bootstrap


def _need(name: str) -> None:
    try:
        require(name)  # type: ignore[arg-type]
    except DatasetUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def criteo() -> pd.DataFrame:
    _need("criteo_dac_sample")
    from training.loaders import load_criteo_sample

    return load_criteo_sample()


def test_paired_bootstrap_centres_on_the_difference() -> None:
    rng = np.random.default_rng(0)
    ys, good, noise = [], [], []
    for _ in range(3):
        y = (rng.random(2_000) < 0.2).astype(float)
        ys.append(y)
        good.append(y + rng.normal(0, 1.0, len(y)))
        noise.append(rng.normal(0, 1.0, len(y)))
    d, lo, hi = paired_bootstrap(ys, good, noise, 200, seed=1)
    assert lo < d < hi and lo > 0.2
    same, slo, shi = paired_bootstrap(ys, good, good, 50, seed=1)
    assert same == slo == shi == 0.0


@pytest.mark.realdata
def test_criteo_encoding_is_fitted_on_the_training_fold_only(criteo: pd.DataFrame) -> None:
    cfg = CriteoConfig()
    train, other = criteo.iloc[:6_000], criteo.iloc[6_000:]
    y = train["label"].to_numpy(dtype=np.float64)
    xtr, xot, cards = criteo_matrix(train, y, other, cfg)
    assert xtr.shape == (6_000, 13 + 26 * 3) and xtr.dtype == np.float32
    codes = xot[:, 13:39]
    # Small integer codes, exact in float32; 0 for values rare or unseen in training.
    assert np.all(codes == np.round(codes)) and codes.max() < 2 ** 24
    assert np.all(codes.max(axis=0) < np.asarray(cards))
    seen = set(train["C3"].dropna())
    unseen = (other["C3"].notna() & ~other["C3"].isin(seen)).to_numpy()
    assert unseen.any() and np.all(xot[unseen, 13 + 2] == 0)
    assert np.all(xot[unseen, 13 + 26 + 26 + 2] == 0)         # count of an unseen value
    # Out-of-fold click rates: a value seen once in training gets the prior, not its label.
    once = (train["C3"].map(train["C3"].value_counts()) == 1).fillna(False).astype(bool)
    rates = xtr[once.to_numpy(dtype=bool), 13 + 26 + 2]
    assert np.allclose(rates, rates[0], atol=0.02)
    assert np.isnan(criteo_numeric(criteo)).any()              # empty integers stay NaN


@pytest.mark.realdata
def test_criteo_cv_runs_end_to_end_quickly(criteo: pd.DataFrame) -> None:
    from training.realdata import criteo_cv

    cfg = replace(CriteoConfig(), folds=3, inner_folds=2, lr_c=(0.03,), deep_seeds=1,
                  bootstrap=50)
    out = criteo_cv(criteo, cfg)
    for name in ("lgbm", "deep", "lr"):
        assert 0.68 < out[f"auc_{name}"] < 0.8
    for name in ("lgbm", "deep"):
        assert out[f"{name}_minus_lr_ci_low"] <= out[f"{name}_minus_lr"]
        assert out[f"{name}_minus_lr"] <= out[f"{name}_minus_lr_ci_high"]


@pytest.mark.realdata
@pytest.mark.slow
def test_lightgbm_and_dcn_beat_hashed_logistic_regression_on_criteo(criteo: pd.DataFrame
                                                                   ) -> None:
    from training.realdata import criteo_cv

    out = criteo_cv(criteo)                      # all 8,000 rows, 5 folds
    assert out["n_rows"] == 8_000
    assert out["auc_lgbm"] > out["auc_lr"]
    assert out["auc_deep"] > out["auc_lr"]
    for name in ("lgbm", "deep"):
        assert out[f"{name}_minus_lr_ci_low"] < out[f"{name}_minus_lr"] < out[f"{name}_minus_lr_ci_high"]
        # The interval is informative (measured ~±0.006 around +0.007..+0.009).
        assert out[f"{name}_minus_lr_ci_high"] - out[f"{name}_minus_lr_ci_low"] < 0.03


@pytest.mark.realdata
def test_talkingdata_attribution_auc_on_a_time_ordered_holdout() -> None:
    _need("talkingdata_adtracking")
    from training.realdata import talkingdata_holdout

    out = talkingdata_holdout()
    assert out["n_test"] == 20_000 and out["test_positives"] >= 20
    assert out["auc"] >= 0.95
    assert out["auc_ci_low"] <= out["auc"] <= out["auc_ci_high"]

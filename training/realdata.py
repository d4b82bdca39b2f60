"""CTR models on real public data: the checks the simulator cannot give.

* **Criteo** (the canonical 8,000-row sample of Kaggle DAC): 5-fold cross-validation of
  LightGBM, the DCN-v2 deep model and a logistic-regression baseline on hashed one-hot
  features (L2 strength chosen on inner folds). Paired bootstrap over the test rows of
  every fold gives 95% intervals of the AUC differences (model - baseline).
* **TalkingData** (the 100,000-row Kaggle sample): LightGBM for ``is_attributed`` on a
  time-ordered hold-out (train on the first 80% of the clicks, test on the last 20%),
  with causal click-stream features only (counts and gaps computed from earlier clicks,
  never the "next click" features that look into the future).

Encoding follows the ONNX contract of the serving models even where nothing is
exported: categorical values become small integer codes (frequency rank within the
training fold, 0 for rare/unseen values), never raw 32-bit hashes in float32. LightGBM
and the DCN read the same matrix: the 13 integer counts, the 26 codes (embedded by the
DCN, split numerically by LightGBM), and per categorical its smoothed click rate
(out-of-fold on the training rows) and its count. On 8,000 rows these rate/count
columns are what lets the trees and the network match a hashed logistic regression,
which learns one weight per value directly (codes alone: LightGBM 0.738, DCN 0.733 vs
LR 0.742 mean AUC).

:func:`realdata_report` returns ``{"criteo": {...}, "talkingdata": {...}}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from training.loaders import CAT_FEATURES, INT_FEATURES
from training.metrics import auc, logloss

if TYPE_CHECKING:
    from scipy.sparse import csr_matrix

    from models.deep_ctr import DCNConfig, DeepTrainConfig

log = logging.getLogger(__name__)


def _criteo_dcn() -> DCNConfig:
    from models.deep_ctr import DCNConfig

    # 8,000 rows: narrow and shallow, heavier dropout; the data cannot feed more weights.
    return DCNConfig(embed_dim=2, embed_dim_max=4, cross_layers=1, deep_layers=(32,),
                     dropout=0.5)


def _criteo_deep_train() -> DeepTrainConfig:
    from models.deep_ctr import DeepTrainConfig

    # Small batches for small data; early stopping (3-5 epochs) on the validation split.
    return DeepTrainConfig(epochs=30, batch_size=256, lr=1e-3, weight_decay=1e-4, patience=3)


@dataclass
class CriteoConfig:
    folds: int = 5                  # outer cross-validation folds
    inner_folds: int = 3            # L2 strength of the LR; out-of-fold click rates
    seed: int = 7
    # A category seen fewer times in a training fold gets code 0: an embedding or a split
    # on a value seen twice in 6,400 rows is noise (10 beat 3 by 0.003 AUC for the DCN).
    min_count: int = 10
    prior_weight: float = 20.0      # pseudo-rows shrinking a category's click rate to the mean
    hash_bits: int = 18             # 262k buckets for ~40k distinct tokens: few collisions
    lr_c: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3)   # inverse L2 strengths searched
    valid_share: float = 0.15       # of a training fold: early stopping (LightGBM, deep)
    # LightGBM is refitted on the whole training fold for best_iteration / (1 - valid_share)
    # rounds: on 6,400 rows the held-back 15% matters (+0.002-0.003 AUC).
    # LightGBM: small trees, many rows per leaf, strong L2 and column sampling: 6,400
    # training rows (15 leaves / 40 rows per leaf scored 0.749 vs 0.751 for these).
    num_leaves: int = 7
    learning_rate: float = 0.03
    num_boost_round: int = 1000
    min_data_in_leaf: int = 60
    feature_fraction: float = 0.5
    lambda_l2: float = 10.0
    deep: DCNConfig = field(default_factory=_criteo_dcn)
    deep_train: DeepTrainConfig = field(default_factory=_criteo_deep_train)
    # The deep model is the mean of this many DCN-v2s (different initialisation and
    # early-stopping split): one network on 6,400 rows has a seed spread of ~0.005 AUC.
    deep_seeds: int = 3
    bootstrap: int = 1000           # paired bootstrap replicates for the AUC differences


@dataclass
class TalkingDataConfig:
    holdout_share: float = 0.2      # the last 20% of the clicks (time order) are the test
    valid_share: float = 0.15       # the last 15% of the training clicks: early stopping
    seed: int = 7
    num_leaves: int = 15
    learning_rate: float = 0.05
    num_boost_round: int = 800
    min_data_in_leaf: int = 50      # 0.2% positives: leaves need many rows
    bootstrap: int = 1000


# --------------------------------------------------------------------------- Criteo

def criteo_codes(train: pd.DataFrame, other: pd.DataFrame, min_count: int
                 ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Categorical codes (float32) fitted on ``train``: 1 = most frequent value, 0 = rare.

    Returns (train codes, other codes, cardinality per column incl. code 0).
    """
    tr_cols, ot_cols, cards = [], [], []
    for c in CAT_FEATURES:
        counts = train[c].value_counts(dropna=True)
        keep = counts[counts >= min_count].index
        mapping = pd.Series(np.arange(1, len(keep) + 1, dtype=np.float64), index=keep)
        tr_cols.append(train[c].map(mapping).fillna(0).to_numpy(dtype=np.float32))
        ot_cols.append(other[c].map(mapping).fillna(0).to_numpy(dtype=np.float32))
        cards.append(len(keep) + 1)
    return np.column_stack(tr_cols), np.column_stack(ot_cols), cards


def criteo_target_counts(train: pd.DataFrame, y: np.ndarray, other: pd.DataFrame, *,
                         prior_weight: float, folds: int, seed: int
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed click rate and count of each categorical value, fitted on ``train``.

    The training rows get out-of-fold rates (``folds`` inner folds), so no row sees its
    own label; ``other`` rows get rates from the whole of ``train``. Rates shrink to the
    base rate with ``prior_weight`` pseudo-rows. Returns (train, other), each (N, 52):
    26 rates then 26 counts.
    """
    from sklearn.model_selection import StratifiedKFold

    prior = float(y.mean())
    inner = list(StratifiedKFold(folds, shuffle=True, random_state=seed)
                 .split(np.zeros(len(y)), y))
    rate_tr = np.empty((len(train), len(CAT_FEATURES)), dtype=np.float32)
    rate_ot = np.empty((len(other), len(CAT_FEATURES)), dtype=np.float32)
    cnt_tr, cnt_ot = np.empty_like(rate_tr), np.empty_like(rate_ot)

    def rates(keys: np.ndarray, labels: np.ndarray) -> pd.Series:
        s = pd.DataFrame({"k": keys, "y": labels}).groupby("k")["y"].agg(["sum", "count"])
        return (s["sum"] + prior_weight * prior) / (s["count"] + prior_weight)

    for j, c in enumerate(CAT_FEATURES):
        col = train[c].astype(object).fillna("NA").to_numpy()
        col_ot = pd.Series(other[c].astype(object).fillna("NA").to_numpy())
        for a, b in inner:
            rate_tr[b, j] = pd.Series(col[b]).map(rates(col[a], y[a])).fillna(prior).to_numpy()
        rate_ot[:, j] = col_ot.map(rates(col, y)).fillna(prior).to_numpy()
        counts = pd.Series(col).value_counts()
        cnt_tr[:, j] = pd.Series(col).map(counts).to_numpy()
        cnt_ot[:, j] = col_ot.map(counts).fillna(0).to_numpy()
    return np.hstack([rate_tr, cnt_tr]), np.hstack([rate_ot, cnt_ot])


def criteo_matrix(train: pd.DataFrame, y: np.ndarray, other: pd.DataFrame, cfg: CriteoConfig
                  ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(train X, other X, code cardinalities); columns: 13 integers | 26 codes | 26 rates |
    26 counts, float32, everything fitted on ``train`` only."""
    codes_tr, codes_ot, cards = criteo_codes(train, other, cfg.min_count)
    tc_tr, tc_ot = criteo_target_counts(train, y, other, prior_weight=cfg.prior_weight,
                                        folds=cfg.inner_folds, seed=cfg.seed)
    return (np.hstack([criteo_numeric(train), codes_tr, tc_tr]).astype(np.float32),
            np.hstack([criteo_numeric(other), codes_ot, tc_ot]).astype(np.float32), cards)


def criteo_numeric(df: pd.DataFrame) -> np.ndarray:
    """(N, 13) float32 integer features, NaN when empty."""
    return np.column_stack([df[c].to_numpy(dtype=np.float64, na_value=np.nan)
                            for c in INT_FEATURES]).astype(np.float32)


def _numeric_token(v: float) -> str:
    # The Kaggle-winning discretisation: small values exact, larger ones by log(v)^2.
    if np.isnan(v):
        return "NA"
    if v <= 2:
        return str(int(v))
    return f"L{int(np.log(v) ** 2)}"


def criteo_hashed(df: pd.DataFrame, bits: int) -> csr_matrix:
    """Hashed one-hot (N, 2**bits) of every field=value token (missing is a value too)."""
    from sklearn.feature_extraction import FeatureHasher

    num = criteo_numeric(df).astype(np.float64)
    cats = df[list(CAT_FEATURES)].astype(object).where(df[list(CAT_FEATURES)].notna(), "NA")
    rows = []
    for i in range(len(df)):
        tokens = [f"{name}={_numeric_token(num[i, j])}" for j, name in enumerate(INT_FEATURES)]
        tokens += [f"{name}={v}" for name, v in zip(CAT_FEATURES, cats.iloc[i], strict=True)]
        rows.append(tokens)
    hasher = FeatureHasher(n_features=2 ** bits, input_type="string", alternate_sign=False)
    return hasher.transform(rows).tocsr()


def _split_valid(n: int, share: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    idx = rng.permutation(n)
    k = max(1, int(round(n * share)))
    return np.sort(idx[k:]), np.sort(idx[:k])


def _lgbm_params(num_leaves: int, learning_rate: float, min_data_in_leaf: int, seed: int,
                 **extra: Any) -> dict[str, Any]:
    return {"objective": "binary", "num_leaves": num_leaves, "learning_rate": learning_rate,
            "min_data_in_leaf": min_data_in_leaf, "seed": seed, "num_threads": 1,
            "verbose": -1, "deterministic": True, **extra}


def _criteo_lgbm(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, cfg: CriteoConfig,
                 rng: np.random.Generator) -> np.ndarray:
    import lightgbm as lgb

    fit_idx, val_idx = _split_valid(len(ytr), cfg.valid_share, rng)
    params = _lgbm_params(cfg.num_leaves, cfg.learning_rate, cfg.min_data_in_leaf, cfg.seed,
                          feature_fraction=cfg.feature_fraction, lambda_l2=cfg.lambda_l2)
    dtrain = lgb.Dataset(xtr[fit_idx], ytr[fit_idx])
    dvalid = lgb.Dataset(xtr[val_idx], ytr[val_idx], reference=dtrain)
    booster = lgb.train(params, dtrain, num_boost_round=cfg.num_boost_round, valid_sets=[dvalid],
                        callbacks=[lgb.early_stopping(50, verbose=False)])
    rounds = int(np.ceil((booster.best_iteration or cfg.num_boost_round) / (1 - cfg.valid_share)))
    booster = lgb.train(params, lgb.Dataset(xtr, ytr), num_boost_round=rounds)
    return np.asarray(booster.predict(xte))


def _criteo_deep(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, cards: list[int],
                 cfg: CriteoConfig, rng: np.random.Generator) -> np.ndarray:
    from dataclasses import replace

    from models.deep_ctr import DCNv2, InputSpec, fit, predict

    n_num = len(INT_FEATURES)
    codes = {n_num + j: c for j, c in enumerate(cards)}
    preds = []
    for k in range(cfg.deep_seeds):
        fit_idx, val_idx = _split_valid(len(ytr), cfg.valid_share, rng)
        model = DCNv2(InputSpec.fit(xtr[fit_idx], code_cols=codes), cfg.deep)
        fit(model, xtr[fit_idx], ytr[fit_idx], x_val=xtr[val_idx], y_val=ytr[val_idx],
            cfg=replace(cfg.deep_train, seed=cfg.deep_train.seed + k))
        preds.append(predict(model, xte))
    return np.mean(preds, axis=0)


def _criteo_lr(htr: csr_matrix, ytr: np.ndarray, hte: csr_matrix, cfg: CriteoConfig
               ) -> tuple[np.ndarray, float]:
    """Logistic regression with C (inverse L2) chosen by inner-fold log-loss."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    inner = StratifiedKFold(cfg.inner_folds, shuffle=True, random_state=cfg.seed)
    scores = []
    for c in cfg.lr_c:
        losses = []
        for a, b in inner.split(np.zeros(len(ytr)), ytr):
            m = LogisticRegression(C=c, solver="liblinear", max_iter=500).fit(htr[a], ytr[a])
            losses.append(logloss(ytr[b], m.predict_proba(htr[b])[:, 1]))
        scores.append(float(np.mean(losses)))
    best_c = cfg.lr_c[int(np.argmin(scores))]
    model = LogisticRegression(C=best_c, solver="liblinear", max_iter=500).fit(htr, ytr)
    return model.predict_proba(hte)[:, 1], best_c


def paired_bootstrap(y_folds: list[np.ndarray], a_folds: list[np.ndarray],
                     b_folds: list[np.ndarray], replicates: int, seed: int,
                     stat: Callable[[np.ndarray, np.ndarray], float] = auc
                     ) -> tuple[float, float, float]:
    """Mean over folds of stat(a) - stat(b), and a 95% percentile interval.

    Each replicate resamples every fold's test rows with replacement (the same rows for
    both models: paired), recomputes the per-fold difference and averages the folds.
    """
    rng = np.random.default_rng(seed)
    point = float(np.mean([stat(y, a) - stat(y, b)
                           for y, a, b in zip(y_folds, a_folds, b_folds, strict=True)]))
    reps = np.empty(replicates)
    for r in range(replicates):
        diffs = []
        for y, a, b in zip(y_folds, a_folds, b_folds, strict=True):
            i = rng.integers(0, len(y), len(y))
            diffs.append(stat(y[i], a[i]) - stat(y[i], b[i]))
        reps[r] = np.nanmean(diffs)
    lo, hi = np.nanpercentile(reps, [2.5, 97.5])
    return point, float(lo), float(hi)


def criteo_cv(frame: pd.DataFrame | None = None, cfg: CriteoConfig | None = None
              ) -> dict[str, float]:
    """5-fold CV on the Criteo sample: LightGBM, DCN-v2 and hashed-LR AUCs with paired CIs."""
    from sklearn.model_selection import StratifiedKFold

    from training.loaders import load_criteo_sample

    cfg = cfg or CriteoConfig()
    df = load_criteo_sample() if frame is None else frame
    df = df.reset_index(drop=True)
    y = df["label"].to_numpy(dtype=np.float64)
    hashed = criteo_hashed(df, cfg.hash_bits)
    rng = np.random.default_rng(cfg.seed)
    outer = StratifiedKFold(cfg.folds, shuffle=True, random_state=cfg.seed)
    ys: list[np.ndarray] = []
    preds: dict[str, list[np.ndarray]] = {"lgbm": [], "deep": [], "lr": []}
    chosen_c = []
    for k, (tr, te) in enumerate(outer.split(np.zeros(len(y)), y)):
        xtr, xte, cards = criteo_matrix(df.iloc[tr], y[tr], df.iloc[te], cfg)   # (N, 91)
        ys.append(y[te])
        preds["lgbm"].append(_criteo_lgbm(xtr, y[tr], xte, cfg, rng))
        preds["deep"].append(_criteo_deep(xtr, y[tr], xte, cards, cfg, rng))
        p_lr, c = _criteo_lr(hashed[tr], y[tr], hashed[te], cfg)
        preds["lr"].append(p_lr)
        chosen_c.append(c)
        log.info("criteo fold %d: auc lgbm %.4f deep %.4f lr %.4f (C=%g)", k + 1,
                 auc(y[te], preds["lgbm"][-1]), auc(y[te], preds["deep"][-1]),
                 auc(y[te], p_lr), c)
    out: dict[str, float] = {"n_rows": float(len(y)), "folds": float(cfg.folds)}
    for name, ps in preds.items():
        out[f"auc_{name}"] = float(np.mean([auc(t, p) for t, p in zip(ys, ps, strict=True)]))
        out[f"logloss_{name}"] = float(np.mean([logloss(t, p)
                                                for t, p in zip(ys, ps, strict=True)]))
    out["lr_c_median"] = float(np.median(chosen_c))
    for name in ("lgbm", "deep"):
        d, lo, hi = paired_bootstrap(ys, preds[name], preds["lr"], cfg.bootstrap, cfg.seed)
        out[f"{name}_minus_lr"], out[f"{name}_minus_lr_ci_low"] = d, lo
        out[f"{name}_minus_lr_ci_high"] = hi
    return out


# ---------------------------------------------------------------------- TalkingData

def talkingdata_features(df: pd.DataFrame) -> pd.DataFrame:
    """Causal click-stream features, rows in click-time order (ties by file order).

    Counts of earlier clicks by the same ip, ip+app, ip+device+os, and seconds since the
    previous click of the same ip+app+device+os (NaN for a first click).
    """
    df = df.sort_values("click_time", kind="stable").reset_index(drop=True)
    out = pd.DataFrame({c: df[c].astype(np.int64) for c in ("app", "device", "os", "channel")})
    out["hour"] = df["click_time"].dt.hour
    for name, keys in (("ip", ["ip"]), ("ip_app", ["ip", "app"]),
                       ("ip_dev_os", ["ip", "device", "os"])):
        out[f"n_prev_{name}"] = df.groupby(keys).cumcount()
    t = df["click_time"].astype("int64") // 1_000_000_000
    prev = t.groupby([df["ip"], df["app"], df["device"], df["os"]]).shift(1)
    out["gap_prev_s"] = (t - prev).astype(np.float64)
    out["is_attributed"] = df["is_attributed"].to_numpy()
    out["click_time"] = df["click_time"]
    return out


def talkingdata_holdout(frame: pd.DataFrame | None = None, cfg: TalkingDataConfig | None = None
                        ) -> dict[str, float]:
    """LightGBM AUC for ``is_attributed`` on the last ``holdout_share`` of the clicks."""
    import lightgbm as lgb

    from training.loaders import load_talkingdata_sample

    cfg = cfg or TalkingDataConfig()
    feats = talkingdata_features(load_talkingdata_sample() if frame is None else frame)
    cols = [c for c in feats.columns if c not in ("is_attributed", "click_time")]
    cats = ["app", "device", "os", "channel"]
    n = len(feats)
    cut = int(n * (1 - cfg.holdout_share))
    vcut = int(cut * (1 - cfg.valid_share))
    x = feats[cols]
    y = feats["is_attributed"].to_numpy(dtype=np.float64)
    params = _lgbm_params(cfg.num_leaves, cfg.learning_rate, cfg.min_data_in_leaf, cfg.seed,
                          feature_fraction=0.8, lambda_l2=1.0, cat_smooth=20.0,
                          min_data_per_group=50)
    dtrain = lgb.Dataset(x.iloc[:vcut], y[:vcut], categorical_feature=cats)
    dvalid = lgb.Dataset(x.iloc[vcut:cut], y[vcut:cut], reference=dtrain)
    booster = lgb.train(params, dtrain, num_boost_round=cfg.num_boost_round, valid_sets=[dvalid],
                        callbacks=[lgb.early_stopping(50, verbose=False)])
    p = np.asarray(booster.predict(x.iloc[cut:], num_iteration=booster.best_iteration))
    yt = y[cut:]
    rng = np.random.default_rng(cfg.seed)
    reps = [auc(yt[i], p[i]) for i in (rng.integers(0, len(yt), len(yt))
                                       for _ in range(cfg.bootstrap))]
    lo, hi = np.nanpercentile(reps, [2.5, 97.5])
    return {"auc": auc(yt, p), "auc_ci_low": float(lo), "auc_ci_high": float(hi),
            "logloss": logloss(yt, p), "n_train": float(cut), "n_test": float(n - cut),
            "test_positives": float(yt.sum()), "best_iteration": float(booster.best_iteration),
            "test_start": float(feats["click_time"].iloc[cut].timestamp())}


def realdata_report(criteo: CriteoConfig | None = None,
                    talkingdata: TalkingDataConfig | None = None) -> dict[str, dict[str, float]]:
    """``{"criteo": {...}, "talkingdata": {...}}`` (raises DatasetUnavailable when absent)."""
    return {"criteo": criteo_cv(cfg=criteo), "talkingdata": talkingdata_holdout(cfg=talkingdata)}


__all__ = ["CriteoConfig", "TalkingDataConfig", "criteo_codes", "criteo_cv", "criteo_hashed",
           "criteo_matrix", "criteo_numeric", "criteo_target_counts", "paired_bootstrap", "realdata_report", "talkingdata_features",
           "talkingdata_holdout"]

"""Code tests for the shared CTR featurizer (training and serving use the same function)."""

from __future__ import annotations

import numpy as np

from features.repo import N_TOPICS
from features.vectorize import CONTEXT, CTR_FEATURES, CTR_RAW, PRIOR_CTR, ctr_matrix


def _cols(n: int, value: float) -> dict[str, np.ndarray]:
    cols = {c: np.full(n, value) for c in CTR_RAW}
    cols.update({c: np.zeros(n) for c in CONTEXT})
    return cols


def test_shape_dtype_and_order() -> None:
    x = ctr_matrix(_cols(3, 10.0))
    assert x.shape == (3, len(CTR_FEATURES))
    assert x.dtype == np.float32


def test_missing_entities_get_defaults_and_indicators() -> None:
    x = ctr_matrix(_cols(2, np.nan))
    f = {name: i for i, name in enumerate(CTR_FEATURES)}
    assert not np.isnan(x).any()
    assert (x[:, f["user_missing"]] == 1).all() and (x[:, f["ad_missing"]] == 1).all()
    assert np.allclose(x[:, f["user_ctr"]], PRIOR_CTR)


def test_topic_selects_the_candidates_topic() -> None:
    cols = _cols(N_TOPICS, 0.0)
    cols["topic"] = np.arange(N_TOPICS, dtype=np.float64)
    for t in range(N_TOPICS):
        cols[f"user_imps_7d_t{t}"] = np.full(N_TOPICS, 100.0 * (t + 1))
    x = ctr_matrix(cols)
    f = CTR_FEATURES.index("user_topic_imps")
    assert np.array_equal(x[:, f], 100.0 * (np.arange(N_TOPICS) + 1))


def test_scalars_broadcast_like_serving() -> None:
    cols = _cols(4, 5.0)
    cols["user_imps_7d"] = np.float64(7.0)  # type: ignore[assignment]
    x = ctr_matrix(cols)
    assert (x[:, CTR_FEATURES.index("user_imps")] == 7.0).all()


def test_a_column_block_gives_the_same_matrices_as_a_mapping() -> None:
    """Serving hands the builders one (N, C) block; training a mapping of columns."""
    from features.vectorize import (
        FRAUD_CONTEXT,
        FRAUD_RAW,
        SHADING_RAW,
        ColumnBlock,
        ColumnLayout,
        fraud_matrix,
        shading_matrix,
    )

    rng = np.random.default_rng(7)
    names = sorted({*CTR_RAW, *CONTEXT, *FRAUD_RAW, *FRAUD_CONTEXT, *SHADING_RAW})
    values = rng.integers(0, 200, (6, len(names))).astype(np.float64)
    values[rng.random(values.shape) < 0.3] = np.nan                 # missing entities
    values[:, names.index("topic")] = [-1, 0, 3, 7, 8, 2]           # off-range too
    cols = {n: values[:, j] for j, n in enumerate(names)}
    block = ColumnBlock(ColumnLayout(names), values)
    for build in (ctr_matrix, fraud_matrix, shading_matrix):
        np.testing.assert_array_equal(build(block), build(cols))
        np.testing.assert_array_equal(build(block.head(1)), build({n: v[:1]
                                                                    for n, v in cols.items()}))


def _reference_ctr_matrix(cols: dict[str, np.ndarray]) -> np.ndarray:
    """The CTR matrix column by column, written out plainly (ctr_matrix computes the
    same values with fewer, batched numpy calls; every model was trained on these)."""
    t = N_TOPICS
    n = len(cols["topic"])

    def z(name: str) -> np.ndarray:
        return np.where(np.isnan(cols[name]), 0.0, cols[name])

    def smooth(c: np.ndarray, i: np.ndarray) -> np.ndarray:
        return (c + PRIOR_CTR * 50.0) / (i + 50.0)

    t_imps = np.stack([z(f"user_imps_7d_t{k}") for k in range(t)], axis=1)
    t_clicks = np.stack([z(f"user_clicks_7d_t{k}") for k in range(t)], axis=1)
    topic = cols["topic"].astype(np.int64)
    ok = (topic >= 0) & (topic < t)
    rows, idx = np.arange(n), np.clip(topic, 0, t - 1)
    ut_i = np.where(ok, t_imps[rows, idx], 0.0)
    ut_c = np.where(ok, t_clicks[rows, idx], 0.0)
    u_i, u_c = z("user_imps_7d"), z("user_clicks_7d")
    a_i, a_c, p_i, p_c = z("ad_imps_7d"), z("ad_clicks_7d"), z("pub_imps_7d"), z("pub_clicks_7d")
    context = [cols[c] if c != "topic" else topic for c in CONTEXT]
    columns = [u_i, u_c, smooth(u_c, u_i), ut_i, ut_c, smooth(ut_c, ut_i),
               ut_i / np.maximum(u_i, 1.0), *smooth(t_clicks, t_imps).T,
               a_i, a_c, smooth(a_c, a_i), p_i, p_c, smooth(p_c, p_i), *context,
               np.isnan(cols["user_imps_7d"]), np.isnan(cols["ad_imps_7d"]),
               np.isnan(cols["pub_imps_7d"])]
    return np.stack([np.asarray(c, dtype=np.float64) for c in columns],
                    axis=1).astype(np.float32)


def test_ctr_matrix_equals_the_plain_reference_bit_for_bit() -> None:
    rng = np.random.default_rng(11)
    for n in (1, 20, 1000):
        cols = {c: rng.integers(0, 10_000, n).astype(np.float64) for c in CTR_RAW}
        for c in CTR_RAW:
            cols[c][rng.random(n) < 0.2] = np.nan
        cols.update({c: rng.integers(0, 5, n).astype(np.float64) for c in CONTEXT})
        cols["bidfloor"] = rng.random(n) * 3
        cols["topic"] = rng.integers(-2, N_TOPICS + 2, n).astype(np.float64)   # off-range
        x = ctr_matrix(cols)
        assert x.shape == (n, len(CTR_FEATURES)) and x.dtype == np.float32
        np.testing.assert_array_equal(x, _reference_ctr_matrix(cols))

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

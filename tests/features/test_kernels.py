"""Code tests: the compiled serving builders give the numpy builders' matrices, bit for bit.

The numpy builders in features.vectorize define the features (training uses them); the
serving path (features.reader) uses the numba kernels of features._kernels. Any
difference, down to the last float32 bit, would be training/serving skew.
"""

from __future__ import annotations

import numpy as np
import pytest

from features import _kernels
from features import vectorize as v
from features.reader import _default_plan


def _blocks(seed: int, n_blocks: int = 40) -> list[v.ColumnBlock]:
    """Random auction blocks: counts over several magnitudes, a fifth of the values
    missing, whole entities missing, topics in and out of range (and NaN), floors."""
    layout = _default_plan().layout
    rng = np.random.default_rng(seed)
    blocks = []
    for b in range(n_blocks):
        n = int(rng.integers(1, 25))
        m = np.round(rng.lognormal(3.0, 2.5, (n, len(layout))), int(rng.integers(0, 4)))
        m[rng.random(m.shape) < 0.2] = np.nan
        if b % 3 == 0:
            m[:, [layout.index[c] for c in ("user_imps_7d", "ad_imps_7d", "pub_imps_7d",
                                              "ip_requests_1d", "dev_requests_1d",
                                              "pub_bids_7d")]] = np.nan
        topic = rng.integers(-2, v.N_TOPICS + 2, n).astype(np.float64)
        topic[rng.random(n) < 0.1] = np.nan
        m[:, layout.index["topic"]] = topic
        m[:, layout.index["bidfloor"]] = rng.random(n) * 3.0
        blocks.append(v.ColumnBlock(layout, m))
    return blocks


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kernels_match_numpy_bit_for_bit(seed: int) -> None:
    with np.errstate(invalid="ignore"):          # numpy's NaN -> int64 cast of a topic
        for block in _blocks(seed):
            assert _same(_kernels.ctr_matrix(block), v.ctr_matrix(block))
            assert _same(_kernels.fraud_matrix(block), v.fraud_matrix(block))
            assert _same(_kernels.shading_matrix(block), v.shading_matrix(block))


def test_kernels_take_a_row_view() -> None:
    """The reader passes ``block.head(1)`` (a view) for the fraud and shading rows."""
    block = _blocks(5, 1)[0]
    one = block.head(1)
    assert _same(_kernels.fraud_matrix(one), v.fraud_matrix(one))
    assert _same(_kernels.shading_matrix(one), v.shading_matrix(one))


def test_all_missing_row_gives_defaults() -> None:
    layout = _default_plan().layout
    block = v.ColumnBlock(layout, np.full((2, len(layout)), np.nan))
    x = _kernels.ctr_matrix(block)
    f = {name: i for i, name in enumerate(v.CTR_FEATURES)}
    assert np.allclose(x[:, f["user_ctr"]], v.PRIOR_CTR)
    assert (x[:, f["user_missing"]] == 1).all()

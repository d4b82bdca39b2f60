"""ONNX export of both CTR models: calibrated output, serving contract, parity.

Parity is checked on raw rows with NaNs and category codes never seen in training, as
the training pipelines do before registering: 99.9% of rows within 1e-5 of the native
prediction, all within 1e-3.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from models.calibration import fit_calibrator
from models.lgbm_onnx import (
    ParityError,
    lgbm_to_onnx,
    onnx_predict,
    parity,
    require_parity,
    stress_rows,
)

F = 12
CAT = {8: 99.0, 9: 17.0, 10: 7.0}      # column -> an unseen code


def _data(n: int = 20_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Counts, rates and small categorical codes, float32 like ctr_matrix."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, F), dtype=np.float32)
    x[:, :4] = rng.poisson(30, (n, 4))                     # counts
    x[:, 4:8] = rng.beta(2, 80, (n, 4))                    # rates
    x[:, 8] = rng.integers(0, 24, n)                       # hour
    x[:, 9] = rng.integers(0, 8, n)                        # topic
    x[:, 10] = rng.integers(0, 4, n)                       # format
    x[:, 11] = rng.integers(0, 2, n)                       # flag
    logit = -4 + 30 * (x[:, 4] - 0.024) + 0.4 * (x[:, 9] == 3) + 0.3 * np.cos(x[:, 8] / 4)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float64)
    return x, y


@pytest.fixture(scope="module")
def lgbm_model() -> tuple[object, object]:
    import lightgbm as lgb

    x, y = _data()
    params = {"objective": "binary", "num_leaves": 15, "min_data_in_leaf": 50, "seed": 1,
              "num_threads": 1, "verbose": -1, "deterministic": True}
    booster = lgb.train(params, lgb.Dataset(x[:15_000], y[:15_000]), num_boost_round=80)
    cal = fit_calibrator(np.asarray(booster.predict(x[15_000:])), y[15_000:], "isotonic")
    return booster, cal


def test_lightgbm_export_is_calibrated_and_keeps_the_contract(lgbm_model: tuple) -> None:
    booster, cal = lgbm_model
    model = lgbm_to_onnx(booster, F, input_name="ctr_features", output_name="pctr",
                         calibrator=cal)
    assert [i.name for i in model.graph.input] == ["ctr_features"]
    assert [o.name for o in model.graph.output] == ["pctr"]
    out_type = model.graph.output[0].type.tensor_type
    assert out_type.elem_type == onnx.TensorProto.FLOAT and len(out_type.shape.dim) == 1
    x, _ = _data(3_000, seed=5)
    rows = np.vstack([x, stress_rows(x, categorical=CAT)])
    native = cal.predict(np.asarray(booster.predict(rows)))
    result = parity(native, onnx_predict(model, rows))
    assert result.ok, result
    assert result.share_within_tol == 1.0 and result.max_abs_diff < 1e-5
    for n in (1, 7):                                       # dynamic batch axis
        assert onnx_predict(model, rows[:n]).shape == (n,)


def test_uncalibrated_export_equals_the_booster(lgbm_model: tuple) -> None:
    booster, _ = lgbm_model
    model = lgbm_to_onnx(booster, F, input_name="ctr_features", output_name="pctr")
    x, _ = _data(2_000, seed=6)
    rows = stress_rows(x, categorical=CAT, nan_share=0.2)
    assert parity(np.asarray(booster.predict(rows)), onnx_predict(model, rows)).ok


def test_parity_contract_is_enforced() -> None:
    native = np.full(10_000, 0.02)
    near = native + 5e-6
    assert parity(native, near).ok
    off = near.copy()
    off[:20] += 1e-4                                       # 0.2% of rows beyond 1e-5
    with pytest.raises(ParityError, match="within"):
        require_parity(parity(native, off), "test")
    far = near.copy()
    far[0] += 2e-3                                         # one row beyond 1e-3
    with pytest.raises(ParityError):
        require_parity(parity(native, far), "test")
    nan = near.copy()
    nan[0] = np.nan
    assert not parity(native, nan).ok


@pytest.fixture(scope="module")
def deep_model() -> tuple[object, object, np.ndarray]:
    from models.deep_ctr import DCNConfig, DCNv2, DeepTrainConfig, InputSpec, fit, predict

    x, y = _data(12_000, seed=2)
    x = np.hstack([x, np.random.default_rng(2).integers(0, 50, (len(x), 1)).astype(np.float32)])
    spec = InputSpec.fit(x[:8_000], vocab_cols=[8, 9, 10], code_cols={12: 50})
    model = DCNv2(spec, DCNConfig(deep_layers=(32,)))
    fit(model, x[:8_000], y[:8_000], x_val=x[8_000:10_000], y_val=y[8_000:10_000],
        cfg=DeepTrainConfig(epochs=2, batch_size=512))
    cal = fit_calibrator(predict(model, x[10_000:]), y[10_000:], "platt")
    return model, cal, x


def test_deep_export_parity_with_nans_and_unseen_categories(deep_model: tuple) -> None:
    from models.deep_ctr import deep_to_onnx, predict

    model, cal, x = deep_model
    proto = deep_to_onnx(model, input_name="ctr_features", output_name="pctr", calibrator=cal)
    assert [i.name for i in proto.graph.input] == ["ctr_features"]
    assert [o.name for o in proto.graph.output] == ["pctr"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    rows = np.vstack([x[:2_000], stress_rows(x[:2_000], categorical={**CAT, 12: 4000.0})])
    rows[:50, 12] = -3.0                                   # codes out of range -> code 0
    result = parity(cal.predict(predict(model, rows)), onnx_predict(proto, rows))
    assert result.ok, result
    for n in (1, 333):
        assert onnx_predict(proto, rows[:n]).shape == (n,)


def test_unseen_and_missing_categories_share_the_unknown_embedding(deep_model: tuple) -> None:
    from models.deep_ctr import predict

    model, _, x = deep_model
    a, b = x[:100].copy(), x[:100].copy()
    a[:, 9] = 17.0                                         # topic never seen
    b[:, 9] = np.nan
    assert np.allclose(predict(model, a), predict(model, b))
    c = x[:100].copy()
    c[:, 12] = 10_000.0                                    # code beyond the cardinality
    d = x[:100].copy()
    d[:, 12] = 0.0
    assert np.allclose(predict(model, c), predict(model, d))


def test_input_spec_refuses_overlapping_roles() -> None:
    from models.deep_ctr import InputSpec

    with pytest.raises(ValueError, match="both"):
        InputSpec.fit(np.zeros((4, 3), np.float32), vocab_cols=[1], code_cols={1: 5})

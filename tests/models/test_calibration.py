"""Calibrators: fitting, the ONNX nodes that carry them, and ECE."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from models.calibration import (
    Calibrator,
    append_calibration,
    expected_calibration_error,
    fit_calibrator,
)
from models.lgbm_onnx import onnx_predict


def _miscalibrated(n: int = 60_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores whose true probability is sigmoid(0.7 * logit(p) - 0.6): over-confident."""
    rng = np.random.default_rng(seed)
    s = rng.normal(-3.5, 1.0, n)
    p = 1 / (1 + np.exp(-s))
    true = 1 / (1 + np.exp(-(0.7 * s - 0.6)))
    y = (rng.random(n) < true).astype(float)
    return p, y, true


def _identity_graph() -> onnx.ModelProto:
    """A graph whose output is its input probability (N,)."""
    node = helper.make_node("Identity", ["p_in"], ["prob"])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("p_in", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [None])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("method", ["platt", "temperature", "isotonic"])
def test_calibration_repairs_an_overconfident_score(method: str) -> None:
    p, y, true = _miscalibrated()
    cal = fit_calibrator(p[:40_000], y[:40_000], method)
    q = cal.predict(p[40_000:])
    before = np.abs(p[40_000:] - true[40_000:]).mean()
    after = np.abs(q - true[40_000:]).mean()
    # Temperature has no intercept, so it can only partly undo the shift.
    assert after < (0.8 if method == "temperature" else 0.5) * before
    if method != "temperature":
        assert abs(q.sum() / true[40_000:].sum() - 1) < 0.05
    # Monotone: the ranking (hence the AUC) is kept.
    order = np.argsort(p[40_000:])
    assert np.all(np.diff(q[order]) >= -1e-7)


def test_platt_recovers_the_generating_map() -> None:
    p, y, _ = _miscalibrated(200_000, seed=1)
    cal = fit_calibrator(p, y, "platt")
    assert cal.a == pytest.approx(0.7, abs=0.05)
    assert cal.b == pytest.approx(-0.6, abs=0.2)


def test_isotonic_knots_are_strictly_increasing_and_probabilities() -> None:
    p, y, _ = _miscalibrated()
    cal = fit_calibrator(p, y, "isotonic")
    assert len(cal.knots_x) >= 3
    assert np.all(np.diff(cal.knots_x) > 0) and np.all(np.diff(cal.knots_y) > 0)
    assert np.all((cal.knots_y > 0) & (cal.knots_y < 1))
    # Flat outside the knots.
    lo, hi = cal.predict(np.array([1e-9, 1 - 1e-9]))
    assert lo == pytest.approx(cal.knots_y[0], rel=1e-5)
    assert hi == pytest.approx(cal.knots_y[-1], rel=1e-5)


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_onnx_nodes_compute_what_predict_computes(method: str) -> None:
    p, y, _ = _miscalibrated()
    cal = fit_calibrator(p, y, method)
    model = append_calibration(_identity_graph(), cal, prob_output="prob", output_name="pctr")
    assert [o.name for o in model.graph.output] == ["pctr"]
    probe = np.concatenate([p[:5000], [0.0, 1.0, 1e-12, 0.5, np.nan]]).astype(np.float32)
    out = onnx_predict(model, probe)
    ref = cal.predict(probe)
    finite = ~np.isnan(probe)
    assert np.max(np.abs(out[finite] - ref[finite])) < 1e-6


def test_append_renames_an_output_that_already_has_the_target_name() -> None:
    cal = Calibrator(method="platt", a=1.0, b=0.5)
    model = _identity_graph()
    model.graph.node[0].output[0] = "pctr"
    model.graph.output[0].name = "pctr"
    model = append_calibration(model, cal, output_name="pctr")
    out = onnx_predict(model, np.array([0.1, 0.2], dtype=np.float32))
    assert np.allclose(out, cal.predict(np.array([0.1, 0.2])), atol=1e-7)


def test_calibrator_round_trips_through_json() -> None:
    p, y, _ = _miscalibrated(20_000)
    cal = fit_calibrator(p, y, "isotonic")
    again = Calibrator.from_dict(cal.to_dict())
    assert np.array_equal(again.predict(p), cal.predict(p))


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown calibration method"):
        fit_calibrator(np.array([0.1]), np.array([1.0]), "beta")
    with pytest.raises(ValueError, match="equal length"):
        fit_calibrator(np.array([0.1, 0.2]), np.array([1.0]), "platt")
    with pytest.raises(ValueError, match="empty"):
        fit_calibrator(np.array([]), np.array([]), "isotonic")
    with pytest.raises(ValueError, match="not produced"):
        append_calibration(_identity_graph(), Calibrator("platt"), prob_output="nope")


def test_ece_is_zero_for_the_truth_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(0.0, 0.1, 200_000)
    y = (rng.random(len(p)) < p).astype(float)
    assert expected_calibration_error(y, p) < 0.004   # 20 bins of 10k rows: noise ~0.002
    assert expected_calibration_error(y, p * 1.5) > 0.02

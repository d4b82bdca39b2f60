"""Probability calibration that travels inside the ONNX graph.

A calibrator is fitted on a held-out calibration split (never the training rows: a
model's scores on its own training rows are over-confident) and appended to an ONNX
graph whose output is a probability, so the exported ``pctr`` is calibrated and every
backend (in-process ONNX Runtime, Triton, BentoML) serves the same numbers with no
post-processing code to keep in sync.

Two maps, both monotone in the raw score (so they keep the ranking, hence the AUC):

* ``isotonic`` — isotonic regression of the label on ``logit(p)``, fitted on
  equal-count bins (so no block rests on a handful of rows), then turned into a
  piecewise-linear interpolation through the centres of the pooled blocks (strictly
  increasing, unlike the usual step function, so no ties are created). Outside the
  first/last knot the value is held flat.
* ``platt`` — ``sigmoid(a * logit(p) + b)``; ``temperature`` is Platt with ``b = 0``.

:meth:`Calibrator.predict` is the numpy twin of the appended ONNX nodes (same ops, in
float32) for parity checks and native predictions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CalibrationMethod = Literal["isotonic", "platt", "temperature"]
METHODS: tuple[str, ...] = ("isotonic", "platt", "temperature")

# Probabilities are clipped before the logit: float32 logit(1e-7) is finite and no
# CTR model is meaningfully below one click in ten million impressions.
EPS = 1e-7


@dataclass(frozen=True)
class Calibrator:
    """A fitted monotone map from raw probability to calibrated probability."""

    method: str
    knots_x: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (M,) logit, increasing
    knots_y: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (M,) probability
    a: float = 1.0
    b: float = 0.0

    def predict(self, p: np.ndarray) -> np.ndarray:
        """Calibrated probabilities; float32 arithmetic, as the ONNX nodes compute it."""
        p32 = np.clip(np.asarray(p, dtype=np.float32), np.float32(EPS), np.float32(1 - EPS))
        s = np.log(p32) - np.log(np.float32(1.0) - p32)                 # (N,) logit
        if self.method == "isotonic":
            lo, hi, slope, y0 = self._segments()
            seg = np.maximum(np.minimum(s[:, None], hi[None, :]), lo[None, :]) - lo[None, :]
            return (seg @ slope + y0).astype(np.float32)                # (N,)
        z = s * np.float32(self.a) + np.float32(self.b)
        return (np.float32(1.0) / (np.float32(1.0) + np.exp(-z))).astype(np.float32)

    def _segments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.float32]:
        """(lo, hi, slope) per segment and the value at the first knot, float32.

        f(s) = y0 + sum_k slope_k * (clip(s, lo_k, hi_k) - lo_k) is the linear
        interpolation through the knots, flat outside them: a Clip and a MatMul in ONNX.
        """
        x = self.knots_x.astype(np.float64)
        y = self.knots_y.astype(np.float64)
        if len(x) == 1:                                  # a constant map: one flat segment
            x, y = np.array([x[0], x[0] + 1.0]), np.array([y[0], y[0]])
        slope = np.diff(y) / np.diff(x)
        return (x[:-1].astype(np.float32), x[1:].astype(np.float32), slope.astype(np.float32),
                np.float32(y[0]))

    def to_dict(self) -> dict[str, object]:
        return {"method": self.method, "knots_x": self.knots_x.tolist(),
                "knots_y": self.knots_y.tolist(), "a": self.a, "b": self.b}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Calibrator:
        return cls(method=str(d["method"]),
                   knots_x=np.asarray(d.get("knots_x", []), dtype=np.float64),
                   knots_y=np.asarray(d.get("knots_y", []), dtype=np.float64),
                   a=float(d.get("a", 1.0)), b=float(d.get("b", 0.0)))  # type: ignore[arg-type]


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def _check(p: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(f"p and y must be 1-d of equal length, got {p.shape} and {y.shape}")
    if len(p) == 0:
        raise ValueError("cannot fit a calibrator on an empty calibration split")
    if w is not None and w.shape != p.shape:
        raise ValueError(f"weights shape {w.shape} differs from p {p.shape}")
    return np.ones_like(p, dtype=np.float64) if w is None else np.asarray(w, dtype=np.float64)


def fit_isotonic(p: np.ndarray, y: np.ndarray, w: np.ndarray | None = None, *,
                 n_bins: int = 200, min_positives_per_bin: float = 20.0) -> Calibrator:
    """Isotonic regression on equal-count bins of logit(p), as a strictly increasing map.

    ``n_bins`` caps the resolution; bins are widened until each holds about
    ``min_positives_per_bin`` positives (with 2% CTR, 20 clicks is ~1,000 rows), so the
    extreme blocks are not estimated from three rows.
    """
    from sklearn.isotonic import IsotonicRegression

    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    w = _check(p, y, w)
    s = _logit(p)
    order = np.argsort(s, kind="stable")
    s, y, w = s[order], y[order], w[order]
    positives = float((y * w).sum())
    bins = int(max(1, min(n_bins, positives / max(min_positives_per_bin, 1e-9), len(s))))
    # Equal-weight bins over the sorted scores.
    edges = np.searchsorted(np.cumsum(w), np.linspace(0, w.sum(), bins + 1)[1:-1], side="right")
    groups = np.split(np.arange(len(s)), edges)
    groups = [g for g in groups if len(g)]
    bw = np.array([w[g].sum() for g in groups])
    bx = np.array([np.average(s[g], weights=w[g]) for g in groups])
    by = np.array([np.average(y[g], weights=w[g]) for g in groups])
    fitted = IsotonicRegression(increasing=True).fit(bx, by, sample_weight=bw).predict(bx)
    # Pool consecutive bins with equal fitted values into blocks; one knot per block at
    # its weighted centre, so the interpolation is strictly increasing.
    new_block = np.r_[True, np.diff(fitted) > 1e-12]
    block = np.cumsum(new_block) - 1
    n_blocks = int(block[-1]) + 1
    kw = np.bincount(block, weights=bw, minlength=n_blocks)
    kx = np.bincount(block, weights=bx * bw, minlength=n_blocks) / kw
    ky = np.bincount(block, weights=fitted * bw, minlength=n_blocks) / kw
    ky = np.clip(ky, EPS, 1 - EPS)
    return Calibrator(method="isotonic", knots_x=kx, knots_y=ky)


def fit_platt(p: np.ndarray, y: np.ndarray, w: np.ndarray | None = None, *,
              temperature: bool = False) -> Calibrator:
    """Weighted maximum likelihood for ``sigmoid(a * logit(p) + b)`` (``b = 0``: temperature)."""
    from scipy.optimize import minimize

    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    w = _check(p, y, w)
    s = _logit(p)
    w = w / w.sum()

    def nll(theta: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = theta[0], (0.0 if temperature else theta[1])
        z = a * s + b
        # log(1 + e^z) - y z, stably; gradient (sigmoid(z) - y) * [s, 1].
        loss = float(np.sum(w * (np.logaddexp(0.0, z) - y * z)))
        r = w * (1.0 / (1.0 + np.exp(-z)) - y)
        grad = np.array([np.sum(r * s)] + ([] if temperature else [np.sum(r)]))
        return loss, grad

    x0 = np.array([1.0] if temperature else [1.0, 0.0])
    res = minimize(nll, x0, jac=True, method="L-BFGS-B")
    if not res.success:
        raise RuntimeError(f"Platt scaling did not converge: {res.message}")
    a = float(res.x[0])
    b = 0.0 if temperature else float(res.x[1])
    return Calibrator(method="temperature" if temperature else "platt", a=a, b=b)


def fit_calibrator(p: np.ndarray, y: np.ndarray, method: str = "isotonic",
                   w: np.ndarray | None = None) -> Calibrator:
    """Fit ``method`` (isotonic | platt | temperature) on calibration-split scores."""
    if method == "isotonic":
        return fit_isotonic(p, y, w)
    if method in ("platt", "temperature"):
        return fit_platt(p, y, w, temperature=method == "temperature")
    raise ValueError(f"unknown calibration method {method!r}; known: {', '.join(METHODS)}")


def _const(graph: onnx.GraphProto, name: str, value: np.ndarray | np.floating | float) -> str:
    graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
    return name


def append_calibration(model: onnx.ModelProto, calibrator: Calibrator, *,
                       prob_output: str | None = None, output_name: str = "pctr",
                       prefix: str = "calib") -> onnx.ModelProto:
    """Append ``calibrator`` after ``prob_output`` (a (N,) probability); returns the model.

    The graph's outputs are replaced by one float32 (N,) output ``output_name``. The
    model is modified in place (and returned for chaining). ``prob_output`` defaults to
    the graph's single output.
    """
    graph = model.graph
    if prob_output is None:
        if len(graph.output) != 1:
            raise ValueError("graph has several outputs; name the probability in prob_output")
        prob_output = graph.output[0].name
    elif prob_output not in {o.name for o in graph.output} | {o for n in graph.node
                                                               for o in n.output}:
        raise ValueError(f"{prob_output!r} is not produced by the graph")
    src = prob_output
    if src == output_name:                      # free the name for the calibrated output
        src = f"{prefix}_raw"
        for node in graph.node:
            node.output[:] = [src if o == output_name else o for o in node.output]
            node.input[:] = [src if i == output_name else i for i in node.input]
    n = f"{prefix}_"
    lo_eps = _const(graph, n + "eps", EPS)
    hi_eps = _const(graph, n + "one_minus_eps", 1 - EPS)
    one = _const(graph, n + "one", 1.0)
    nodes = [
        # Max/Min rather than Clip, Reshape rather than Unsqueeze: these mean the same in
        # every opset, so the nodes fit whatever opset the host graph imports.
        helper.make_node("Max", [src, lo_eps], [n + "p_lo"]),
        helper.make_node("Min", [n + "p_lo", hi_eps], [n + "p"]),
        helper.make_node("Log", [n + "p"], [n + "log_p"]),
        helper.make_node("Sub", [one, n + "p"], [n + "q"]),
        helper.make_node("Log", [n + "q"], [n + "log_q"]),
        helper.make_node("Sub", [n + "log_p", n + "log_q"], [n + "logit"]),      # (N,)
    ]
    if calibrator.method == "isotonic":
        lo, hi, slope, y0 = calibrator._segments()
        shape = n + "column_shape"
        graph.initializer.append(numpy_helper.from_array(np.array([-1, 1], dtype=np.int64), shape))
        nodes += [
            helper.make_node("Reshape", [n + "logit", shape], [n + "col"]),        # (N, 1)
            helper.make_node("Min", [n + "col", _const(graph, n + "hi", hi)], [n + "min"]),
            helper.make_node("Max", [n + "min", _const(graph, n + "lo", lo)], [n + "clip"]),
            helper.make_node("Sub", [n + "clip", n + "lo"], [n + "seg"]),          # (N, M-1)
            helper.make_node("MatMul", [n + "seg", _const(graph, n + "slope", slope)],
                             [n + "rise"]),                                         # (N,)
            helper.make_node("Add", [n + "rise", _const(graph, n + "y0", y0)], [output_name]),
        ]
    elif calibrator.method in ("platt", "temperature"):
        nodes += [
            helper.make_node("Mul", [n + "logit", _const(graph, n + "a", calibrator.a)],
                             [n + "scaled"]),
            helper.make_node("Add", [n + "scaled", _const(graph, n + "b", calibrator.b)],
                             [n + "z"]),
            helper.make_node("Sigmoid", [n + "z"], [output_name]),
        ]
    else:
        raise ValueError(f"unknown calibration method {calibrator.method!r}")
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [None]))
    onnx.checker.check_model(model)
    return model


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 20) -> float:
    """ECE over equal-count bins of p: sum_b (n_b / n) |mean(y_b) - mean(p_b)|.

    Equal-count bins, because with a 1-2% CTR equal-width bins put nearly every row in
    the first bin.
    """
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if len(y) == 0:
        return float("nan")
    order = np.argsort(p, kind="stable")
    total = 0.0
    for idx in np.array_split(order, min(n_bins, len(y))):
        total += len(idx) * abs(float(y[idx].mean()) - float(p[idx].mean()))
    return total / len(y)


__all__ = ["EPS", "METHODS", "CalibrationMethod", "Calibrator", "append_calibration",
           "expected_calibration_error", "fit_calibrator", "fit_isotonic", "fit_platt"]

"""Bid-shading model: censored likelihood, recovery from censored data, ONNX parity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.shading import (
    CensoredData,
    Censoring,
    ShadingConfig,
    ShadingNet,
    censored_loglik,
    export_onnx,
    fit,
    onnx_landscape,
    parity,
    predict_landscape,
)
from models.shading_km import kaplan_meier, log_edges, turnbull
from models.shading_landscape import mixture_cdf

# ---------------------------------------------------------------------- synthetic market

N_TRAIN, N_VAL, N_TEST = 9000, 1500, 3000


def _market(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, 3) and the true landscape (n, 6) of a context-dependent 2-mixture."""
    x = np.column_stack([rng.normal(size=n), rng.normal(size=n),
                         rng.integers(0, 24, n)]).astype(np.float32)
    w_low = 1.0 / (1.0 + np.exp(-2.0 * x[:, 0]))          # weight of the cheap buyers
    mu_low = 0.0 + 0.4 * x[:, 1]
    land = np.column_stack([w_low, 1 - w_low, mu_low, np.full(n, 1.5),
                            np.full(n, 0.4), np.full(n, 0.3)])
    return x, land


def _censor(rng: np.random.Generator, land: np.ndarray) -> tuple[np.ndarray, ...]:
    """Draw C, bid randomly, observe it the way a first-price exchange reports it."""
    n = land.shape[0]
    low = rng.random(n) < land[:, 0]
    c = np.exp(np.where(low, land[:, 2] + land[:, 4] * rng.normal(size=n),
                        land[:, 3] + land[:, 5] * rng.normal(size=n)))
    b = np.exp(rng.uniform(-1.0, 2.5, n))
    won = b >= c
    report = rng.random(n) < 0.5
    kind = np.where(won, Censoring.LEFT, np.where(report, Censoring.EXACT, Censoring.RIGHT))
    lo = np.where(kind == Censoring.EXACT, c, np.where(kind == Censoring.RIGHT, b, 0.0))
    hi = np.where(won, b, 1.0)
    return kind.astype(np.int64), lo, hi, c


@pytest.fixture(scope="module")
def market() -> dict[str, object]:
    rng = np.random.default_rng(3)
    x, land = _market(rng, N_TRAIN + N_VAL + N_TEST)
    kind, lo, hi, c = _censor(rng, land)
    data = CensoredData(x, kind, lo, hi)
    train = data.take(slice(0, N_TRAIN))
    val = data.take(slice(N_TRAIN, N_TRAIN + N_VAL))
    test = data.take(slice(N_TRAIN + N_VAL, None))
    cfg = ShadingConfig(n_components=3, hidden=32, n_layers=2, max_epochs=25, patience=3,
                        batch_size=512)
    torch.set_num_threads(1)
    result = fit(train, val, cfg, hour_columns=(2,))
    return {"train": train, "test": test, "true": land[N_TRAIN + N_VAL:], "result": result}


# ---------------------------------------------------------------------- likelihood

def _random_params(n: int, m: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, m, generator=g, dtype=torch.float64)
    mu = torch.randn(n, m, generator=g, dtype=torch.float64)
    sigma = 0.3 + torch.rand(n, m, generator=g, dtype=torch.float64)
    return logits, mu, sigma


def test_censored_loglik_gradient_matches_finite_differences() -> None:
    logits, mu, sigma = _random_params(8, 3)
    kind = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    lo = torch.tensor([0.7, 0.0, 1.3, 0.5, 2.5, 0.0, 0.2, 3.0], dtype=torch.float64)
    hi = torch.tensor([1.0, 2.0, 1.0, 0.9, 1.0, 0.4, 1.0, 3.5], dtype=torch.float64)

    def f(lg: torch.Tensor, m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return censored_loglik(torch.log_softmax(lg, dim=1), m, s, kind, lo, hi)

    inputs = tuple(t.clone().requires_grad_(True) for t in (logits, mu, sigma))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


def test_censored_terms_are_consistent_probabilities() -> None:
    logits, mu, sigma = _random_params(5, 4, seed=1)
    log_w = torch.log_softmax(logits, dim=1)
    b = torch.tensor([0.3, 1.0, 2.0, 5.0, 0.05], dtype=torch.float64)
    one = torch.ones(5, dtype=torch.float64)

    def ll(code: int, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        return censored_loglik(log_w, mu, sigma, torch.full((5,), code), lo, hi)

    # A win and a loss at the same bid partition the outcomes: F(b) + (1 - F(b)) = 1.
    total = ll(Censoring.LEFT, one, b).exp() + ll(Censoring.RIGHT, b, one).exp()
    assert torch.allclose(total, one, atol=1e-12)
    # A narrow interval's probability is the density times its width.
    width = 1e-5
    interval = ll(Censoring.INTERVAL, b, b + width).exp()
    density = ll(Censoring.EXACT, b + width / 2, one).exp()
    assert torch.allclose(interval, density * width, rtol=1e-4)
    # Far upper tail: the interval form stays finite where a naive difference underflows.
    far = ll(Censoring.INTERVAL, torch.full((5,), 1e5, dtype=torch.float64),
             torch.full((5,), 2e5, dtype=torch.float64))
    assert torch.isfinite(far).all()


def test_training_step_decreases_the_nll() -> None:
    rng = np.random.default_rng(0)
    x, land = _market(rng, 2000)
    kind, lo, hi, _ = _censor(rng, land)
    data = CensoredData(x, kind, lo, hi)
    cfg = ShadingConfig(n_components=2, hidden=16, n_layers=1, max_epochs=3, patience=5)
    result = fit(data.take(slice(0, 1600)), data.take(slice(1600, None)), cfg)
    first, last = result.history[0][0], min(h[0] for h in result.history)
    assert math.isfinite(result.val_nll)
    assert last <= first


# ---------------------------------------------------------------------- recovery

def test_recovers_a_known_mixture_better_than_kaplan_meier(market: dict[str, object]) -> None:
    train, test = market["train"], market["test"]
    assert isinstance(train, CensoredData) and isinstance(test, CensoredData)
    result = market["result"]
    land = predict_landscape(result.model, test.x)                  # type: ignore[attr-defined]
    true = market["true"]
    assert isinstance(true, np.ndarray)
    km = turnbull(train.kind, train.lo, train.hi, log_edges(0.05, 60.0, 120))
    prices = np.geomspace(0.3, 12.0, 40)
    grid = np.broadcast_to(prices, (len(test), len(prices)))
    err_model = np.abs(mixture_cdf(land)(grid) - mixture_cdf(true)(grid)).mean()
    err_km = np.abs(km.cdf(grid) - mixture_cdf(true)(grid)).mean()
    assert err_model < 0.03, err_model
    assert err_model < 0.5 * err_km, (err_model, err_km)


def test_turnbull_is_kaplan_meier_on_right_censored_data() -> None:
    rng = np.random.default_rng(5)
    z = rng.integers(0, 60, 3000)
    b = rng.integers(1, 80, 3000)
    obs = z < b
    km = kaplan_meier(z, obs, b, max_price=90)
    kind = np.where(obs, Censoring.INTERVAL, Censoring.RIGHT)
    lo = np.where(obs, z - 0.5, b - 0.5)
    hi = np.where(obs, z + 0.5, 1.0)
    tb = turnbull(kind, lo, hi, np.arange(92) - 0.5, iters=20000, tol=1e-13)
    assert np.allclose(km.pmf, tb.pmf, atol=1e-8)
    assert np.isclose(km.loglik(kind, lo, hi).mean(), tb.loglik(kind, lo, hi).mean())


# ---------------------------------------------------------------------- ONNX

def test_onnx_export_matches_torch_on_held_out_rows(market: dict[str, object]) -> None:
    model = market["result"].model                                  # type: ignore[attr-defined]
    assert isinstance(model, ShadingNet)
    test = market["test"]
    assert isinstance(test, CensoredData)
    proto = export_onnx(model)
    assert [i.name for i in proto.graph.input] == ["shading_features"]
    assert [o.name for o in proto.graph.output] == ["landscape"]
    check = parity(model, proto, test.x)
    assert check["within_1e-5"] >= 0.999, check
    assert check["within_1e-3"] == 1.0, check
    for rows in (1, 7):                                            # dynamic batch axis
        out = onnx_landscape(proto, test.x[:rows])
        assert out.shape == (rows, 3 * model.m)
    land = onnx_landscape(proto, test.x[:50])
    m = model.m
    assert np.allclose(land[:, :m].sum(axis=1), 1.0, atol=1e-5)    # softmaxed weights
    assert (land[:, 2 * m:] >= model.min_sigma).all()

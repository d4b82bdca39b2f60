"""Bid-shading pipeline: censoring rules, simulator truth, DRSA, end to end."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from adplatform.config import Settings
from features.context import RequestContext
from models.shading import Censoring
from models.shading_landscape import mixture_cdf
from serving.base import AuctionScores
from training.loaders import DatasetUnavailable
from training.loaders.datasets import require
from training.shading import censoring
from training.shading_eval import constant_bids, realised, true_landscape, tune_constant

L, E, R = Censoring.LEFT, Censoring.EXACT, Censoring.RIGHT


def test_censoring_follows_the_exchange_rules() -> None:
    nan = np.nan
    #        win at 2 | report 3.01 | report floor+.01 | loss at 2 | loss under floor | C=0, no floor
    bid = np.array([2.0, 2.0, 0.5, 2.0, 0.5, 0.5])
    won = np.array([True, False, False, False, False, False])
    mbw = np.array([nan, 3.01, 1.01, nan, nan, 0.01])
    floor = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    kind, lo, hi, keep = censoring(bid, won, mbw, floor)
    assert keep.tolist() == [True, True, True, True, False, True]
    assert kind[keep].tolist() == [L, E, L, R, L]
    assert hi[0] == 2.0                                   # C <= our winning bid
    assert np.isclose(lo[1], 3.0)                         # exact: min_bid_to_win - 0.01
    assert hi[2] == 1.0                                   # only C <= floor is known
    assert lo[3] == 2.0                                   # C > our losing bid
    assert hi[5] == pytest.approx(0.01)                   # C <= one tick, not C <= 0


def test_true_landscape_matches_the_simulators_sampler() -> None:
    from simulator.competition import CompetitionModel

    comp = CompetitionModel.build(np.random.default_rng(1), n_publishers=4,
                                  no_competition_rate=0.05, user_coupling=0.2)
    n = 60_000
    rng = np.random.default_rng(2)
    ctx = {"publisher": np.full(n, 2), "size": np.full(n, 4), "device": np.full(n, 0),
           "local_hour": np.full(n, 20), "quality": np.full(n, 0.5)}
    draws = comp.sample(rng, **ctx)
    land = true_landscape(comp, **{k: v[:1] for k, v in ctx.items()})
    prices = np.array([0.01, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0])
    want = mixture_cdf(land)(prices[None, :])[0]
    got = (draws[:, None] <= prices[None, :]).mean(axis=0)
    assert np.abs(want - got).max() < 0.01, (want, got)


def test_realised_surplus_and_the_constant_baseline() -> None:
    v = np.array([4.0, 4.0, 1.0, 0.5])
    f = np.array([1.0, 1.0, 1.0, 1.0])
    c = np.array([1.5, 3.5, 0.2, 0.1])
    bids = constant_bids(v, f, 0.5)
    assert bids.tolist() == [2.0, 2.0, 0.0, 0.0]          # no bid unless the value clears
    res = realised(v, bids, c, f)
    assert res == {"surplus": pytest.approx(2.0 / 1000), "win_rate": 0.25,
                   "spend": pytest.approx(2.0 / 1000)}
    from training.shading_eval import TruthRows

    alpha = tune_constant(TruthRows(np.arange(4).astype(object), v, f, c))
    assert 0.35 <= alpha <= 0.5                           # wins the first, 3.5 too dear


@pytest.mark.realdata
def test_drsa_model_beats_kaplan_meier_on_test_loglik() -> None:
    try:
        require("ipinyou_2259_bid_landscape_drsa")
    except DatasetUnavailable as exc:
        pytest.skip(str(exc))
    import torch

    from training.shading_eval import evaluate_drsa

    torch.set_num_threads(1)
    res = evaluate_drsa()
    assert res["n_test"] == 4171
    assert res["loglik_model"] > res["loglik_km"] + 0.02, res


@pytest.mark.slow
def test_train_shading_end_to_end(tmp_path: Path) -> None:
    from features.ops import materialize
    from mlops.registry import resolve
    from models.shading_landscape import ShadingPricer
    from simulator import simulate
    from training.shading import train_shading

    settings = Settings(home=tmp_path / "ws")
    simulate(days=4, seed=11, workspace=settings.workspace.ensure(), requests_per_day=8000)
    materialize(settings)
    _check_hourly_join(settings)
    result = train_shading(settings)
    assert result.alias == "champion"
    m = result.metrics
    assert m["onnx_within_1e-5"] >= 0.999 and m["onnx_within_1e-3"] == 1.0
    assert m["test_loglik_model"] > m["test_loglik_km"]
    ev = result.evaluation
    for key in ("surplus", "oracle_surplus", "best_constant_surplus", "km_surplus",
                "truthful_surplus", "win_rate"):
        assert key in ev
    assert ev["oracle_surplus"] >= ev["surplus"] * 0.98
    assert ev["surplus"] > ev["truthful_surplus"] == 0.0
    model = resolve(settings, "shading")
    assert model.tags["feature_service"] == "shading_v1"
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].name == "shading_features"
    assert sess.get_outputs()[0].name == "landscape"
    x = np.zeros((1, sess.get_inputs()[0].shape[1]), dtype=np.float32)
    land = sess.run(None, {"shading_features": x})[0]
    assert land.shape[0] == 1 and land.shape[1] % 3 == 0
    assert np.isfinite(mixture_cdf(land)(np.array([[1.0]]))).all()
    assert ShadingPricer().price(np.array([50.0]), _ctx(0.5), _scores(land), first_price=True
                                 )[0] >= 0.5


def _ctx(floor: float) -> RequestContext:
    return RequestContext(ts=datetime(2026, 1, 5, tzinfo=UTC), request_id="r", imp_id="1",
                          bidfloor=floor)


def _scores(land: np.ndarray) -> AuctionScores:
    return AuctionScores(pctr=np.zeros(1, dtype=np.float32), shading=land)


def _check_hourly_join(settings: Settings) -> None:
    """The (publisher, hour) join equals Feast's per-auction point-in-time join."""
    from features.store import open_store
    from training.datasets import ImpressionFrame, with_features
    from training.shading import auction_frame, joined_features

    store = open_store(settings)
    frame = auction_frame(settings).iloc[::7].reset_index(drop=True)
    ours = joined_features(store, frame).sort_values("request_id")
    feast = with_features(store, ImpressionFrame(frame), "shading_v1").sort_values("request_id")
    for col in ("pub_requests_7d", "pub_bids_7d", "pub_wins_7d", "pub_mean_paid_7d"):
        a = ours[col].to_numpy(dtype=np.float64, na_value=np.nan)
        b = feast[col].to_numpy(dtype=np.float64, na_value=np.nan)
        assert np.array_equal(np.isnan(a), np.isnan(b)), col
        assert np.allclose(a[~np.isnan(a)], b[~np.isnan(b)]), col

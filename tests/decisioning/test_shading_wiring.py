"""The decision service prices with the bid-shading model when one is served.

``mlops.serve.build_pricer`` picks the pricer from what the backend serves; the engine
then bids the landscape's argmax of (value - b) * P(win | b) in first-price auctions.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from decisioning import DecisionEngine, MemorySink, parse_request
from decisioning.pricing import ShadeFactorPricer
from mlops.serve import build_pricer
from models.shading_landscape import ShadingPricer, mixture_cdf
from serving.base import AuctionInputs, AuctionScores
from serving.errors import BackendUnavailable

from .conftest import EngineFactory, FixedBackend

# One log-normal component: the highest competing bid C has median e^0.5 ~ 1.65 CPM.
LANDSCAPE = np.array([[1.0, 0.5, 0.6]], dtype=np.float32)            # (1, 3M), M = 1


class ShadingBackend(FixedBackend):
    """A CTR model plus a shading model returning a fixed landscape for every auction."""

    def __init__(self, landscape: np.ndarray | None = LANDSCAPE, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.landscape = landscape

    def score(self, inputs: AuctionInputs) -> AuctionScores:
        scores = super().score(inputs)
        return AuctionScores(pctr=scores.pctr, fraud=scores.fraud, shading=self.landscape,
                             versions={"ctr": "3", "shading": "2"})

    def versions(self) -> dict[str, str]:
        return {"ctr": "3", "shading": "2"}


class StartingBackend(FixedBackend):
    def versions(self) -> dict[str, str]:
        raise BackendUnavailable("triton is still loading its models")


def test_pricer_follows_what_the_backend_serves() -> None:
    from decisioning import EngineConfig

    cfg = EngineConfig(seed=1, shade_factor=0.6)
    plain = build_pricer(FixedBackend(), cfg)
    assert isinstance(plain, ShadeFactorPricer) and plain.policy == "shade_factor_0.6"
    model = build_pricer(ShadingBackend(), cfg)
    assert isinstance(model, ShadingPricer) and model.policy == "shading_model"
    assert isinstance(model.fallback, ShadeFactorPricer)
    assert model.fallback.policy == "shade_factor_0.6"
    # A remote server that cannot say yet: the model pricer, which falls back per auction.
    assert isinstance(build_pricer(StartingBackend(), cfg), ShadingPricer)


def _banner(floor: float) -> object:
    return parse_request(json.dumps({"id": "r1", "at": 1, "imp": [
        {"id": "1", "bidfloor": floor, "banner": {"w": 300, "h": 250}}]}))


@pytest.mark.parametrize("floor", [0.03, 3.0])
def test_engine_bids_the_landscape_argmax(make_engine: EngineFactory, sink: MemorySink,
                                          floor: float) -> None:
    backend = ShadingBackend()
    engine: DecisionEngine = make_engine(models=backend)
    engine.pricer = build_pricer(backend, engine.config)
    resp = engine.decide(_banner(floor), engine.clock.monotonic())  # type: ignore[arg-type]
    assert resp is not None
    (bid,) = resp.bids()
    (rec,) = sink.records
    value = rec.value
    assert value == pytest.approx(8.0)              # pCTR 0.01 x CPC 0.8 x 1000
    # Brute force over a fine grid of bids in [floor, value].
    grid = np.linspace(floor, value, 200_001)
    surplus = (value - grid) * mixture_cdf(LANDSCAPE.astype(np.float64))(grid[None, :])[0]
    best = grid[surplus.argmax()]
    assert bid.price >= floor
    assert bid.price == pytest.approx(best, abs=0.01)
    assert bid.price != pytest.approx(0.7 * value)  # not the constant factor
    assert rec.policy == "shading_model" and rec.model_version == "ctr=3,shading=2"


def test_unusable_landscape_falls_back_to_the_constant_factor(make_engine: EngineFactory,
                                                              sink: MemorySink) -> None:
    backend = ShadingBackend(landscape=np.array([[1.0, np.nan, 0.6]], np.float32))
    engine: DecisionEngine = make_engine(models=backend)
    pricer = build_pricer(backend, engine.config)
    engine.pricer = pricer
    resp = engine.decide(_banner(0.03), engine.clock.monotonic())  # type: ignore[arg-type]
    assert resp is not None
    (bid,) = resp.bids()
    assert bid.price == pytest.approx(0.7 * 8.0)
    assert isinstance(pricer, ShadingPricer) and pricer.fallbacks == 1
    # The log names the policy that priced the bid, not the one configured.
    assert sink.records[-1].policy == "shade_factor_0.7"

"""The engine's hot path with 20 candidates out of 2,200 campaigns: indexed selection,
one featurizer call for all 20, a bid every time. Latency itself is measured by
``make bench`` (``python -m bench decision``), never asserted in a test.
"""

from __future__ import annotations

import json

from decisioning import (
    CampaignFile,
    DecisionEngine,
    EngineConfig,
    IndexedCampaignStore,
    MemorySink,
    parse_request,
)

from .conftest import FixedBackend, ZeroFeaturizer, _campaign, _creative


def test_engine_decides_20_of_2200_candidates_in_one_featurizer_call() -> None:
    doc = {"version": 1, "campaigns": [
        _campaign(f"c{i:03d}", [_creative(f"cr{i:03d}", "banner", 300, 250)], cpc=0.5 + i / 100)
        for i in range(200)] + [
        _campaign(f"o{i:03d}", [_creative(f"or{i:03d}", "banner", 728, 90)]) for i in range(2000)]}
    featurizer = ZeroFeaturizer()
    engine = DecisionEngine(featurizer=featurizer, models=FixedBackend(),
                            campaigns=IndexedCampaignStore(CampaignFile.model_validate(doc)),
                            sink=MemorySink(), config=EngineConfig())
    req = parse_request(json.dumps({
        "id": "lat", "at": 1, "imp": [{"id": "1", "bidfloor": 0.1,
                                       "banner": {"w": 300, "h": 250}}],
        "site": {"domain": "news.example"}, "device": {"ua": "UA", "ip": "10.0.0.1"},
        "bcat": ["IAB25"], "badv": ["blocked.example"]}))
    for _ in range(50):
        resp = engine.decide(req, engine.clock.monotonic())
        assert resp is not None
        (bid,) = resp.bids()
        assert bid.cid == "c199"                      # the highest CPC among the 300x250s
    assert len(featurizer.calls) == 50
    assert all(len(ads) == 20 for _, ads in featurizer.calls)

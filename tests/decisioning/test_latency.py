"""A coarse latency guard: 20 candidates decided well inside the 1 ms engine budget.

The bound is on the median (robust on a shared CI machine); the benchmark numbers for
p99 come from a quiet machine, not from this test.
"""

from __future__ import annotations

import json
import statistics
import time

from decisioning import (
    CampaignFile,
    DecisionEngine,
    EngineConfig,
    IndexedCampaignStore,
    MemorySink,
    parse_request,
)

from .conftest import FixedBackend, ZeroFeaturizer, _campaign, _creative


def test_engine_median_latency_with_20_candidates() -> None:
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
    times = []
    for _ in range(500):
        t = time.perf_counter()
        assert engine.decide(req, engine.clock.monotonic()) is not None
        times.append(time.perf_counter() - t)
    assert len(featurizer.calls[-1][1]) == 20
    assert statistics.median(times) < 1e-3, f"median {statistics.median(times) * 1e3:.2f} ms"

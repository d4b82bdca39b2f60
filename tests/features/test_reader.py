"""The online reader returns what Feast's get_online_features returns, as arrays."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from adplatform.config import Settings
from adplatform.eventlog import read_events
from features import AdRef, RequestContext, StoreUnavailable
from features.reader import OnlineReader, ReaderConfig
from features.repo import VIEWS
from features.store import open_store


@pytest.fixture(scope="module")
def reader_env(trained_workspace: Settings) -> tuple[Settings, dict[str, list[str]]]:
    events = trained_workspace.workspace.events
    imp = read_events(events, "impressions").merge(
        read_events(events, "requests")[["request_id", "ip", "device_id"]], on="request_id")

    def sample(col: str, n: int) -> list[str]:
        return [k for k in imp[col].drop_duplicates().head(n) if k] + [f"never-seen-{col}"]

    keys = {"user_stats": sample("user_id", 50), "ad_stats": sample("creative_id", 20),
            "campaign_stats": sample("campaign_id", 10),
            "publisher_stats": sample("publisher_id", 10), "ip_stats": sample("ip", 30),
            "device_stats": sample("device_id", 30)}
    return trained_workspace, keys


@pytest.mark.parametrize("cache", [0, 1000])
def test_reader_equals_get_online_features(reader_env: tuple, cache: int) -> None:  # type: ignore[type-arg]
    settings, keys = reader_env
    store = open_store(settings)
    reader = OnlineReader(store, ReaderConfig(cache_size=cache))
    for view, _, join_key, fields in VIEWS:
        for _ in range(2):  # second pass is served from the cache when enabled
            ours = reader.read(view, keys[view])
            theirs = store.get_online_features(
                features=[f"{view}:{f}" for f in fields],
                entity_rows=[{join_key: k} for k in keys[view]]).to_dict()
            expected = np.array([[np.nan if theirs[f][i] is None else theirs[f][i]
                                  for f in fields] for i in range(len(keys[view]))], dtype=float)
            np.testing.assert_array_equal(ours, expected)
        assert np.isnan(ours[-1]).all(), "an unknown entity reads as missing, not an error"
    if cache:
        assert reader.cache_stats.hits > 0


def test_build_gives_one_row_per_candidate(reader_env: tuple) -> None:
    settings, keys = reader_env
    users, ads, pubs = keys["user_stats"], keys["ad_stats"], keys["publisher_stats"]
    reader = OnlineReader(open_store(settings))
    ctx = RequestContext(ts=datetime(2026, 1, 10, 12, tzinfo=UTC), request_id="r", imp_id="1",
                         user_id=users[0], publisher_id=pubs[0], format="banner", w=300, h=250)
    inputs = reader.build(ctx, [AdRef("c", a, 1) for a in ads])
    assert inputs.ctr.shape[0] == len(ads) and inputs.ctr.dtype == np.float32
    assert not np.isnan(inputs.ctr).any()
    assert inputs.fraud is not None and inputs.fraud.shape[0] == 1
    assert inputs.shading is not None and inputs.shading.shape[0] == 1
    fallback = reader.defaults(ctx, [AdRef("c", a, 1) for a in ads])
    assert fallback.ctr.shape == inputs.ctr.shape


def test_unreachable_store_raises_typed_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(home=tmp_path / "ws", profile="services",
                        redis_url="redis://127.0.0.1:1/0")
    from features.ops import apply

    apply(settings)
    reader = OnlineReader(open_store(settings))
    with pytest.raises(StoreUnavailable):
        reader.read("user_stats", ["u1"])

"""The online reader returns what Feast's get_online_features returns, as arrays."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from adplatform.config import Settings
from adplatform.eventlog import read_events
from features import AdRef, RequestContext, StoreUnavailable
from features.ivt import crawler_matcher, ivt_columns
from features.reader import OnlineReader, ReaderConfig, context_columns
from features.repo import VIEWS
from features.store import open_store
from features.vectorize import ctr_matrix, fraud_matrix, shading_matrix


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


def _feast(store: Any, view: str, join_key: str, fields: Sequence[str],
           keys: list[str]) -> np.ndarray:
    """What ``get_online_features`` returns for ``keys``, as the reader's array."""
    theirs = store.get_online_features(features=[f"{view}:{f}" for f in fields],
                                       entity_rows=[{join_key: k} for k in keys]).to_dict()
    return np.array([[np.nan if theirs[f][i] is None else theirs[f][i] for f in fields]
                     for i in range(len(keys))], dtype=float)


@pytest.mark.parametrize("cache", [0, 1000])
def test_reader_equals_get_online_features(reader_env: tuple, cache: int) -> None:  # type: ignore[type-arg]
    settings, keys = reader_env
    store = open_store(settings)
    reader = OnlineReader(store, ReaderConfig(cache_size=cache))
    for view, _, join_key, fields in VIEWS:
        for _ in range(2):  # second pass is served from the cache when enabled
            ours = reader.read(view, keys[view])
            np.testing.assert_array_equal(ours, _feast(store, view, join_key, fields,
                                                       keys[view]))
        assert np.isnan(ours[-1]).all(), "an unknown entity reads as missing, not an error"
    if cache:
        assert reader.cache_stats.hits > 0


def test_a_full_value_memo_is_cleared_and_reads_stay_exact(
        reader_env: tuple, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[type-arg]
    """Decoded values are memoised by their stored bytes, in a bounded memo: with room
    for 3 values it is cleared over and over, and every read still equals Feast's."""
    import features.reader as reader_module

    monkeypatch.setattr(reader_module, "_VALUE_MEMO_SIZE", 3)
    settings, keys = reader_env
    store = open_store(settings)
    reader = OnlineReader(store, ReaderConfig(cache_size=0))
    for view, _, join_key, fields in VIEWS:
        ours = reader.read(view, keys[view])
        np.testing.assert_array_equal(ours, _feast(store, view, join_key, fields, keys[view]))
        assert len(reader._value_memo) <= 3


def test_entity_keys_serialize_as_feast_does(reader_env: tuple) -> None:  # type: ignore[type-arg]
    """The reader writes Feast's version-3 entity keys itself (no protobuf objects per
    key): the same bytes as ``serialize_entity_key`` for every view's join key."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    settings, keys = reader_env
    store = open_store(settings)
    assert store.config.entity_key_serialization_version == 3
    reader = OnlineReader(store, ReaderConfig(cache_size=0))
    odd = ["", "ü-ß-日本", "x" * 300, "10.0.0.1", "2001:db8::1", "a\x00b"]
    for view, _, join_key, _ in VIEWS:
        for k in [*keys[view], *odd]:
            want = serialize_entity_key(EntityKey(join_keys=[join_key],
                                                  entity_values=[Value(string_val=k)]),
                                        entity_key_serialization_version=3)
            assert reader._serialized(view, [k]) == [want], (view, k)


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


def test_build_equals_the_matrices_from_plain_columns(reader_env: tuple) -> None:  # type: ignore[type-arg]
    """The one block the reader assembles per auction gives the same matrices, bit for
    bit, as plain per-column mappings (the training path's form) of the same values."""
    settings, keys = reader_env
    reader = OnlineReader(open_store(settings), ReaderConfig(cache_size=0),
                          shared_data=settings.shared_data)
    fields = {name: f for name, _, _, f in VIEWS}
    ads = [AdRef("c", a, t % 9) for t, a in enumerate(keys["ad_stats"])]   # 8: off-range
    uas = ("Mozilla/5.0 (Linux; Android 14)", "Mozilla/5.0 (compatible; Googlebot/2.1)")
    for i in range(6):
        ctx = RequestContext(ts=datetime(2026, 1, 10, i, tzinfo=UTC), request_id="r",
                             imp_id="1", user_id=keys["user_stats"][i],
                             publisher_id=keys["publisher_stats"][i % 3],
                             ip=keys["ip_stats"][i], device_id=keys["device_stats"][i],
                             ua=uas[i % 2], device_type=4, is_app=bool(i % 2),
                             format="banner", w=320, h=50, bidfloor=0.25 * i,
                             personalised=i != 5)
        keyed = {"user_stats": ctx.user_id if ctx.personalised else "",
                 "publisher_stats": ctx.publisher_id, "ip_stats": ctx.ip,
                 "device_stats": ctx.device_id}
        cols: dict[str, np.ndarray] = {}
        for view, key in keyed.items():
            row = reader.read(view, [key])[0]
            cols.update({f: np.full(len(ads), v) for f, v in zip(fields[view], row, strict=True)})
        ad_rows = reader.read("ad_stats", [a.creative_id for a in ads])
        cols.update({f: ad_rows[:, j] for j, f in enumerate(fields["ad_stats"])})
        cols.update(context_columns(ctx, ads))
        cols.update({k: np.repeat(v, len(ads))
                     for k, v in ivt_columns([ctx.ip], [ctx.ua], settings.shared_data).items()})
        one = {k: v[:1] for k, v in cols.items()}
        got = reader.build(ctx, ads)
        np.testing.assert_array_equal(got.ctr, ctr_matrix(cols))
        np.testing.assert_array_equal(got.fraud, fraud_matrix(one))
        np.testing.assert_array_equal(got.shading, shading_matrix(one))


def test_unreachable_store_raises_typed_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(home=tmp_path / "ws", profile="services",
                        redis_url="redis://127.0.0.1:1/0")
    from features.ops import apply

    apply(settings)
    reader = OnlineReader(open_store(settings))
    with pytest.raises(StoreUnavailable):
        reader.read("user_stats", ["u1"])


def test_the_reader_builds_the_crawler_matcher_before_the_first_auction(
        reader_env: tuple, tmp_path) -> None:  # type: ignore[no-untyped-def,type-arg]
    # Built lazily, the shared list's matcher cost the first auction after a start ~0.26 s
    # (timed ad hoc).
    settings, _ = reader_env
    lists = tmp_path / "crawler_user_agents"
    lists.mkdir()
    (lists / "crawler-user-agents.json").write_text('[{"pattern": "examplebot"}]')
    crawler_matcher.cache_clear()
    reader = OnlineReader(open_store(settings), shared_data=tmp_path)
    assert crawler_matcher.cache_info().currsize == 1
    ctx = RequestContext(ts=datetime(2026, 1, 10, 12, tzinfo=UTC), request_id="r", imp_id="1",
                         ua="Mozilla/5.0 (compatible; examplebot/1.0)")
    reader.build(ctx, [AdRef("c", "a", 1)])
    assert crawler_matcher.cache_info().misses == 1      # the first auction found it built

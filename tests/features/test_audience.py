"""Audiences: deterministic embeddings, a Milvus Lite round trip, lookalike quality on the
simulator's latent interest groups, and segment membership read back from Feast.

The session's ``simulated_workspace`` (4 days x 12k requests) serves the mechanical
tests. It is too thin for the quality test — most of its users are seen once, and the
best lookalikes reach only ~2x their group's share — so that test simulates its own
10 days x 50k requests (~48k users, a median of 3 requests each) once for the module.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis
import typer
from feast import FileSource
from typer.testing import CliRunner

from adplatform.config import Settings, get_settings
from adplatform.errors import DataError
from features.audience import embeddings as emb_mod
from features.audience.embeddings import (
    EmbeddingConfig,
    Interactions,
    build_embeddings,
    embed,
    interactions,
)
from features.audience.errors import AudienceError, IndexUnavailable, SegmentNotFound
from features.audience.evaluate import evaluate_lookalike, user_groups
from features.audience.index import AudienceIndex, IndexConfig, is_lite, lite_path, milvus_uri
from features.audience.lookalike import build, lookalike
from features.audience.segments import (
    Segment,
    delete_segment,
    list_segments,
    load_segment,
    read_user_file,
    save_segment,
)
from features.audience.writeback import (
    VIEW_NAME,
    online_segments,
    read_log,
    segment_view,
    write_segments,
)
from features.store import offline_dir, open_store
from tests.conftest import SEED, make_settings

QUALITY_DAYS = 10
QUALITY_REQUESTS_PER_DAY = 50_000
LOOKALIKE_N = 500
MIN_LIFT = 3.0
REDIS_URL = "redis://127.0.0.1:6379/14"     # a database of its own, flushed by the test


@pytest.fixture(scope="module")
def audience_workspace(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A simulated world big enough for lookalike quality, embedded and indexed."""
    from simulator import simulate

    s = make_settings(tmp_path_factory.mktemp("audience") / "ws")
    simulate(days=QUALITY_DAYS, seed=SEED, workspace=s.workspace.ensure(),
             requests_per_day=QUALITY_REQUESTS_PER_DAY)
    build(s)
    return s


@pytest.fixture(scope="module")
def truth_groups(audience_workspace: Settings) -> pd.Series:
    return user_groups(audience_workspace.workspace)


# -- embeddings ----------------------------------------------------------------------


def test_embeddings_are_deterministic_unit_vectors(simulated_workspace: Settings) -> None:
    events = simulated_workspace.workspace.events
    a = build_embeddings(events)
    b = build_embeddings(events)
    assert len(a) > 1000 and a.dim == EmbeddingConfig().dim + 1
    assert a.vectors.dtype == np.float32
    assert np.array_equal(a.user_ids, b.user_ids)
    assert a.vectors.tobytes() == b.vectors.tobytes(), "same log, same config: same bytes"
    np.testing.assert_allclose(np.linalg.norm(a.vectors, axis=1), 1.0, atol=1e-5)
    assert "" not in set(a.user_ids), "requests without a user id are not users"
    assert a.background[-1] == 0.0
    items = set(a.item_ids)
    assert any(i.startswith("pub:") for i in items) and any(i.startswith("ad:") for i in items)


def test_randomized_svd_path_is_deterministic(simulated_workspace: Settings,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # Many items take the randomized SVD; it is seeded, so it repeats exactly too.
    monkeypatch.setattr(emb_mod, "GRAM_MAX_ITEMS", 0)
    full = interactions(simulated_workspace.workspace.events)
    inter = Interactions(full.user_ids[:3000], full.item_ids, full.matrix[:3000], full.as_of)
    cfg = EmbeddingConfig(dim=16, seed=3)
    a, b = embed(inter, cfg), embed(inter, cfg)
    assert a.vectors.tobytes() == b.vectors.tobytes()
    # ... and spans the same subspace as the exact (Gram) solution.
    monkeypatch.setattr(emb_mod, "GRAM_MAX_ITEMS", 10**6)
    exact = embed(inter, cfg)
    overlap = np.abs(a.item_vectors[:, :8].T @ exact.item_vectors[:, :8])
    assert np.linalg.svd(overlap, compute_uv=False).min() > 0.95


def test_embedding_input_checks(simulated_workspace: Settings, tmp_path: Path) -> None:
    with pytest.raises(AudienceError, match="dim"):
        EmbeddingConfig(dim=0)
    with pytest.raises(AudienceError, match="evidence"):
        EmbeddingConfig(evidence=2.0)
    with pytest.raises(AudienceError, match="nothing to embed"):
        build_embeddings(tmp_path / "empty-events")
    emb = build_embeddings(simulated_workspace.workspace.events)
    saved = emb.save(tmp_path / "users.npz")
    back = type(emb).load(saved)
    assert back.vectors.tobytes() == emb.vectors.tobytes() and back.as_of == emb.as_of
    assert back.config == emb.config
    assert list(emb.lookup([str(emb.user_ids[3]), "nobody"])) == [3, -1]


# -- Milvus Lite ------------------------------------------------------------------------


def test_milvus_lite_round_trip(simulated_workspace: Settings, tmp_path: Path) -> None:
    emb = build_embeddings(simulated_workspace.workspace.events)
    uri = str(tmp_path / "milvus" / "roundtrip.db")
    result = build(simulated_workspace, uri=uri, embeddings=emb)
    assert result.users == len(emb) and result.dim == emb.dim and is_lite(result.uri)
    # A fresh connection finds the collection released, loads it, and reads it back.
    with AudienceIndex(IndexConfig(uri=uri)) as index:
        assert index.count() == len(emb)
        meta = index.meta()
        assert meta.dim == emb.dim and meta.as_of == emb.as_of and meta.config == emb.config
        np.testing.assert_array_equal(meta.background, emb.background)
        sample = [str(u) for u in emb.user_ids[::997]]
        got = index.vectors([*sample, "never-seen-user"])
        assert set(got) == set(sample)
        for u in sample:
            np.testing.assert_array_equal(got[u], emb.vectors[emb.lookup([u])[0]])
        # A user's own vector finds that user first, with cosine ~1.
        heavy = int(np.argmin(emb.vectors[:, -1]))        # the most engaged user
        own = str(emb.user_ids[heavy])
        hits = index.search(emb.vectors[heavy], 5)
        assert hits[0].user_id == own and hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert own not in {h.user_id for h in index.search(emb.vectors[heavy], 5,
                                                           exclude=frozenset({own}))}
    with AudienceIndex(IndexConfig(uri=str(tmp_path / "other.db"))) as empty:
        with pytest.raises(AudienceError, match="audience build"):
            empty.meta()


def test_rebuild_switches_alias_and_drops_old_collection(simulated_workspace: Settings,
                                                         tmp_path: Path) -> None:
    emb = build_embeddings(simulated_workspace.workspace.events)
    part = replace(emb, user_ids=emb.user_ids[:500], vectors=emb.vectors[:500])
    config = IndexConfig(uri=str(tmp_path / "ab.db"), batch_size=128)
    with AudienceIndex(config) as index:
        index.rebuild(part)
        index.rebuild(emb)
        assert index.client.list_collections() == ["user_embeddings__v2"]
        assert index.count() == len(emb)
        index.rebuild(part)
        assert index.client.list_collections() == ["user_embeddings__v3"]
        assert index.count() == 500


def test_ivf_flat_index(simulated_workspace: Settings, tmp_path: Path) -> None:
    pytest.importorskip("faiss", reason="Milvus Lite builds IVF_FLAT with faiss-cpu")
    emb = build_embeddings(simulated_workspace.workspace.events)
    config = IndexConfig(uri=str(tmp_path / "ivf.db"), index_type="IVF_FLAT", nlist=16,
                         nprobe=16)
    with AudienceIndex(config) as index:
        index.rebuild(emb)
        heavy = int(np.argmin(emb.vectors[:, -1]))
        assert index.search(emb.vectors[heavy], 3)[0].user_id == emb.user_ids[heavy]
        assert index.client.describe_index(config.collection, "vector")["index_type"] == "IVF_FLAT"


def test_unreachable_milvus_server_is_a_typed_error(settings: Settings) -> None:
    with pytest.raises(IndexUnavailable, match="cannot open Milvus at http://127.0.0.1:1"):
        lookalike(settings, ["u1"], 10, "x", uri="http://127.0.0.1:1")


def test_milvus_uri_from_settings(tmp_path: Path) -> None:
    class WithMilvus(Settings):
        milvus_uri: str | None = None

    local = make_settings(tmp_path / "ws")
    assert milvus_uri(local) == str(lite_path(local)) and lite_path(local).name == "audience.db"
    server = WithMilvus(home=tmp_path / "ws", milvus_uri="http://milvus.internal:19530")
    assert milvus_uri(server) == "http://milvus.internal:19530" and not is_lite(milvus_uri(server))
    assert IndexConfig.from_settings(server).uri == "http://milvus.internal:19530"
    assert IndexConfig.from_settings(server, uri="/x/y.db").uri == "/x/y.db"


# -- lookalike quality ------------------------------------------------------------------


@pytest.mark.slow
def test_lookalike_lift_per_latent_group(audience_workspace: Settings,
                                         truth_groups: pd.Series) -> None:
    """10% of a latent group as seed -> N lookalikes hold >= 3x the group's share."""
    results = [evaluate_lookalike(audience_workspace, g, LOOKALIKE_N, groups=truth_groups)
               for g in range(8)]
    for q in results:
        assert q.size == LOOKALIKE_N and q.seeds == round(0.1 * q.members)
        assert 0.08 < q.share < 0.16, "groups are drawn uniformly (8 groups, some bots)"
    weak = [(q.group, round(q.ratio, 2)) for q in results if q.ratio < MIN_LIFT]
    assert not weak, f"lift below {MIN_LIFT}x: {weak}"


def test_lookalike_segment_excludes_seeds_and_is_saved(audience_workspace: Settings,
                                                       truth_groups: pd.Series) -> None:
    members = sorted(truth_groups.index[truth_groups.to_numpy() == 2])
    seeds = members[: len(members) // 10] + ["never-seen-user"]
    seg = lookalike(audience_workspace, seeds, 200, "group2-lookalike")
    assert seg.kind == "lookalike" and len(seg) == 200
    assert not set(seg.user_ids) & set(seeds)
    assert seg.scores is not None and list(seg.scores) == sorted(seg.scores, reverse=True)
    assert seg.source["seed_users"] == len(seeds)
    assert seg.source["seed_users_indexed"] == len(seeds) - 1
    assert load_segment(audience_workspace, "group2-lookalike") == seg
    again = lookalike(audience_workspace, seeds, 200, "group2-lookalike", save=False)
    assert again.user_ids == seg.user_ids, "same index, same seeds: same audience"
    with pytest.raises(AudienceError, match="has an embedding"):
        lookalike(audience_workspace, ["nobody", "nobody-else"], 10, "nope")
    with pytest.raises(AudienceError, match="positive integer"):
        lookalike(audience_workspace, seeds, 0, "nope")
    with pytest.raises(AudienceError, match="segment name"):
        lookalike(audience_workspace, seeds, 10, "bad name, with comma")
    with pytest.raises(AudienceError, match="at least one seed"):
        lookalike(audience_workspace, [], 10, "nope")


# -- segment store ----------------------------------------------------------------------


def test_segment_store_and_user_files(settings: Settings, tmp_path: Path) -> None:
    seg = Segment("crm.buyers-2026", ("u1", "u2"), source={"file": "x"})
    save_segment(settings, seg)
    assert list_segments(settings) == ["crm.buyers-2026"]
    assert load_segment(settings, "crm.buyers-2026") == seg
    with pytest.raises(SegmentNotFound, match="crm.buyers-2026"):
        load_segment(settings, "other")
    with pytest.raises(AudienceError, match="duplicate"):
        Segment("dups", ("u1", "u1"))
    assert delete_segment(settings, "crm.buyers-2026") and list_segments(settings) == []

    (tmp_path / "a.txt").write_text("u1\n\n# comment\nu2  # trailing\nu1\n")
    (tmp_path / "b.json").write_text(json.dumps({"user_ids": ["u3", "u4"]}))
    (tmp_path / "c.json").write_text(json.dumps(["u5"]))
    pd.DataFrame({"user_id": ["u6", None, "u7"]}).to_parquet(tmp_path / "d.parquet")
    pd.DataFrame({"user_id": ["u8"], "other": [1]}).to_csv(tmp_path / "e.csv", index=False)
    assert read_user_file(tmp_path / "a.txt") == ["u1", "u2"]
    assert read_user_file(tmp_path / "b.json") == ["u3", "u4"]
    assert read_user_file(tmp_path / "c.json") == ["u5"]
    assert read_user_file(tmp_path / "d.parquet") == ["u6", "u7"]
    assert read_user_file(tmp_path / "e.csv") == ["u8"]
    pd.DataFrame({"uid": ["x"]}).to_csv(tmp_path / "bad.csv", index=False)
    (tmp_path / "bad.json").write_text("{not json")
    for bad, match in (("bad.csv", "user_id"), ("bad.json", "invalid JSON"),
                       ("missing.txt", "no such file")):
        with pytest.raises(DataError, match=match):
            read_user_file(tmp_path / bad)


# -- Feast write-back -------------------------------------------------------------------


def test_segments_written_back_to_feast(audience_workspace: Settings, settings: Settings,
                                        truth_groups: pd.Series) -> None:
    # A fresh workspace (segments, Feast) searching the audience workspace's index.
    s, uri = settings, milvus_uri(audience_workspace)
    members = sorted(truth_groups.index[truth_groups.to_numpy() == 5])
    seed = Segment("group5-seed", tuple(members[:100]))
    save_segment(s, seed)
    lal = lookalike(s, seed.user_ids, 300, "group5-lookalike", seed_segment=seed.name, uri=uri)
    first = write_segments(s)
    assert first.segments == 2 and first.members == 400 and first.changed == 400
    assert first.as_of == lal.as_of, "membership is stamped with the data's time"

    store = open_store(s)
    assert store.get_feature_view(VIEW_NAME).ttl == timedelta(0)
    both = sorted(set(seed.user_ids) & set(lal.user_ids))
    assert not both, "seeds are never in their own lookalike"
    got = online_segments(store, [seed.user_ids[0], lal.user_ids[0], "never-seen-user"])
    assert got == [["group5-seed"], ["group5-lookalike"], None]

    # Drop the seed segment: its users read back with no segments; the log keeps history.
    delete_segment(s, seed.name)
    second = write_segments(s)
    assert second.removed == 100 and second.changed == 0 and second.as_of > first.as_of
    got = online_segments(open_store(s), [seed.user_ids[0], lal.user_ids[-1]])
    assert got == [[], ["group5-lookalike"]]
    log = read_log(offline_dir(s) / "user_segments.parquet")
    assert len(log) == 500 and log["event_timestamp"].nunique() == 2

    # Offline, a point-in-time join sees each user's membership at that time.
    u = seed.user_ids[0]
    entity = pd.DataFrame({"user_id": [u, u, u],
                           "event_timestamp": [first.as_of - timedelta(hours=1),
                                               first.as_of + timedelta(seconds=0),
                                               second.as_of + timedelta(days=60)]})
    hist = store.get_historical_features(entity_df=entity,
                                         features=[f"{VIEW_NAME}:segments"]).to_df()
    hist = hist.sort_values("event_timestamp")
    values = [None if v is None or (isinstance(v, float) and np.isnan(v)) else list(v)
              for v in hist["segments"]]
    assert values == [None, ["group5-seed"], []]


@pytest.mark.services
def test_segments_in_redis(audience_workspace: Settings, truth_groups: pd.Series,
                           tmp_path: Path) -> None:
    """The services profile: the same write-back into the real Redis on 127.0.0.1."""
    try:
        redis.Redis.from_url(REDIS_URL).flushdb()
    except redis.ConnectionError as exc:
        pytest.skip(f"Redis on 127.0.0.1:6379 is not running: {exc}")
    s = make_settings(tmp_path / "ws", profile="services", redis_url=REDIS_URL)
    members = sorted(truth_groups.index[truth_groups.to_numpy() == 6])
    seed = Segment("group6-seed", tuple(members[:50]))
    save_segment(s, seed)
    lal = lookalike(s, seed.user_ids, 100, "group6-lookalike",
                    uri=milvus_uri(audience_workspace))
    write_segments(s)
    got = online_segments(open_store(s), [seed.user_ids[0], lal.user_ids[0], "nobody"])
    assert got == [["group6-seed"], ["group6-lookalike"], None]
    delete_segment(s, seed.name)
    write_segments(s)       # a later timestamp, so Redis takes the removal
    assert online_segments(open_store(s), [seed.user_ids[0]]) == [[]]


def test_segment_view_definition(tmp_path: Path) -> None:
    view = segment_view(tmp_path / "offline")
    assert view.name == VIEW_NAME and view.entities == ["user"]
    assert [f.name for f in view.features] == ["segments"]
    source = view.batch_source
    assert isinstance(source, FileSource)
    assert source.path.endswith("offline/user_segments.parquet")


def test_write_back_with_no_segments(settings: Settings) -> None:
    result = write_segments(settings, as_of=datetime(2026, 1, 2, tzinfo=UTC))
    assert result.members == 0 and result.online_rows == 0 and result.path.exists()
    assert read_log(result.path).empty


# -- CLI -------------------------------------------------------------------------------


@pytest.fixture
def cli_home(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv("ADPLATFORM_HOME", str(settings.home))
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


def test_cli_import_lookalike_list(cli_home: Settings, audience_workspace: Settings,
                                   truth_groups: pd.Series, tmp_path: Path) -> None:
    from features.audience.cli import register

    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Test root (keeps `audience` a subcommand)."""

    register(app)
    run = CliRunner().invoke
    seeds = sorted(truth_groups.index[truth_groups.to_numpy() == 1])[:150]
    (tmp_path / "seeds.txt").write_text("\n".join(seeds) + "\n")
    out = run(app, ["audience", "import", "cli-seed", "--file", str(tmp_path / "seeds.txt")])
    assert out.exit_code == 0, out.output
    uri = milvus_uri(audience_workspace)
    out = run(app, ["audience", "lookalike", "--seed-segment", "cli-seed", "--size", "50",
                    "--uri", uri])
    assert out.exit_code == 0, out.output
    assert "cli-seed-lookalike-50" in out.output and "feast" in out.output
    assert len(load_segment(cli_home, "cli-seed-lookalike-50")) == 50
    got = online_segments(open_store(cli_home), [seeds[0]])
    assert got == [["cli-seed"]]
    out = run(app, ["audience", "list"], env={"COLUMNS": "160"})
    assert out.exit_code == 0 and "cli-seed-lookalike-50" in out.output, out.output
    bad = run(app, ["audience", "lookalike", "--seed-segment", "missing", "--size", "5",
                    "--uri", uri])
    assert bad.exit_code == 1 and "no segment 'missing'" in bad.output
    both = run(app, ["audience", "lookalike", "--size", "5"])
    assert both.exit_code == 2

"""The services profile: the same features materialized into the real Redis on 127.0.0.1."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import redis

from adplatform.config import Settings
from adplatform.eventlog import read_events
from features.ops import materialize
from features.reader import OnlineReader, ReaderConfig
from features.repo import VIEWS
from features.skew import skew_check
from features.store import open_store

pytestmark = pytest.mark.services

# A database of its own, flushed here: the stream tests (db 15) and the services (db 0)
# may run at the same time on another xdist worker.
REDIS_URL = "redis://127.0.0.1:6379/13"


@pytest.fixture(scope="module")
def redis_workspace(simulated_workspace: Settings, tmp_path_factory: pytest.TempPathFactory
                    ) -> Settings:
    try:
        redis.Redis.from_url(REDIS_URL).flushdb()
    except redis.ConnectionError as exc:
        pytest.skip(f"Redis on 127.0.0.1:6379 is not running: {exc}")
    home = tmp_path_factory.mktemp("redis") / "ws"
    src = simulated_workspace.workspace
    for part in ("events", "world"):
        shutil.copytree(src.root / part, home / part)
    s = Settings(home=home, profile="services", redis_url=REDIS_URL)
    materialize(s)
    return s


def test_materialize_into_redis_and_read_back(redis_workspace: Settings) -> None:
    """Every view, read in one pipeline (twice: the second time with memoised keys),
    equals Feast's get_online_features; unknown entities read as NaN."""
    store = open_store(redis_workspace)
    reader = OnlineReader(store, ReaderConfig(cache_size=0))
    events = redis_workspace.workspace.events
    imp = read_events(events, "impressions").merge(
        read_events(events, "requests")[["request_id", "ip", "device_id"]], on="request_id")
    columns = {"user_stats": "user_id", "ad_stats": "creative_id",
               "campaign_stats": "campaign_id", "publisher_stats": "publisher_id",
               "ip_stats": "ip", "device_stats": "device_id"}
    keys = {view: [k for k in imp[col].drop_duplicates().head(30) if k] + ["never-seen"]
            for view, col in columns.items()}
    for _ in range(2):
        ours = reader.read_views(keys)
        for view, _, join_key, fields in VIEWS:
            theirs = store.get_online_features(
                features=[f"{view}:{f}" for f in fields],
                entity_rows=[{join_key: k} for k in keys[view]]).to_dict()
            expected = np.array([[np.nan if theirs[f][i] is None else theirs[f][i]
                                  for f in fields] for i in range(len(keys[view]))], dtype=float)
            np.testing.assert_array_equal(ours[view], expected, err_msg=view)
            assert not np.isnan(ours[view][0]).all() and np.isnan(ours[view][-1]).all()


def test_no_skew_on_redis(redis_workspace: Settings) -> None:
    report = skew_check(redis_workspace, sample=100)
    assert report.ok, {k: v for k, v in report.mismatch.items() if v > 0}


def test_wal_mode_on_sqlite(trained_workspace: Settings) -> None:
    import sqlite3

    db = Path(trained_workspace.workspace.feature_repo) / "online.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

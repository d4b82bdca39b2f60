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
    store = open_store(redis_workspace)
    reader = OnlineReader(store, ReaderConfig(cache_size=0))
    events = redis_workspace.workspace.events
    users = [u for u in read_events(events, "impressions")["user_id"].drop_duplicates().head(40)
             if u] + ["never-seen"]
    fields = dict((v, f) for v, _, _, f in VIEWS)["user_stats"]
    ours = reader.read("user_stats", users)
    theirs = store.get_online_features(features=[f"user_stats:{f}" for f in fields],
                                       entity_rows=[{"user_id": u} for u in users]).to_dict()
    expected = np.array([[np.nan if theirs[f][i] is None else theirs[f][i] for f in fields]
                         for i in range(len(users))], dtype=float)
    np.testing.assert_array_equal(ours, expected)
    assert not np.isnan(ours[0]).all() and np.isnan(ours[-1]).all()


def test_no_skew_on_redis(redis_workspace: Settings) -> None:
    report = skew_check(redis_workspace, sample=100)
    assert report.ok, {k: v for k, v in report.mismatch.items() if v > 0}


def test_wal_mode_on_sqlite(trained_workspace: Settings) -> None:
    import sqlite3

    db = Path(trained_workspace.workspace.feature_repo) / "online.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

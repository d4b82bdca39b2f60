"""Feature-store operations behind ``adplatform features apply|materialize``."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import pandas as pd

from adplatform.config import Settings
from adplatform.eventlog import last_event_time
from features.pipeline import compute_views, write_views
from features.repo import definitions
from features.store import materialized_until, offline_dir, open_store

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)


def apply(settings: Settings) -> FeatureStore:
    """Register entities, views and feature services in the workspace registry."""
    store = open_store(settings)
    repo = definitions(offline_dir(settings))
    store.apply(repo.objects())  # type: ignore[arg-type]  # feast annotates list, not Sequence
    _enable_wal(settings)
    return store


@dataclass
class MaterializeResult:
    rows: dict[str, int]
    start: datetime | None
    end: datetime


def materialize(settings: Settings, end: datetime | None = None, *,
                lookback: timedelta = timedelta(days=1)) -> MaterializeResult:
    """Run the batch pipeline over the event log, then load the online store incrementally.

    Each view loads only rows newer than the end of its last materialized interval,
    minus ``lookback``: late clicks and conversions (inside their attribution window)
    change recent snapshots, so the last ``lookback`` is always reloaded. The first run
    loads everything. Times are the event log's (simulated) times, never the wall clock.

    ``end`` defaults to the log's last event (+1 s), its "now". The batch views also
    hold each window's future zeros (a key's 7-day count drops to zero a week after its
    last event); those lie after the log's end and are loaded by a later run whose log
    reaches them, never ahead of time (that would serve every window as already empty).
    """
    from features.streaming import backfill_frames, write_backfill

    frames = compute_views(settings.workspace.events)
    rows = write_views(frames, offline_dir(settings))
    # The streaming windows' offline history, from the same window code the live
    # aggregator runs; only the aggregator writes them online (no materialization).
    rows.update(write_backfill(backfill_frames(settings.workspace.events), offline_dir(settings)))
    store = apply(settings)
    if end is None:
        last = last_event_time(settings.workspace.events)
        if last is None:
            last = pd.Timestamp.now(tz="UTC")
        end = last.to_pydatetime() + timedelta(seconds=1)
    starts: list[datetime] = []
    for name, df in frames.items():
        if df.empty:
            continue
        done = materialized_until(store, name)
        first = df["event_timestamp"].min().to_pydatetime() - timedelta(seconds=1)
        # The last run loaded past this log's end (the log was rebuilt, or an older
        # version loaded the windows' future zeros): everything again, so that every
        # key's row is the one as of ``end`` (the online write is an upsert).
        start = done - lookback if done is not None and done <= end else first
        if start >= end:
            continue
        store.materialize(start_date=start, end_date=end, feature_views=[name])
        starts.append(start)
    return MaterializeResult(rows=rows, start=min(starts, default=None), end=end)


def build_offline(settings: Settings, *, streaming: bool = False) -> dict[str, int]:
    """The batch views in the offline store, then ``apply``; returns rows per view.

    What training reads (point-in-time joins of the batch views), without loading the
    online store: at full size that is millions of ip/device rows nobody reads offline.
    ``streaming`` also writes the streaming windows' offline history (slow at full size;
    no training feature service reads it).
    """
    rows = write_views(compute_views(settings.workspace.events), offline_dir(settings))
    if streaming:
        from features.streaming import backfill_frames, write_backfill

        rows.update(write_backfill(backfill_frames(settings.workspace.events),
                                   offline_dir(settings)))
    apply(settings)
    return rows


def _enable_wal(settings: Settings) -> None:
    """SQLite online store in WAL mode, so a writer never blocks the readers."""
    if settings.profile != "embedded":
        return
    path = settings.workspace.feature_repo / "online.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")


__all__ = ["MaterializeResult", "apply", "materialize"]

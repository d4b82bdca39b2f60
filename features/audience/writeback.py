"""Segment membership as a Feast feature: the ``user_segments`` view.

Entity ``user`` (join key ``user_id``), one feature ``segments``: the sorted names of the
segments the user belongs to, a Feast ``Array(String)`` (the SQLite and Redis online
stores keep it as a serialized ``StringList``; an unknown user reads as ``None``, a user
removed from every segment as ``[]``). Campaign targeting matches these names the way
it matches OpenRTB ``user.data.segment.id`` values.

The offline source ``<offline>/user_segments.parquet`` is a change log: each write-back
appends one row per user whose membership changed (removals as an empty list), stamped
with the time of the data the segments reflect. A point-in-time join therefore sees the
membership a user had at that time, and ``ttl=0`` (never expires) keeps long-lived
memberships joinable. The online store gets every current member's row (and the
removals) with that same, strictly increasing timestamp — Redis ignores a write that is
not newer than what it holds.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureView, Field, FileSource
from feast.types import Array, String

from adplatform.config import Settings
from adplatform.eventlog import write_parquet
from features.audience.segments import Segment, list_segments, load_segment
from features.store import offline_dir, open_store

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)

VIEW_NAME = "user_segments"
FEATURE = "segments"
FILE_NAME = f"{VIEW_NAME}.parquet"
#: Successive write-backs are at least this far apart in event time.
MIN_STEP = timedelta(milliseconds=1)

SCHEMA = pa.schema([("user_id", pa.string()), (FEATURE, pa.list_(pa.string())),
                    ("event_timestamp", pa.timestamp("us", tz="UTC"))])


def segment_view(offline_dir: Path) -> FeatureView:
    """The ``user_segments`` FeatureView, its file source under ``offline_dir`` (no IO).

    ``features.repo.definitions`` may import this at module level: the ``user`` entity is
    imported here, when called, so the two modules never import each other while loading.
    """
    from features.repo import user

    source = FileSource(name=f"{VIEW_NAME}_source", path=str(offline_dir / FILE_NAME),
                        timestamp_field="event_timestamp")
    return FeatureView(name=VIEW_NAME, entities=[user], ttl=timedelta(0),
                       schema=[Field(name=FEATURE, dtype=Array(String))], source=source,
                       online=True, tags={"owner": "adplatform", "kind": "audience"},
                       description="Names of the audience segments the user belongs to")


@dataclass(frozen=True)
class WriteBackResult:
    path: Path
    as_of: datetime
    segments: int
    members: int              # users in at least one segment now
    changed: int              # users whose membership changed (log rows appended)
    removed: int              # users who left every segment
    online_rows: int
    seconds: float


def membership(settings: Settings, segments: list[Segment] | None = None
               ) -> dict[str, tuple[str, ...]]:
    """user_id → sorted names of the segments (default: the segment store's) holding them."""
    if segments is None:
        segments = [load_segment(settings, n) for n in list_segments(settings)]
    out: dict[str, set[str]] = {}
    for seg in segments:
        for uid in seg.user_ids:
            out.setdefault(uid, set()).add(seg.name)
    return {u: tuple(sorted(s)) for u, s in out.items()}


def read_log(path: Path) -> pd.DataFrame:
    if not path.exists():
        return SCHEMA.empty_table().to_pandas()
    return pq.read_table(path, schema=SCHEMA).to_pandas()


def latest_membership(history: pd.DataFrame) -> dict[str, tuple[str, ...]]:
    """Each user's membership after the last row of the change log."""
    if history.empty:
        return {}
    last = history.sort_values("event_timestamp", kind="stable").groupby("user_id").tail(1)
    return {str(u): tuple(s) for u, s in zip(last["user_id"], last[FEATURE], strict=True)}


def _write_log(path: Path, history: pd.DataFrame) -> None:
    table = pa.Table.from_pandas(history, schema=SCHEMA, preserve_index=False)
    write_parquet(table, path, compression="zstd")


def _frame(users: list[str], state: dict[str, tuple[str, ...]], ts: datetime) -> pd.DataFrame:
    return pd.DataFrame({"user_id": pd.Series(users, dtype=object),
                         FEATURE: pd.Series([list(state.get(u, ())) for u in users],
                                            dtype=object),
                         "event_timestamp": pd.Series([ts] * len(users),
                                                      dtype="datetime64[us, UTC]")})


def write_segments(settings: Settings, *, as_of: datetime | None = None,
                   store: FeatureStore | None = None) -> WriteBackResult:
    """Write the segment store's membership to the offline log and the online store.

    ``as_of`` (default: the latest ``as_of`` of the segments, else now) is the event time
    of the write; it is moved past the log's last write when it is not later.
    """
    started = time.perf_counter()
    segments = [load_segment(settings, n) for n in list_segments(settings)]
    current = membership(settings, segments)
    path = offline_dir(settings) / FILE_NAME
    history = read_log(path)
    previous = latest_membership(history)
    changed = sorted(u for u, s in current.items() if previous.get(u) != s)
    removed = sorted(u for u, s in previous.items() if s and u not in current)
    stamps = [s.as_of for s in segments if s.as_of]
    ts = pd.Timestamp(as_of or (max(stamps) if stamps else datetime.now(UTC)))
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    if not history.empty:
        ts = max(ts, history["event_timestamp"].max() + MIN_STEP)
    when = ts.floor("us").to_pydatetime()
    rows = _frame(changed + removed, current, when)
    if not rows.empty or not path.exists():
        _write_log(path, pd.concat([history, rows], ignore_index=True) if len(history)
                   else rows)
    online = _frame(sorted(current) + removed, current, when)
    if not online.empty:
        store = store or open_store(settings)
        from features.repo import user

        store.apply([user, segment_view(offline_dir(settings))])
        store.write_to_online_store(VIEW_NAME, online)
    result = WriteBackResult(path=path, as_of=when, segments=len(segments), members=len(current),
                             changed=len(changed), removed=len(removed),
                             online_rows=len(online), seconds=time.perf_counter() - started)
    log.info("user_segments: %d segments, %d members, %d changed, %d removed in %.2fs",
             result.segments, result.members, result.changed, result.removed, result.seconds)
    return result


def online_segments(store: FeatureStore, user_ids: list[str]) -> list[list[str] | None]:
    """The ``segments`` feature of each user from the online store (``None``: unknown)."""
    resp = store.get_online_features(features=[f"{VIEW_NAME}:{FEATURE}"],
                                     entity_rows=[{"user_id": u} for u in user_ids]).to_dict()
    return [None if v is None else list(v) for v in resp[FEATURE]]


__all__ = ["FEATURE", "FILE_NAME", "VIEW_NAME", "WriteBackResult", "latest_membership",
           "membership", "online_segments", "read_log", "segment_view", "write_segments"]

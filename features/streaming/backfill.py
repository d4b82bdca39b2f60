"""Offline backfill of the streaming views: the event log replayed through the same windows.

For every key, one row at each instant its window values change: at each event (the
values after it) and at each bucket expiry (down to the final 0). A point-in-time join at
any instant ``t`` therefore returns what the live aggregator serves at ``t`` once every
event up to ``t`` has reached it. Rows are written to the push sources' file sources,
from where ``materialize`` loads them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.streaming.definitions import STREAM_VIEWS, StreamView, stream_view
from features.streaming.events import log_events
from features.streaming.windows import Key, WindowTable

_NEVER = np.iinfo(np.int64).max


def window_table(view: StreamView) -> WindowTable:
    """The counters of one view (used online and offline alike)."""
    return WindowTable([f.kind for f in view.features], [f.window for f in view.features])


def replay(view: StreamView, events: pd.DataFrame, *, until_us: int | None = None) -> pd.DataFrame:
    """Every value change of ``view`` over ``events`` (columns ``kind``, ``ts_us`` and the
    view's join keys, sorted by ``ts_us``), up to ``until_us`` (default: until every window
    has emptied).

    Returns the view's offline frame: join keys, ``event_timestamp`` (UTC, microseconds)
    and one Int64 column per feature; one row per (key, instant), the last state wins.
    """
    table = window_table(view)
    mine = events[events["kind"].isin(table.kinds)]
    key_cols = [mine[k].to_numpy(dtype=object) for k in view.join_keys]
    kinds = mine["kind"].to_numpy(dtype=object)
    times = mine["ts_us"].to_numpy(dtype=np.int64)
    if len(times) and (np.diff(times) < 0).any():
        raise ValueError("replay needs events sorted by ts_us")
    stop = _NEVER if until_us is None else until_us
    out_keys: list[Key] = []
    out_ts: list[int] = []
    out_vals: list[tuple[int, ...]] = []

    def emit(keys: Iterable[Key], at: int) -> None:
        for key in keys:
            out_keys.append(key)
            out_ts.append(at)
            out_vals.append(table.values(key))

    for i in range(len(times)):
        t = int(times[i])
        if t > stop:
            break
        key = tuple(str(col[i]) for col in key_cols)
        if not all(key):
            continue        # no ip / device / user: not an entity
        for instant, changed in table.expiry_steps(t):
            emit(changed, instant)
        if table.add(key, str(kinds[i]), t, t):
            emit([key], t)
    for instant, changed in table.expiry_steps(stop):
        emit(changed, instant)
    return _frame(view, out_keys, out_ts, out_vals)


def _frame(view: StreamView, keys: list[Key], ts: list[int],
           values: list[tuple[int, ...]]) -> pd.DataFrame:
    cols: dict[str, object] = {}
    for j, k in enumerate(view.join_keys):
        cols[k] = pd.Series([key[j] for key in keys], dtype=object)
    cols["event_timestamp"] = pd.to_datetime(np.asarray(ts, dtype=np.int64), unit="us", utc=True)
    vals = np.asarray(values, dtype=np.int64).reshape(len(values), len(view.features))
    for j, f in enumerate(view.features):
        cols[f.name] = vals[:, j]
    df = pd.DataFrame(cols)
    df = df.drop_duplicates([*view.join_keys, "event_timestamp"], keep="last")
    return df.sort_values(["event_timestamp", *view.join_keys], kind="stable").reset_index(drop=True)


def backfill_frames(events_dir: Path, *, until_us: int | None = None,
                    views: Iterable[StreamView] = STREAM_VIEWS) -> dict[str, pd.DataFrame]:
    """``{view name: offline frame}`` for every streaming view, from the event log."""
    events = log_events(events_dir)
    return {v.name: replay(v, events, until_us=until_us) for v in views}


def write_backfill(frames: dict[str, pd.DataFrame], offline_dir: Path) -> dict[str, int]:
    """Write each frame to ``offline_dir/<view>.parquet`` (the push sources' file sources)."""
    offline_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, df in frames.items():
        view = stream_view(name)
        schema = pa.schema([*[(k, pa.string()) for k in view.join_keys],
                            ("event_timestamp", pa.timestamp("us", tz="UTC")),
                            *[(f, pa.int64()) for f in view.feature_names]])
        table = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
        pq.write_table(table, offline_dir / f"{name}.parquet")
        counts[name] = len(df)
    return counts


__all__ = ["backfill_frames", "replay", "window_table", "write_backfill"]

"""Sparse, point-in-time rolling windows at hourly boundaries.

For an entity key with events in hours ``h``, the window of ``W`` hours evaluated at
boundary ``b`` (a whole hour, UTC) sums the events in ``[b - W, b)``. A window only
changes value at ``h + 1`` (an hour's events enter) and ``h + 1 + W`` (they leave), so
those are the only boundaries emitted: the snapshots are exact at every instant, a key
whose window empties gets an explicit zero (features decay), and the cost is
proportional to the number of active (key, hour) pairs, never keys x hours.

Values at a boundary come from per-key cumulative sums and an as-of join:
``S(b) - S(b - W)`` with ``S(x)`` the sum of the key's events in hours ``< x``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

HOUR_NS = 3_600_000_000_000


@dataclass(frozen=True)
class Window:
    name: str            # output column
    weight: str          # input column summed over the window
    hours: int           # window length


def hour_index(ts: pd.Series) -> np.ndarray:
    """Whole hours since the epoch for UTC timestamps."""
    ns = ts.dt.tz_convert("UTC").dt.floor("h").astype("datetime64[ns, UTC]")
    return ns.astype("int64").to_numpy() // HOUR_NS


def rolling(key: str, keys: pd.Series, hours: np.ndarray, weights: Mapping[str, np.ndarray],
            windows: Sequence[Window]) -> pd.DataFrame:
    """One row per (key, boundary) where some window changes; ``event_timestamp`` = boundary.

    ``keys`` are entity ids per event (empty or missing keys are dropped: they are not
    an entity), ``hours`` the events' hour index, ``weights`` per-event values.
    """
    cols = sorted({w.weight for w in windows})
    df = pd.DataFrame({key: keys.to_numpy(), "hour": hours,
                       **{c: np.asarray(weights[c], dtype=np.float64) for c in cols}})
    df = df[df[key].notna() & (df[key] != "")]
    if df.empty:
        return pd.DataFrame(columns=[key, "event_timestamp", *[w.name for w in windows]])
    agg = df.groupby([key, "hour"], sort=True)[cols].sum().reset_index()
    cum = agg.groupby(key, sort=False)[cols].cumsum()
    # S(x) for x = hour + 1: events in hours <= hour, i.e. < x.
    edges = pd.DataFrame({key: agg[key].to_numpy(), "_x": agg["hour"].to_numpy() + 1,
                          **{c: cum[c].to_numpy() for c in cols}}).sort_values("_x", kind="stable")
    lengths = sorted({w.hours for w in windows})
    b = np.concatenate([agg["hour"].to_numpy() + 1] +
                       [agg["hour"].to_numpy() + 1 + h for h in lengths])
    k = np.concatenate([agg[key].to_numpy()] * (1 + len(lengths)))
    grid = pd.DataFrame({key: k, "_b": b}).drop_duplicates().sort_values("_b", kind="stable")

    def s_at(offset: int) -> pd.DataFrame:
        left = grid.assign(_x=grid["_b"] - offset).sort_values("_x", kind="stable")
        out = pd.merge_asof(left, edges, on="_x", by=key, direction="backward",
                            allow_exact_matches=True)
        return out.set_index([key, "_b"])[cols].fillna(0.0)

    now = s_at(0)
    result = pd.DataFrame(index=now.index)
    for h in lengths:
        past = s_at(h).reindex(now.index)
        for w in windows:
            if w.hours == h:
                result[w.name] = (now[w.weight] - past[w.weight]).round(9)
    result = result.reset_index()
    result["event_timestamp"] = pd.to_datetime(result.pop("_b") * HOUR_NS, utc=True)
    result = result[[key, "event_timestamp", *[w.name for w in windows]]]
    return result.sort_values(["event_timestamp", key], kind="stable").reset_index(drop=True)


__all__ = ["HOUR_NS", "Window", "hour_index", "rolling"]

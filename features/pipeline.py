"""Batch feature pipeline: event log -> point-in-time 7-day aggregates -> offline parquet.

Each entity gets one row per day boundary D (``event_timestamp = D 00:00 UTC``) holding
aggregates over ``[D - 7d, D)``, for every D where that window is non-empty. Computed
with dense (entity x day) count matrices and a cumulative sum, so the cost is
O(entities x days) numpy work, not a per-row loop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from adplatform.eventlog import read_events
from features.repo import N_TOPICS, VIEWS

log = logging.getLogger(__name__)

WINDOW_DAYS = 7


def _day_index(ts: pd.Series, first: pd.Timestamp) -> np.ndarray:
    return ((ts.dt.floor("D") - first) // pd.Timedelta(days=1)).to_numpy(dtype=np.int64)


def _windowed(keys: pd.Series, day: np.ndarray, weights: Sequence[np.ndarray], n_days: int,
              names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Sum weights per (key, day), then 7-day trailing windows ending before each boundary.

    Returns (key codes, boundary day index, {name: window sums}) for non-empty windows.
    Boundary b (1..n_days) covers days [b - 7, b).
    """
    # Rows without a key (no user id, no publisher) are not an entity: drop them rather
    # than pool them all under "".
    codes, uniques = pd.factorize(keys.replace("", None), sort=True)
    valid = codes >= 0
    codes, day = codes[valid], day[valid]
    weights = [w[valid] for w in weights]
    n_keys = len(uniques)
    out: dict[str, np.ndarray] = {}
    nonempty = np.zeros((n_keys, n_days), dtype=bool)
    sums = []
    for w in weights:
        m = np.zeros((n_keys, n_days + 1), dtype=np.float64)
        np.add.at(m, (codes, day + 1), w)          # column d+1 holds day d
        cs = np.cumsum(m, axis=1)                   # cs[:, b] = sum of days < b
        lag = np.zeros_like(cs)
        lag[:, WINDOW_DAYS:] = cs[:, :-WINDOW_DAYS]
        win = (cs - lag)[:, 1:]                     # boundary b = 1..n_days
        sums.append(win)
    for win in sums[:1]:
        nonempty |= win > 0
    rows, cols = np.nonzero(nonempty)
    for name, win in zip(names, sums, strict=True):
        out[name] = win[rows, cols]
    return np.asarray(uniques)[rows], cols + 1, out


def compute_views(events: Path) -> dict[str, pd.DataFrame]:
    """All batch feature-view frames from the event log under ``events``."""
    req = read_events(events, "requests")
    imp = read_events(events, "impressions")
    clk = read_events(events, "clicks")
    auc = read_events(events, "auctions")
    if req.empty:
        return {name: pd.DataFrame(columns=[key, "event_timestamp", *fields])
                for name, _, key, fields in VIEWS}
    first = req["ts"].min().floor("D")
    last = req["ts"].max().floor("D")
    n_days = int((last - first) / pd.Timedelta(days=1)) + 1

    # Impressions with their click label and creative topic.
    imp = imp.merge(clk[["request_id", "imp_id"]].assign(click=1), on=["request_id", "imp_id"],
                    how="left")
    imp["click"] = imp["click"].fillna(0).to_numpy(dtype=np.float64)
    topics = _creative_topics(events.parent)
    imp["topic"] = imp["creative_id"].map(topics).fillna(-1).astype(int)
    imp_day = _day_index(imp["ts"], first)

    frames: dict[str, pd.DataFrame] = {}

    # user_stats: overall and per-topic impressions/clicks.
    ones = np.ones(len(imp))
    weights = [ones, imp["click"].to_numpy()]
    names = ["user_imps_7d", "user_clicks_7d"]
    for t in range(N_TOPICS):
        is_t = (imp["topic"].to_numpy() == t).astype(np.float64)
        weights += [is_t, is_t * imp["click"].to_numpy()]
        names += [f"user_imps_7d_t{t}", f"user_clicks_7d_t{t}"]
    frames["user_stats"] = _frame("user_id", *_windowed(imp["user_id"], imp_day, weights, n_days,
                                                        names), first)

    frames["ad_stats"] = _frame("creative_id", *_windowed(
        imp["creative_id"], imp_day, [ones, imp["click"].to_numpy()], n_days,
        ["ad_imps_7d", "ad_clicks_7d"]), first)

    # publisher_stats: requests, impressions, clicks, bids, wins, mean paid CPM.
    auc = auc.merge(req[["request_id", "imp_id", "publisher_id"]], on=["request_id", "imp_id"],
                    how="left")
    parts = [
        (req["publisher_id"], _day_index(req["ts"], first), {"r": np.ones(len(req))}),
        (imp["publisher_id"], imp_day, {"i": ones, "c": imp["click"].to_numpy()}),
        (auc["publisher_id"], _day_index(auc["ts"], first),
         {"b": np.ones(len(auc)), "w": auc["won"].to_numpy(dtype=np.float64),
          "p": auc["paid_price"].to_numpy(dtype=np.float64)}),
    ]
    keys = pd.concat([p[0] for p in parts], ignore_index=True)
    days = np.concatenate([p[1] for p in parts])
    cols = []
    for name in ("r", "i", "c", "b", "w", "p"):
        cols.append(np.concatenate([p[2].get(name, np.zeros(len(p[0]))) for p in parts]))
    k, b, sums = _windowed(keys, days, cols, n_days, ["r", "i", "c", "b", "w", "p"])
    pub = {"pub_requests_7d": sums["r"], "pub_imps_7d": sums["i"], "pub_clicks_7d": sums["c"],
           "pub_bids_7d": sums["b"], "pub_wins_7d": sums["w"],
           "pub_mean_paid_7d": np.where(sums["w"] > 0, sums["p"] / np.maximum(sums["w"], 1), 0.0)}
    frames["publisher_stats"] = _frame("publisher_id", k, b, pub, first)
    return frames


def _frame(key: str, keys: np.ndarray, boundary: np.ndarray, sums: dict[str, np.ndarray],
           first: pd.Timestamp) -> pd.DataFrame:
    df = pd.DataFrame({key: keys, "event_timestamp": first + pd.to_timedelta(boundary, unit="D")})
    for name, values in sums.items():
        df[name] = values.astype(np.float32) if name.endswith("mean_paid_7d") else (
            np.rint(values).astype(np.int64))
    return df.sort_values(["event_timestamp", key], kind="stable").reset_index(drop=True)


def _creative_topics(workspace_root: Path) -> dict[str, int]:
    from features.campaign_info import creative_topics

    return creative_topics(workspace_root / "world" / "campaigns.json")


def write_views(frames: dict[str, pd.DataFrame], offline: Path) -> dict[str, int]:
    """Write each view's frame to ``offline/<view>.parquet``; returns row counts."""
    offline.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, df in frames.items():
        df.to_parquet(offline / f"{name}.parquet", index=False)
        counts[name] = len(df)
        log.info("feature view %s: %d rows", name, len(df))
    return counts


__all__ = ["WINDOW_DAYS", "compute_views", "write_views"]

"""Batch feature pipeline: event log -> point-in-time windowed aggregates -> offline parquet.

Every view is computed with :func:`features.windows.rolling` (sparse hourly snapshots,
exact 1h / 1d / 7d windows, explicit zeros when a window empties). Clicks count once
per impression for CTR (``*_clicks_*`` of user, ad, campaign, publisher) but every click
event counts for fraud velocity (``ip_clicks_*``, ``dev_clicks_*``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from adplatform.eventlog import read_events
from features.campaign_info import creative_topics
from features.repo import FLOAT_FIELDS, N_TOPICS, VIEWS
from features.windows import Window, hour_index, rolling

log = logging.getLogger(__name__)

H1, D1, D7 = 1, 24, 168
# A click within this many seconds of its impression is faster than people click.
FAST_CLICK_S = 2.0


def _w(name: str, weight: str, hours: int) -> Window:
    return Window(name, weight, hours)


def compute_views(events: Path) -> dict[str, pd.DataFrame]:
    """Every batch feature-view frame from the event log under ``events``."""
    req = read_events(events, "requests")
    if req.empty:
        return {name: pd.DataFrame(columns=[key, "event_timestamp", *fields])
                for name, _, key, fields in VIEWS}
    imp = read_events(events, "impressions")
    clk = read_events(events, "clicks")
    auc = read_events(events, "auctions")
    topics = creative_topics(events.parent / "world" / "campaigns.json")

    # Impressions with a once-per-impression click label and the creative's topic.
    clicked = clk[["request_id", "imp_id"]].drop_duplicates().assign(click=1.0)
    imp = imp.merge(clicked, on=["request_id", "imp_id"], how="left")
    imp["click"] = imp["click"].fillna(0.0)
    imp["one"] = 1.0
    topic = imp["creative_id"].map(topics).fillna(-1).to_numpy()
    imp_h = hour_index(imp["ts"])
    frames: dict[str, pd.DataFrame] = {}

    user_w = {"one": imp["one"].to_numpy(), "click": imp["click"].to_numpy()}
    user_windows = [_w("user_imps_1d", "one", D1), _w("user_clicks_1d", "click", D1),
                    _w("user_imps_7d", "one", D7), _w("user_clicks_7d", "click", D7)]
    for t in range(N_TOPICS):
        is_t = (topic == t).astype(np.float64)
        user_w[f"i{t}"], user_w[f"c{t}"] = is_t, is_t * imp["click"].to_numpy()
        user_windows += [_w(f"user_imps_7d_t{t}", f"i{t}", D7),
                         _w(f"user_clicks_7d_t{t}", f"c{t}", D7)]
    frames["user_stats"] = rolling("user_id", imp["user_id"], imp_h, user_w, user_windows)

    frames["ad_stats"] = rolling("creative_id", imp["creative_id"], imp_h,
                                 {"one": imp["one"].to_numpy(), "click": imp["click"].to_numpy()},
                                 [_w("ad_imps_1d", "one", D1), _w("ad_clicks_1d", "click", D1),
                                  _w("ad_imps_7d", "one", D7), _w("ad_clicks_7d", "click", D7)])

    frames["campaign_stats"] = rolling(
        "campaign_id", imp["campaign_id"], imp_h,
        {"one": imp["one"].to_numpy(), "click": imp["click"].to_numpy(),
         "cost": imp["cost"].to_numpy()},
        [_w("camp_imps_1h", "one", H1), _w("camp_imps_1d", "one", D1),
         _w("camp_imps_7d", "one", D7), _w("camp_clicks_1d", "click", D1),
         _w("camp_clicks_7d", "click", D7), _w("camp_spend_1h", "cost", H1),
         _w("camp_spend_1d", "cost", D1)])

    frames["publisher_stats"] = _publisher(req, imp, auc)
    frames["ip_stats"], frames["device_stats"] = _velocity(req, imp, clk)
    return {name: _typed(df) for name, df in frames.items()}


def _publisher(req: pd.DataFrame, imp: pd.DataFrame, auc: pd.DataFrame) -> pd.DataFrame:
    """Traffic, win and competing-price statistics per publisher (bid shading)."""
    auc = auc.merge(req[["request_id", "imp_id", "publisher_id"]], on=["request_id", "imp_id"],
                    how="left")
    reported = auc["min_bid_to_win"].notna().to_numpy(dtype=np.float64)
    parts = [
        pd.DataFrame({"k": req["publisher_id"], "h": hour_index(req["ts"]), "r": 1.0}),
        pd.DataFrame({"k": imp["publisher_id"], "h": hour_index(imp["ts"]), "i": 1.0,
                      "c": imp["click"].to_numpy()}),
        pd.DataFrame({"k": auc["publisher_id"], "h": hour_index(auc["ts"]), "b": 1.0,
                      "w": auc["won"].to_numpy(dtype=np.float64),
                      "p": auc["paid_price"].to_numpy(dtype=np.float64),
                      "n": reported, "m": auc["min_bid_to_win"].fillna(0.0).to_numpy()}),
    ]
    ev = pd.concat(parts, ignore_index=True)
    w = {c: ev[c].fillna(0.0).to_numpy() for c in "ricbwpnm"}
    df = rolling("publisher_id", ev["k"], ev["h"].to_numpy(dtype=np.int64), w, [
        _w("pub_requests_1h", "r", H1), _w("pub_requests_1d", "r", D1),
        _w("pub_requests_7d", "r", D7), _w("pub_imps_7d", "i", D7), _w("pub_clicks_7d", "c", D7),
        _w("pub_bids_7d", "b", D7), _w("pub_wins_7d", "w", D7), _w("_paid", "p", D7),
        _w("pub_reported_7d", "n", D7), _w("_mbtw", "m", D7)])
    df["pub_mean_paid_7d"] = np.where(df["pub_wins_7d"] > 0,
                                      df.pop("_paid") / df["pub_wins_7d"].clip(lower=1), 0.0)
    df["pub_mean_mbtw_7d"] = np.where(df["pub_reported_7d"] > 0,
                                      df.pop("_mbtw") / df["pub_reported_7d"].clip(lower=1), 0.0)
    return df


def _velocity(req: pd.DataFrame, imp: pd.DataFrame, clk: pd.DataFrame
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Request, impression and click velocity per ip and device, with click timing (fraud)."""
    ctx = req[["request_id", "imp_id", "ip", "device_id"]]
    imp_ctx = imp[["request_id", "imp_id", "ts"]].merge(ctx, on=["request_id", "imp_id"])
    clicks = clk[["request_id", "imp_id", "ts"]].merge(
        imp_ctx.rename(columns={"ts": "imp_ts"}), on=["request_id", "imp_id"], how="inner")
    delay = (clicks["ts"] - clicks["imp_ts"]).dt.total_seconds().to_numpy()
    repeat = clicks.duplicated(["request_id", "imp_id"]).to_numpy(dtype=np.float64)

    def events(key: str) -> tuple[pd.Series, np.ndarray, dict[str, np.ndarray]]:
        parts = [
            pd.DataFrame({"k": req[key], "h": hour_index(req["ts"]), "r": 1.0}),
            pd.DataFrame({"k": imp_ctx[key], "h": hour_index(imp_ctx["ts"]), "i": 1.0}),
            pd.DataFrame({"k": clicks[key], "h": hour_index(clicks["ts"]), "c": 1.0,
                          "f": (delay < FAST_CLICK_S).astype(np.float64), "x": repeat,
                          "d": delay}),
        ]
        ev = pd.concat(parts, ignore_index=True)
        return ev["k"], ev["h"].to_numpy(dtype=np.int64), {
            c: ev[c].fillna(0.0).to_numpy() for c in "ricfxd"}

    k, h, w = events("ip")
    ip = rolling("ip", k, h, w, [
        _w("ip_requests_1h", "r", H1), _w("ip_requests_1d", "r", D1), _w("ip_imps_1d", "i", D1),
        _w("ip_clicks_1h", "c", H1), _w("ip_clicks_1d", "c", D1)])
    k, h, w = events("device_id")
    dev = rolling("device_id", k, h, w, [
        _w("dev_requests_1h", "r", H1), _w("dev_requests_1d", "r", D1),
        _w("dev_imps_1d", "i", D1), _w("dev_clicks_1h", "c", H1), _w("dev_clicks_1d", "c", D1),
        _w("dev_fast_clicks_1d", "f", D1), _w("dev_repeat_clicks_1d", "x", D1),
        _w("_delay", "d", D1)])
    dev["dev_click_delay_1d"] = np.where(dev["dev_clicks_1d"] > 0,
                                         dev.pop("_delay") / dev["dev_clicks_1d"].clip(lower=1),
                                         0.0)
    return ip, dev


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    for c in df.columns[2:]:
        df[c] = df[c].astype(np.float32) if c in FLOAT_FIELDS else np.rint(df[c]).astype(np.int64)
    return df


def write_views(frames: dict[str, pd.DataFrame], offline: Path) -> dict[str, int]:
    """Write each view's frame to ``offline/<view>.parquet``; returns row counts."""
    offline.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, df in frames.items():
        df.to_parquet(offline / f"{name}.parquet", index=False)
        counts[name] = len(df)
        log.info("feature view %s: %d rows", name, len(df))
    return counts


__all__ = ["FAST_CLICK_S", "compute_views", "write_views"]

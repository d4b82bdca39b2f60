"""On-demand features and model input matrices, defined once for training and serving.

Training calls these on the frame ``get_historical_features`` returned (one row per
impression); serving calls them on the online values of one auction (K candidate rows,
the user/publisher values broadcast). Both paths produce the same float32 matrix, column
for column, so a model never sees a feature computed two ways.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from features.repo import AD_FIELDS, DEVICE_FIELDS, IP_FIELDS, N_TOPICS, USER_FIELDS

# Smoothing: ratios shrink towards PRIOR_CTR with PRIOR_WEIGHT pseudo-impressions, so a
# creative with 1 impression and 1 click is not a 100% CTR.
PRIOR_CTR = 0.01
PRIOR_WEIGHT = 50.0

FORMAT_CODES = {"banner": 0, "video": 1, "native": 2, "audio": 3}

# Columns the CTR model reads, in order. Changing this list is a new feature-service
# version (ctr_v2), never an edit of ctr_v1.
CTR_FEATURES: list[str] = [
    "user_imps", "user_clicks", "user_ctr",
    "user_topic_imps", "user_topic_clicks", "user_topic_ctr", "user_topic_share",
    *[f"user_ctr_t{t}" for t in range(N_TOPICS)],
    "ad_imps", "ad_clicks", "ad_ctr",
    "pub_imps", "pub_clicks", "pub_ctr",
    "hour", "device_type", "is_app", "format", "w", "h", "topic", "bidfloor",
    "user_missing", "ad_missing", "pub_missing",
]

# Raw feature-store columns the CTR matrix is built from.
CTR_RAW = [*USER_FIELDS, *AD_FIELDS, "pub_imps_7d", "pub_clicks_7d"]
# Request/ad context columns (on-demand inputs).
CONTEXT = ["hour", "device_type", "is_app", "format", "w", "h", "topic", "bidfloor"]


def _smooth(clicks: np.ndarray, imps: np.ndarray) -> np.ndarray:
    return (clicks + PRIOR_CTR * PRIOR_WEIGHT) / (imps + PRIOR_WEIGHT)


def _nz(x: np.ndarray) -> np.ndarray:
    # NaN (missing) -> 0. np.where rather than np.nan_to_num: the serving path calls this
    # ~40 times per auction on 1-20 rows, where nan_to_num's inf handling costs 5x more.
    return np.where(np.isnan(x), 0.0, x)


def _column(cols: Mapping[str, np.ndarray], name: str, n: int) -> np.ndarray:
    """``cols[name]`` as an (n,) float64 array; a scalar (an auction-level value) is
    repeated. An (n,) float64 array is returned as is (the training path's columns)."""
    v = cols[name]
    if isinstance(v, np.ndarray) and v.dtype == np.float64 and v.shape == (n,):
        return v
    a = np.asarray(v, dtype=np.float64)
    if a.shape == (n,):
        return a
    if a.size == 1:
        return np.full(n, a.reshape(()))
    return np.broadcast_to(a, (n,))               # raises on a length that does not fit


def ctr_matrix(cols: Mapping[str, np.ndarray]) -> np.ndarray:
    """(N, len(CTR_FEATURES)) float32 from raw store columns (NaN = missing) + context.

    ``cols`` maps every name in CTR_RAW and CONTEXT to an (N,) array (scalars broadcast).
    """
    n = max(np.size(v) for v in cols.values())

    def col(name: str) -> np.ndarray:
        return _column(cols, name, n)

    user_missing = np.isnan(col("user_imps_7d"))
    ad_missing = np.isnan(col("ad_imps_7d"))
    pub_missing = np.isnan(col("pub_imps_7d"))
    u_imps, u_clicks = _nz(col("user_imps_7d")), _nz(col("user_clicks_7d"))
    topic = col("topic").astype(np.int64)
    t_imps = np.stack([_nz(col(f"user_imps_7d_t{t}")) for t in range(N_TOPICS)], axis=1)
    t_clicks = np.stack([_nz(col(f"user_clicks_7d_t{t}")) for t in range(N_TOPICS)], axis=1)
    in_range = (topic >= 0) & (topic < N_TOPICS)
    idx = np.clip(topic, 0, N_TOPICS - 1)
    rows = np.arange(n)
    ut_imps = np.where(in_range, t_imps[rows, idx], 0.0)         # (N,)
    ut_clicks = np.where(in_range, t_clicks[rows, idx], 0.0)
    a_imps, a_clicks = _nz(col("ad_imps_7d")), _nz(col("ad_clicks_7d"))
    p_imps, p_clicks = _nz(col("pub_imps_7d")), _nz(col("pub_clicks_7d"))
    out = np.column_stack([
        u_imps, u_clicks, _smooth(u_clicks, u_imps),
        ut_imps, ut_clicks, _smooth(ut_clicks, ut_imps), ut_imps / np.maximum(u_imps, 1.0),
        *[_smooth(t_clicks[:, t], t_imps[:, t]) for t in range(N_TOPICS)],
        a_imps, a_clicks, _smooth(a_clicks, a_imps),
        p_imps, p_clicks, _smooth(p_clicks, p_imps),
        col("hour"), col("device_type"), col("is_app"), col("format"), col("w"), col("h"),
        topic.astype(np.float64), col("bidfloor"),
        user_missing, ad_missing, pub_missing,
    ])
    return out.astype(np.float32)                                  # (N, F)


# Columns the bid-shading model reads: the competition does not depend on our ad, so an
# auction has one shading row whatever its number of candidates.
SHADING_RAW = ["pub_requests_7d", "pub_bids_7d", "pub_wins_7d", "pub_mean_paid_7d"]
SHADING_FEATURES: list[str] = [
    "pub_bids", "pub_win_rate", "pub_mean_paid", "pub_missing",
    "hour", "device_type", "is_app", "format", "w", "h", "bidfloor",
]


def shading_matrix(cols: Mapping[str, np.ndarray]) -> np.ndarray:
    """(N, len(SHADING_FEATURES)) float32 from SHADING_RAW (NaN = missing) + context."""
    n = max(np.size(v) for v in cols.values())

    def col(name: str) -> np.ndarray:
        return _column(cols, name, n)

    missing = np.isnan(col("pub_bids_7d"))
    bids, wins = _nz(col("pub_bids_7d")), _nz(col("pub_wins_7d"))
    out = np.column_stack([
        bids, (wins + 1.0) / (bids + 2.0), _nz(col("pub_mean_paid_7d")), missing,
        col("hour"), col("device_type"), col("is_app"), col("format"), col("w"), col("h"),
        col("bidfloor"),
    ])
    return out.astype(np.float32)                                  # (N, F)


# Fraud: ip/device velocity and click behaviour from the store, IVT signals on demand.
FRAUD_RAW = [*IP_FIELDS, *DEVICE_FIELDS]
FRAUD_CONTEXT = ["ua_crawler", "dc_ip", "ua_len", "device_type", "is_app", "hour"]
FRAUD_FEATURES: list[str] = [
    *FRAUD_RAW, "ip_click_rate_1d", "dev_click_rate_1d", "dev_fast_share_1d", "ip_missing",
    "dev_missing", *FRAUD_CONTEXT,
]


def fraud_matrix(cols: Mapping[str, np.ndarray]) -> np.ndarray:
    """(N, len(FRAUD_FEATURES)) float32 from FRAUD_RAW (NaN = missing) + FRAUD_CONTEXT."""
    n = max(np.size(v) for v in cols.values())

    def col(name: str) -> np.ndarray:
        return _column(cols, name, n)

    raw = [_nz(col(f)) for f in FRAUD_RAW]
    ip_imps, ip_clicks = _nz(col("ip_imps_1d")), _nz(col("ip_clicks_1d"))
    dev_imps, dev_clicks = _nz(col("dev_imps_1d")), _nz(col("dev_clicks_1d"))
    out = np.column_stack([
        *raw, ip_clicks / np.maximum(ip_imps, 1.0), dev_clicks / np.maximum(dev_imps, 1.0),
        _nz(col("dev_fast_clicks_1d")) / np.maximum(dev_clicks, 1.0),
        np.isnan(col("ip_requests_1d")), np.isnan(col("dev_requests_1d")),
        *[col(c) for c in FRAUD_CONTEXT],
    ])
    return out.astype(np.float32)                                  # (N, F)


def format_code(fmt: str) -> int:
    return FORMAT_CODES.get(fmt, -1)


__all__ = ["CONTEXT", "CTR_FEATURES", "CTR_RAW", "FORMAT_CODES", "PRIOR_CTR", "PRIOR_WEIGHT",
           "FRAUD_CONTEXT", "FRAUD_FEATURES", "FRAUD_RAW", "SHADING_FEATURES", "SHADING_RAW",
           "ctr_matrix", "format_code", "fraud_matrix", "shading_matrix"]

"""On-demand features and model input matrices, defined once for training and serving.

Training calls these on the frame ``get_historical_features`` returned (one row per
impression); serving calls them on the online values of one auction (K candidate rows,
the user/publisher values broadcast). Both paths produce the same float32 matrix, column
for column, so a model never sees a feature computed two ways.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

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


class ColumnLayout:
    """Column names of a :class:`ColumnBlock`, with the index arrays the builders take."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self.index = {name: i for i, name in enumerate(self.names)}
        if len(self.index) != len(self.names):
            raise ValueError("ColumnLayout: duplicate column names")
        self._takes: dict[tuple[str, ...], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.names)

    def take(self, names: tuple[str, ...]) -> np.ndarray:
        """The positions of ``names`` (computed once per tuple); KeyError if one is absent."""
        idx = self._takes.get(names)
        if idx is None:
            idx = self._takes[names] = np.array([self.index[n] for n in names], dtype=np.intp)
        return idx


class ColumnBlock(Mapping[str, np.ndarray]):
    """Named float64 columns held as one (N, C) matrix.

    The serving path writes an auction's raw features straight into one matrix, and the
    builders below take whole groups of columns from it with one fancy index each:
    a handful of numpy calls per auction rather than one or more per column. Training
    passes plain mappings of (N,) columns; both give the same matrices.
    """

    __slots__ = ("layout", "matrix")

    def __init__(self, layout: ColumnLayout, values: np.ndarray) -> None:
        if values.ndim != 2 or values.shape[1] != len(layout):
            raise ValueError(f"ColumnBlock: values {values.shape} do not fit "
                             f"{len(layout)} columns")
        self.layout, self.matrix = layout, values

    def __getitem__(self, name: str) -> np.ndarray:
        return self.matrix[:, self.layout.index[name]]

    def __iter__(self) -> Iterator[str]:
        return iter(self.layout.names)

    def __len__(self) -> int:
        return len(self.layout)

    def head(self, n: int) -> ColumnBlock:
        """The first ``n`` rows (a view)."""
        return ColumnBlock(self.layout, self.matrix[:n])


def _rows(cols: Mapping[str, np.ndarray]) -> int:
    if isinstance(cols, ColumnBlock):
        return int(cols.matrix.shape[0])
    return max(np.size(v) for v in cols.values())


def _block(cols: Mapping[str, np.ndarray], names: tuple[str, ...], n: int) -> np.ndarray:
    """(n, len(names)) float64: the named columns side by side (scalars repeated)."""
    if isinstance(cols, ColumnBlock):
        return cols.matrix[:, cols.layout.take(names)]
    out = np.empty((n, len(names)))
    for j, name in enumerate(names):
        out[:, j] = _column(cols, name, n)
    return out


# Each builder takes its inputs as one block: the raw store columns first (NaN = missing),
# then the context columns, which are used as they are.
_T = N_TOPICS
_CTR_IN = ("user_imps_7d", "user_clicks_7d", *[f"user_imps_7d_t{t}" for t in range(_T)],
           *[f"user_clicks_7d_t{t}" for t in range(_T)], "ad_imps_7d", "ad_clicks_7d",
           "pub_imps_7d", "pub_clicks_7d", *CONTEXT)
_CTR_N_RAW = 2 * _T + 6
_TOPIC = _CTR_N_RAW + CONTEXT.index("topic")


# ctr_matrix computes every smoothed ratio in one call over a gathered (N, T + 4) pair of
# imps and clicks matrices, then lays the columns out with one gather: about 25 numpy
# calls instead of 50, whatever N (an auction has 20 rows: the calls, not the data, cost).
# Column positions, in the raw block x: user 0/1, topics 2.., ad and pub after them; the
# candidate topic's user imps and clicks are appended at _R_UT, _R_UT + 1.
_R_UT = _CTR_N_RAW
_IMPS = np.array([0, _R_UT, *range(2, 2 + _T), 2 * _T + 2, 2 * _T + 4])        # (T + 4,)
_CLICKS = np.array([1, _R_UT + 1, *range(2 + _T, 2 + 2 * _T), 2 * _T + 3, 2 * _T + 5])
_MISSING = np.array([0, 2 * _T + 2, 2 * _T + 4])            # user, ad, pub raw columns
_TOPIC_COLS = np.array([2, 2 + _T])                          # topic 0's imps and clicks


def _ctr_layout() -> np.ndarray:
    """Where each CTR_FEATURES column comes from in the concatenation of ctr_matrix:
    imps (T + 4), clicks (T + 4), smoothed (T + 4), share (1), context, missing (3)."""
    w = _T + 4
    i, c, s = 0, w, 2 * w                   # first column of each block
    share, ctx = 3 * w, 3 * w + 1
    ad, pub = _T + 2, _T + 3                # position of ad and pub inside a block
    return np.array([i, c, s, i + 1, c + 1, s + 1, share, *range(s + 2, s + 2 + _T),
                     i + ad, c + ad, s + ad, i + pub, c + pub, s + pub,
                     *range(ctx, ctx + len(CONTEXT)),
                     *range(ctx + len(CONTEXT), ctx + len(CONTEXT) + 3)])


_CTR_LAYOUT = _ctr_layout()
_OUT_TOPIC = 7 + _T + 6 + CONTEXT.index("topic")


def ctr_matrix(cols: Mapping[str, np.ndarray]) -> np.ndarray:
    """(N, len(CTR_FEATURES)) float32 from raw store columns (NaN = missing) + context.

    ``cols`` maps every name in CTR_RAW and CONTEXT to an (N,) array (scalars broadcast),
    or is a :class:`ColumnBlock` holding them.
    """
    n = _rows(cols)
    x = _block(cols, _CTR_IN, n)                                   # (N, 2T + 6 + 8)
    raw = x[:, :_CTR_N_RAW]
    nan = np.isnan(raw)
    z = np.where(nan, 0.0, raw)                                    # missing -> 0
    topic = x[:, _TOPIC].astype(np.int64)
    in_range = (topic >= 0) & (topic < _T)
    idx = np.minimum(np.maximum(topic, 0), _T - 1)
    ut = z[np.arange(n)[:, None], idx[:, None] + _TOPIC_COLS]     # (N, 2) topic imps, clicks
    z = np.concatenate((z, np.where(in_range[:, None], ut, 0.0)), axis=1)   # (N, R + 2)
    imps, clicks = z[:, _IMPS], z[:, _CLICKS]                      # (N, T + 4) each
    smooth = _smooth(clicks, imps)
    share = z[:, _R_UT:_R_UT + 1] / np.maximum(z[:, :1], 1.0)      # (N, 1) topic share
    parts = np.concatenate((imps, clicks, smooth, share, x[:, _CTR_N_RAW:], nan[:, _MISSING]),
                           axis=1)
    out = parts[:, _CTR_LAYOUT].astype(np.float32)
    out[:, _OUT_TOPIC] = topic
    return out                                                     # (N, F)


# Columns the bid-shading model reads: the competition does not depend on our ad, so an
# auction has one shading row whatever its number of candidates.
SHADING_RAW = ["pub_requests_7d", "pub_bids_7d", "pub_wins_7d", "pub_mean_paid_7d"]
SHADING_CONTEXT = ["hour", "device_type", "is_app", "format", "w", "h", "bidfloor"]
SHADING_FEATURES: list[str] = [
    "pub_bids", "pub_win_rate", "pub_mean_paid", "pub_missing", *SHADING_CONTEXT,
]
_SHADING_IN = ("pub_bids_7d", "pub_wins_7d", "pub_mean_paid_7d", *SHADING_CONTEXT)


def shading_matrix(cols: Mapping[str, np.ndarray]) -> np.ndarray:
    """(N, len(SHADING_FEATURES)) float32 from SHADING_RAW (NaN = missing) + context."""
    n = _rows(cols)
    x = _block(cols, _SHADING_IN, n)                               # (N, 3 + 7)
    missing = np.isnan(x[:, 0])
    z = np.where(np.isnan(x[:, :3]), 0.0, x[:, :3])
    out = np.empty((n, len(SHADING_FEATURES)), dtype=np.float32)
    out[:, 0] = z[:, 0]
    out[:, 1] = (z[:, 1] + 1.0) / (z[:, 0] + 2.0)
    out[:, 2] = z[:, 2]
    out[:, 3] = missing
    out[:, 4:] = x[:, 3:]
    return out                                                     # (N, F)


# Fraud: ip/device velocity and click behaviour from the store, IVT signals on demand.
FRAUD_RAW = [*IP_FIELDS, *DEVICE_FIELDS]
FRAUD_CONTEXT = ["ua_crawler", "dc_ip", "ua_len", "device_type", "is_app", "hour"]
FRAUD_FEATURES: list[str] = [
    *FRAUD_RAW, "ip_click_rate_1d", "dev_click_rate_1d", "dev_fast_share_1d", "ip_missing",
    "dev_missing", *FRAUD_CONTEXT,
]
_FRAUD_IN = (*FRAUD_RAW, *FRAUD_CONTEXT)
_R = len(FRAUD_RAW)
_FI = {name: i for i, name in enumerate(FRAUD_RAW)}


def fraud_matrix(cols: Mapping[str, np.ndarray]) -> np.ndarray:
    """(N, len(FRAUD_FEATURES)) float32 from FRAUD_RAW (NaN = missing) + FRAUD_CONTEXT."""
    n = _rows(cols)
    x = _block(cols, _FRAUD_IN, n)                                 # (N, R + 6)
    nan = np.isnan(x[:, :_R])
    z = np.where(nan, 0.0, x[:, :_R])
    out = np.empty((n, len(FRAUD_FEATURES)), dtype=np.float32)
    out[:, :_R] = z
    dev_clicks = z[:, _FI["dev_clicks_1d"]]
    out[:, _R] = z[:, _FI["ip_clicks_1d"]] / np.maximum(z[:, _FI["ip_imps_1d"]], 1.0)
    out[:, _R + 1] = dev_clicks / np.maximum(z[:, _FI["dev_imps_1d"]], 1.0)
    out[:, _R + 2] = z[:, _FI["dev_fast_clicks_1d"]] / np.maximum(dev_clicks, 1.0)
    out[:, _R + 3] = nan[:, _FI["ip_requests_1d"]]
    out[:, _R + 4] = nan[:, _FI["dev_requests_1d"]]
    out[:, _R + 5:] = x[:, _R:]
    return out                                                     # (N, F)


def format_code(fmt: str) -> int:
    return FORMAT_CODES.get(fmt, -1)


__all__ = ["CONTEXT", "CTR_FEATURES", "CTR_RAW", "FORMAT_CODES", "PRIOR_CTR", "PRIOR_WEIGHT",
           "ColumnBlock", "ColumnLayout", "FRAUD_CONTEXT", "FRAUD_FEATURES", "FRAUD_RAW",
           "SHADING_CONTEXT", "SHADING_FEATURES", "SHADING_RAW",
           "ctr_matrix", "format_code", "fraud_matrix", "shading_matrix"]

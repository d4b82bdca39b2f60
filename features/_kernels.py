"""Compiled (numba) builders of one auction's model inputs: the serving fast path.

:func:`features.vectorize.ctr_matrix`, ``fraud_matrix`` and ``shading_matrix`` define
the features, for training and serving alike. On an auction (20 rows) their cost is the
number of numpy calls, not the data: about 25 calls for the CTR matrix alone. The
kernels here compute the same matrices from the
same :class:`~features.vectorize.ColumnBlock` in one pass each, with the same float64
operations in the same order and the same float32 rounding, so their output is
bit-identical to the numpy builders (tests/features/test_kernels.py compares them on
random blocks with missing values and out-of-range topics).

The kernels compile on first use and numba caches the machine
code beside this file; :func:`warm` compiles them up front, which
:class:`features.reader.OnlineReader` does when it is created, so that no auction pays
for the compilation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from features import vectorize as v

_T = v.N_TOPICS
_R = v._CTR_N_RAW                   # raw CTR store columns (user, topics, ad, pub)
_TOPIC_IMPS, _TOPIC_CLICKS = (int(c) for c in v._TOPIC_COLS)   # topic 0's imps, clicks
_NCTX = len(v.CONTEXT)
_SMOOTH_ADD = v.PRIOR_CTR * v.PRIOR_WEIGHT   # the float numpy's _smooth adds
_SMOOTH_W = v.PRIOR_WEIGHT
_OUT_TOPIC = v._OUT_TOPIC
_TOPIC_IN = _R + v.CONTEXT.index("topic")
_INT64_MIN = np.iinfo(np.int64).min
_FR = len(v.FRAUD_RAW)
_FI = v._FI
_F_IP_CLICKS, _F_IP_IMPS = _FI["ip_clicks_1d"], _FI["ip_imps_1d"]
_F_DEV_CLICKS, _F_DEV_IMPS = _FI["dev_clicks_1d"], _FI["dev_imps_1d"]
_F_DEV_FAST = _FI["dev_fast_clicks_1d"]
_F_IP_REQ, _F_DEV_REQ = _FI["ip_requests_1d"], _FI["dev_requests_1d"]
_N_FRAUD_CTX = len(v._FRAUD_IN) - _FR
_N_SHADING_CTX = len(v._SHADING_IN) - 3

_compiled: dict[str, Any] = {}


def _ctr(m: np.ndarray, cols: np.ndarray, imps: np.ndarray, clicks: np.ndarray,
         missing: np.ndarray, layout: np.ndarray, out: np.ndarray) -> None:
    """``out`` (N, F) float32 ← ctr_matrix of the block ``m`` (N, C) float64, whose
    ``_CTR_IN`` columns sit at ``cols``. ``imps``, ``clicks``, ``missing`` and
    ``layout`` are vectorize's ``_IMPS``, ``_CLICKS``, ``_MISSING`` and ``_CTR_LAYOUT``:
    the positions are vectorize's, only the loop is compiled."""
    z = np.empty(_R + 2)                 # the raw row (missing -> 0) + topic imps, clicks
    nb = imps.shape[0]
    parts = np.empty(3 * nb + 1 + _NCTX + missing.shape[0])  # ctr_matrix's concatenation
    for i in range(m.shape[0]):
        for j in range(_R):
            a = m[i, cols[j]]
            z[j] = 0.0 if np.isnan(a) else a
        tf = m[i, cols[_TOPIC_IN]]
        # numpy's float -> int64 cast gives INT64_MIN for NaN and out-of-range values on
        # x86; an LLVM cast of those would be undefined, so they are spelt out.
        topic = (np.int64(tf) if not np.isnan(tf) and -9.2e18 < tf < 9.2e18
                 else np.int64(_INT64_MIN))
        z[_R], z[_R + 1] = 0.0, 0.0
        if 0 <= topic < _T:
            z[_R], z[_R + 1] = z[_TOPIC_IMPS + topic], z[_TOPIC_CLICKS + topic]
        for j in range(nb):
            parts[j] = z[imps[j]]
            parts[nb + j] = z[clicks[j]]
            parts[2 * nb + j] = (parts[nb + j] + _SMOOTH_ADD) / (parts[j] + _SMOOTH_W)
        parts[3 * nb] = z[_R] / max(z[0], 1.0)           # user topic share
        for j in range(_NCTX):
            parts[3 * nb + 1 + j] = m[i, cols[_R + j]]
        for j in range(missing.shape[0]):
            parts[3 * nb + 1 + _NCTX + j] = 1.0 if np.isnan(m[i, cols[missing[j]]]) else 0.0
        for k in range(layout.shape[0]):
            out[i, k] = np.float32(parts[layout[k]])
        out[i, _OUT_TOPIC] = np.float32(topic)


def _fraud(m: np.ndarray, cols: np.ndarray, out: np.ndarray) -> None:
    """``out`` (N, F) float32 ← fraud_matrix of the block ``m``; ``_FRAUD_IN`` at ``cols``."""
    z = np.empty(_FR)
    for i in range(m.shape[0]):
        for j in range(_FR):
            a = m[i, cols[j]]
            z[j] = 0.0 if np.isnan(a) else a
            out[i, j] = np.float32(z[j])
        dev_clicks = z[_F_DEV_CLICKS]
        out[i, _FR] = np.float32(z[_F_IP_CLICKS] / max(z[_F_IP_IMPS], 1.0))
        out[i, _FR + 1] = np.float32(dev_clicks / max(z[_F_DEV_IMPS], 1.0))
        out[i, _FR + 2] = np.float32(z[_F_DEV_FAST] / max(dev_clicks, 1.0))
        out[i, _FR + 3] = 1.0 if np.isnan(m[i, cols[_F_IP_REQ]]) else 0.0
        out[i, _FR + 4] = 1.0 if np.isnan(m[i, cols[_F_DEV_REQ]]) else 0.0
        for j in range(_N_FRAUD_CTX):
            out[i, _FR + 5 + j] = np.float32(m[i, cols[_FR + j]])


def _shading(m: np.ndarray, cols: np.ndarray, out: np.ndarray) -> None:
    """``out`` (N, F) float32 ← shading_matrix of ``m``; ``_SHADING_IN`` at ``cols``."""
    for i in range(m.shape[0]):
        bids, wins, paid = m[i, cols[0]], m[i, cols[1]], m[i, cols[2]]
        missing = np.isnan(bids)
        bids = 0.0 if missing else bids
        wins = 0.0 if np.isnan(wins) else wins
        paid = 0.0 if np.isnan(paid) else paid
        out[i, 0] = np.float32(bids)
        out[i, 1] = np.float32((wins + 1.0) / (bids + 2.0))
        out[i, 2] = np.float32(paid)
        out[i, 3] = 1.0 if missing else 0.0
        for j in range(_N_SHADING_CTX):
            out[i, 4 + j] = np.float32(m[i, cols[3 + j]])


def _kernel(name: str) -> Any:
    fn = _compiled.get(name)
    if fn is None:
        import numba

        # cache=True: the machine code is written beside this file (or numba's user
        # cache dir) and reloaded by the next process, e.g. each worker of a server.
        fn = _compiled[name] = numba.njit(cache=True, nogil=True)(
            {"ctr": _ctr, "fraud": _fraud, "shading": _shading}[name])
    return fn


def ctr_matrix(cols: v.ColumnBlock) -> np.ndarray:
    """:func:`features.vectorize.ctr_matrix` of a block, compiled; the same bits."""
    m = cols.matrix
    out = np.empty((m.shape[0], len(v.CTR_FEATURES)), dtype=np.float32)    # (N, F)
    _kernel("ctr")(m, cols.layout.take(v._CTR_IN), v._IMPS, v._CLICKS, v._MISSING,
                   v._CTR_LAYOUT, out)
    return out


def fraud_matrix(cols: v.ColumnBlock) -> np.ndarray:
    """:func:`features.vectorize.fraud_matrix` of a block, compiled; the same bits."""
    m = cols.matrix
    out = np.empty((m.shape[0], len(v.FRAUD_FEATURES)), dtype=np.float32)  # (N, F)
    _kernel("fraud")(m, cols.layout.take(v._FRAUD_IN), out)
    return out


def shading_matrix(cols: v.ColumnBlock) -> np.ndarray:
    """:func:`features.vectorize.shading_matrix` of a block, compiled; the same bits."""
    m = cols.matrix
    out = np.empty((m.shape[0], len(v.SHADING_FEATURES)), dtype=np.float32)  # (N, F)
    _kernel("shading")(m, cols.layout.take(v._SHADING_IN), out)
    return out


def warm(layout: v.ColumnLayout) -> None:
    """Compile (or load from numba's cache) every kernel for blocks of ``layout``."""
    block = v.ColumnBlock(layout, np.full((1, len(layout)), np.nan))
    ctr_matrix(block)
    fraud_matrix(block)
    shading_matrix(block)


__all__ = ["ctr_matrix", "fraud_matrix", "shading_matrix", "warm"]

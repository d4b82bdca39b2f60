"""DRSA bid-landscape data (Ren et al., AAAI 2019; iPinYou campaign 2259).

Files per split (``train`` / ``test``), row-aligned:

* ``<split>.yzbx.txt`` -- space-separated ``y z b idx:1 idx:1 ...``: ``y`` the click,
  ``z`` the market price (iPinYou payprice, the price to beat), ``b`` the bid of a
  *simulated* bidder, then multi-hot feature indices into ``featindex.txt``.
* ``<split>.bid.txt`` -- ``b win`` per row, where ``win == (z < b)`` (ties lose).

Censoring: the simulated bidder wins when ``z < b`` and then observes ``z``; when it loses
it only learns ``z >= b`` -- the market price is right-censored at ``b``. The file still
carries the true ``z`` of lost rows (the data is a simulation on won iPinYou auctions), so
:attr:`BidLandscape.observed` says which rows a real bidder could use ``z`` from; train on
``market_price`` only where ``observed`` (or use :meth:`BidLandscape.observed_market_price`).

``<split>.log.txt`` holds iPinYou-style log rows (``click, weekday, hour`` then the 24
log columns; test adds two trailing integer columns, validated and dropped). They are NOT
row-aligned with the yzbx rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from adplatform.errors import DataError
from training.loaders._tabular import (
    Column,
    first_bad_row,
    first_line,
    parse_table,
    read_text,
)
from training.loaders.datasets import require
from training.loaders.ipinyou import with_prefix
from training.loaders.libfm import SparseFeatures, check_range, parse_sparse_rows, read_featindex

DrsaSplit = Literal["train", "test"]
_SPLITS: tuple[DrsaSplit, ...] = ("train", "test")
_LOG_PREFIX = (
    Column("click", "int", "int8", lo=0, hi=1),
    Column("weekday", "int", "int8", lo=0, hi=6),
    Column("hour", "int", "int8", lo=0, hi=23),
)
_LOG_EXTRA = (Column("extra_1", "int", "int64"), Column("extra_2", "int", "int64"))


@dataclass(frozen=True, eq=False)
class BidLandscape:
    """Row-aligned arrays of a DRSA split.

    ``click`` (int8, ``y``), ``market_price`` (int32, ``z``), ``bid`` (int32, ``b``),
    ``observed`` (bool: the bid won, ``z < b``, so ``z`` is observed; False: censored,
    only ``z >= b`` is known) and ``features`` (multi-hot feature indices per row).
    """

    click: np.ndarray
    market_price: np.ndarray
    bid: np.ndarray
    observed: np.ndarray
    features: SparseFeatures

    def __len__(self) -> int:
        return len(self.click)

    @property
    def win_rate(self) -> float:
        """Share of rows the simulated bidder won."""
        return float(self.observed.mean()) if len(self) else float("nan")

    def observed_market_price(self) -> np.ndarray:
        """``market_price`` as float64 with NaN on censored (lost) rows."""
        return np.where(self.observed, self.market_price.astype(np.float64), np.nan)


def read_drsa(yzbx_path: str | Path, bid_path: str | Path | None = None, *,
              nrows: int | None = None) -> BidLandscape:
    """Read a ``yzbx`` file and, if given, check it against its ``bid`` file.

    Without ``bid_path``, ``observed`` is ``z < b``. With it, every ``b`` must equal the
    bid file's ``b`` and every ``win`` must equal ``z < b``; a disagreement is a
    :class:`DataError` naming the bid file and line.
    """
    yzbx_path = Path(yzbx_path)
    if nrows is not None and nrows < 0:
        raise ValueError(f"nrows must be >= 0, got {nrows}")
    leading, features = parse_sparse_rows(read_text(yzbx_path, max_lines=nrows), yzbx_path,
                                          ("y", "z", "b"))
    click, market, bid = leading[:, 0], leading[:, 1], leading[:, 2]
    check_range(click, yzbx_path, "y", lo=0, hi=1)
    int32_max = int(np.iinfo(np.int32).max)
    check_range(market, yzbx_path, "z", lo=0, hi=int32_max)
    check_range(bid, yzbx_path, "b", lo=0, hi=int32_max)
    observed = market < bid
    if bid_path is not None:
        _check_bids(Path(bid_path), yzbx_path, market, bid, observed, nrows=nrows)
    return BidLandscape(click=click.astype(np.int8), market_price=market.astype(np.int32),
                        bid=bid.astype(np.int32), observed=observed, features=features)


def _check_bids(bid_path: Path, yzbx_path: Path, market: np.ndarray, bid: np.ndarray,
                observed: np.ndarray, *, nrows: int | None) -> None:
    columns = [Column("b", "int", "int32", lo=0), Column("win", "int", "int8", lo=0, hi=1)]
    frame = parse_table(read_text(bid_path, max_lines=nrows), bid_path, columns, sep=" ")
    if len(frame) != len(bid):
        raise DataError(f"{len(frame)} rows but {yzbx_path} has {len(bid)}",
                        path=str(bid_path), line=min(len(frame), len(bid)) + 1)
    other_bid = frame["b"].to_numpy()
    row = first_bad_row(other_bid != bid)
    if row is not None:
        raise DataError(f"b={other_bid[row]} but {yzbx_path}:{row + 1} has b={bid[row]}",
                        path=str(bid_path), line=row + 1)
    win = frame["win"].to_numpy() == 1
    row = first_bad_row(win != observed)
    if row is not None:
        raise DataError(f"win={int(win[row])} but z={market[row]}, b={bid[row]} "
                        f"(win must equal z < b)", path=str(bid_path), line=row + 1)


def read_drsa_log(path: str | Path, *, nrows: int | None = None) -> pd.DataFrame:
    """Read a DRSA ``*.log.txt``: int8 ``click``, ``weekday``, ``hour``, then the iPinYou
    log columns of :mod:`training.loaders.ipinyou` (the useragent is normalised, e.g.
    ``windows_chrome``). Two trailing integer columns (test) are validated and dropped.
    """
    path = Path(path)
    if nrows is not None and nrows < 0:
        raise ValueError(f"nrows must be >= 0, got {nrows}")
    data = read_text(path, max_lines=nrows)
    columns = with_prefix(_LOG_PREFIX)
    if first_line(data).count("\t") + 1 == len(columns) + len(_LOG_EXTRA):
        columns = [*columns, *_LOG_EXTRA]
    frame = parse_table(data, path, columns, sep="\t")
    return frame.drop(columns=[col.name for col in _LOG_EXTRA], errors="ignore")


def _split_file(split: DrsaSplit, part: str) -> Path:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    return require("ipinyou_2259_bid_landscape_drsa") / f"{split}.{part}.txt"


def load_drsa_sample(split: DrsaSplit = "train") -> BidLandscape:
    """Campaign 2259's ``train`` (8,355 rows, win rate 34.4 %) or ``test`` (4,171, 23.9 %),
    checked against the split's bid file."""
    return read_drsa(_split_file(split, "yzbx"), _split_file(split, "bid"))


def load_drsa_log_sample(split: DrsaSplit = "train") -> pd.DataFrame:
    """The split's log rows (not row-aligned with :func:`load_drsa_sample`)."""
    return read_drsa_log(_split_file(split, "log"))


def load_drsa_featindex() -> pd.DataFrame:
    """Campaign 2259's ``featindex.txt`` (97,420 entries; fields are numbered 0..15)."""
    return read_featindex(require("ipinyou_2259_bid_landscape_drsa") / "featindex.txt")

"""iPinYou RTB logs (season 2 and 3 impression / click / conversion logs).

Format: TAB-separated, no header, 24 fields (CRLF line ends are accepted):
``bidid, timestamp, logtype, ipinyouid, useragent, IP, region, city, adexchange, domain,
url, urlid, slotid, slotwidth, slotheight, slotvisibility, slotformat, slotprice,
creative, bidprice, payprice, keypage, advertiser, usertag``.

Returned frame (one row per line, file order; the IP column is named ``ip``):

=============================================  ===============  ============================
columns                                        dtype            meaning
=============================================  ===============  ============================
timestamp                                      datetime64[ns]   ``yyyyMMddHHmmssSSS``, local
                                                                time (China), ms resolution
logtype                                        int8             1 imp, 2 click, 3 conversion
region, city, slotwidth, slotheight,           int32            ids / pixels / prices in
slotprice, bidprice, payprice, advertiser                       integer CPM units
adexchange                                     Int32            exchange id; ``<NA>`` = null
bidid, ipinyouid, useragent, ip, domain,       string[pyarrow]  ``<NA>`` where the log says
url, urlid, slotid, slotvisibility,                             ``null`` or the field is
slotformat, creative, keypage, usertag                          empty
=============================================  ===============  ============================

``slotprice`` is the floor; ``payprice`` is the second-price clearing price (the market
price) of a won auction; ``usertag`` is a comma-separated list of user-segment ids.
``slotvisibility``/``slotformat`` are codes in season 2 and words in season 3, so text.

Quirk: ``conv.20130606.txt`` of the season-2 sample has one 23-field row (usertag absent).
That is a :class:`DataError` unless ``allow_missing_usertag=True``, which reads the absent
usertag as ``<NA>``; any other field count is always an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import pandas as pd

from adplatform.errors import DataError
from training.loaders._tabular import Column, parse_table, read_text
from training.loaders.datasets import require

IPINYOU_COLUMNS: tuple[str, ...] = (
    "bidid", "timestamp", "logtype", "ipinyouid", "useragent", "ip", "region", "city",
    "adexchange", "domain", "url", "urlid", "slotid", "slotwidth", "slotheight",
    "slotvisibility", "slotformat", "slotprice", "creative", "bidprice", "payprice",
    "keypage", "advertiser", "usertag",
)
_INT_COLUMNS = frozenset({"region", "city", "slotwidth", "slotheight", "slotprice", "bidprice",
                          "payprice", "advertiser"})
_NON_NEGATIVE = frozenset({"slotwidth", "slotheight", "slotprice", "bidprice", "payprice"})
_NULL = ("null",)

Season2Kind = Literal["imp", "clk", "conv", "old_imp"]
Season3Kind = Literal["imp", "clk"]
_SEASON2_GLOBS: dict[str, tuple[str, str]] = {
    "imp": ("trainingData", "imp.*.txt"),
    "clk": ("trainingData", "clk.*.txt"),
    "conv": ("trainingData", "conv.*.txt"),
    "old_imp": ("trainingData/old_impressions", "imp.*.txt"),
}
_SEASON3_GLOBS: dict[str, tuple[str, str]] = {
    "imp": ("training3rd", "imp.*.txt"),
    "clk": ("training3rd", "clk.*.txt"),
}


def ipinyou_column(name: str) -> Column:
    """How the loaders parse iPinYou log column ``name``."""
    if name == "timestamp":
        return Column(name, "datetime", time_style="yyyymmddhhmmssfff")
    if name == "logtype":
        return Column(name, "int", "int8", lo=1, hi=3)
    if name == "adexchange":
        return Column(name, "nullable_int", "Int32", null=_NULL)
    if name in _INT_COLUMNS:
        return Column(name, "int", "int32", lo=0 if name in _NON_NEGATIVE else None)
    return Column(name, "str", null=_NULL)


def ipinyou_columns() -> list[Column]:
    """The 24 log columns, in file order."""
    return [ipinyou_column(name) for name in IPINYOU_COLUMNS]


def read_ipinyou_log(path: str | Path, *, allow_missing_usertag: bool = False,
                     nrows: int | None = None) -> pd.DataFrame:
    """Read one iPinYou log file (see the module doc for columns and dtypes).

    Raises :class:`~adplatform.errors.DataError` naming the file and line of the first
    malformed row (wrong field count, non-integer price, bad timestamp...).
    """
    path = Path(path)
    if nrows is not None and nrows < 0:
        raise ValueError(f"nrows must be >= 0, got {nrows}")
    data = read_text(path, max_lines=nrows)
    full = len(IPINYOU_COLUMNS)
    counts = {full, full - 1} if allow_missing_usertag else {full}
    hints = {} if allow_missing_usertag else {full - 1: "usertag absent? "
                                                        "pass allow_missing_usertag=True"}
    return parse_table(data, path, ipinyou_columns(), sep="\t", field_counts=counts,
                       count_hints=hints)


def read_ipinyou_logs(paths: Iterable[str | Path], *, allow_missing_usertag: bool = False) -> pd.DataFrame:
    """Read several log files into one frame, in the given order (index 0..n-1)."""
    frames = [read_ipinyou_log(path, allow_missing_usertag=allow_missing_usertag)
              for path in paths]
    if not frames:
        raise ValueError("no iPinYou log files given")
    return pd.concat(frames, ignore_index=True)


def _log_files(folder: Path, subdir: str, pattern: str) -> list[Path]:
    files = sorted((folder / subdir).glob(pattern))
    if not files:
        raise DataError(f"no {pattern} files", path=str(folder / subdir))
    return files


def ipinyou_season2_files(kind: Season2Kind = "imp") -> list[Path]:
    """The season-2 sample's log files of ``kind``, one per day, sorted by day."""
    if kind not in _SEASON2_GLOBS:
        raise ValueError(f"kind must be one of {sorted(_SEASON2_GLOBS)}, got {kind!r}")
    return _log_files(require("ipinyou_season2_userCTR"), *_SEASON2_GLOBS[kind])


def ipinyou_season3_files(kind: Season3Kind = "imp") -> list[Path]:
    """The season-3 (advertiser 2821) sample's log files of ``kind``."""
    if kind not in _SEASON3_GLOBS:
        raise ValueError(f"kind must be one of {sorted(_SEASON3_GLOBS)}, got {kind!r}")
    return _log_files(require("ipinyou_season3_adv2821"), *_SEASON3_GLOBS[kind])


def load_ipinyou_season2(kind: Season2Kind = "imp", *,
                         allow_missing_usertag: bool = False) -> pd.DataFrame:
    """Season-2 sample logs (2013-06-06..12) of ``kind``, all days concatenated.

    ``imp``/``old_imp``: 42,000 rows each (two independent 6,000/day samples); ``clk``:
    9,978 rows; ``conv``: 494 rows, which needs ``allow_missing_usertag=True`` (see the
    module doc). The impression samples and the click log barely overlap (53 bidids), so
    they cannot be joined into an unbiased labelled CTR set.
    """
    return read_ipinyou_logs(ipinyou_season2_files(kind), allow_missing_usertag=allow_missing_usertag)


def load_ipinyou_season3(kind: Season3Kind = "imp") -> pd.DataFrame:
    """Season-3 sample logs of advertiser 2821 on 2013-10-21: ``imp`` 10,000 rows, ``clk`` 442."""
    return read_ipinyou_logs(ipinyou_season3_files(kind))


def with_prefix(prefix: Sequence[Column]) -> list[Column]:
    """``prefix`` columns followed by the 24 log columns (for derived log layouts)."""
    return [*prefix, *ipinyou_columns()]

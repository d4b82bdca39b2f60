"""Avazu CTR prediction (Kaggle 2014) rows.

Format: comma-separated, 24 fields, with or without the Kaggle header line
``id,click,hour,C1,banner_pos,...,C21`` (detected from the first line).

Returned frame (one row per line, file order):

===================================================  ===============  =======================
columns                                              dtype            meaning
===================================================  ===============  =======================
id                                                   uint64           impression id (a 64-bit
                                                                      hash; exceeds int64)
click                                                int8             1 = click
hour                                                 datetime64[ns]   ``YYMMDDHH`` read as 20YY
C1, banner_pos, device_type, device_conn_type,       int32            anonymised / coded ints
C14..C21                                                              (C15 x C16 = slot size)
site_id, site_domain, site_category, app_id,         string[pyarrow]  hashed ids
app_domain, app_category, device_id, device_ip,
device_model
===================================================  ===============  =======================
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from training.loaders._tabular import Column, parse_table, read_head
from training.loaders.datasets import require

AVAZU_COLUMNS: tuple[str, ...] = (
    "id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category",
    "app_id", "app_domain", "app_category", "device_id", "device_ip", "device_model",
    "device_type", "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
)
_STRING_COLUMNS = frozenset(AVAZU_COLUMNS[5:14])


def _column(name: str) -> Column:
    if name == "id":
        return Column(name, "uint64")
    if name == "click":
        return Column(name, "int", "int8", lo=0, hi=1)
    if name == "hour":
        return Column(name, "datetime", time_style="yymmddhh")
    if name in _STRING_COLUMNS:
        return Column(name, "str")
    return Column(name, "int", "int32")


def read_avazu(path: str | Path, *, nrows: int | None = None) -> pd.DataFrame:
    """Read one Avazu file, header or not (see the module doc for columns and dtypes).

    Raises :class:`~adplatform.errors.DataError` naming the file and line of the first
    malformed row, or line 1 for a header that is not Avazu's.
    """
    path = Path(path)
    data, header_lines = read_head(path, nrows=nrows, sep=",", names=AVAZU_COLUMNS)
    columns = [_column(name) for name in AVAZU_COLUMNS]
    return parse_table(data, path, columns, sep=",", header_lines=header_lines)


def load_avazu_sample() -> pd.DataFrame:
    """The 100-row Avazu sample (DeepCTR ``avazu_sample.txt``) from the shared data."""
    return read_avazu(require("avazu_ctr_sample") / "deepctr" / "avazu_sample.txt")

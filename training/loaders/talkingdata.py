"""TalkingData AdTracking Fraud Detection (Kaggle 2018) click rows.

Format: comma-separated, 8 fields, Kaggle header
``ip,app,device,os,channel,click_time,attributed_time,is_attributed`` (optional; the
shared copy's header starts with a literal ``..ip``, which is read as ``ip``).

Returned frame (one row per line, file order):

===============================  ===============  ==========================================
column                           dtype            meaning
===============================  ===============  ==========================================
ip, app, device, os, channel     int32            integer-encoded ids
click_time                       datetime64[ns]   UTC, second resolution
attributed_time                  datetime64[ns]   app download time; ``NaT`` when none
is_attributed                    int8             1 = app downloaded after the click
===============================  ===============  ==========================================

``is_attributed`` is install attribution, not a fraud label (the competition treats
non-attributed clicks as possibly fraudulent). A row whose ``attributed_time`` presence
disagrees with ``is_attributed`` is a :class:`DataError`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from adplatform.errors import DataError
from training.loaders._tabular import Column, first_bad_row, parse_table, read_head
from training.loaders.datasets import require

TALKINGDATA_COLUMNS: tuple[str, ...] = (
    "ip", "app", "device", "os", "channel", "click_time", "attributed_time", "is_attributed",
)
_HEADER_ALIASES = {"..ip": "ip"}


def _columns() -> list[Column]:
    return [
        *(Column(name, "int", "int32", lo=0) for name in TALKINGDATA_COLUMNS[:5]),
        Column("click_time", "datetime", time_style="iso_seconds"),
        Column("attributed_time", "datetime", time_style="iso_seconds"),
        Column("is_attributed", "int", "int8", lo=0, hi=1),
    ]


def read_talkingdata(path: str | Path, *, nrows: int | None = None) -> pd.DataFrame:
    """Read one TalkingData training file (see the module doc for columns and dtypes)."""
    path = Path(path)
    data, header_lines = read_head(path, nrows=nrows, sep=",", names=TALKINGDATA_COLUMNS,
                                   header_aliases=_HEADER_ALIASES)
    frame = parse_table(data, path, _columns(), sep=",", header_lines=header_lines)
    no_click_time = first_bad_row(frame["click_time"].isna().to_numpy())
    if no_click_time is not None:
        raise DataError("column 'click_time': missing", path=str(path),
                        line=no_click_time + header_lines + 1)
    disagree = frame["attributed_time"].notna().to_numpy() != (frame["is_attributed"] == 1).to_numpy()
    row = first_bad_row(disagree)
    if row is not None:
        raise DataError(
            f"is_attributed={frame['is_attributed'].iat[row]} but attributed_time is "
            f"{'empty' if pd.isna(frame['attributed_time'].iat[row]) else 'set'}",
            path=str(path), line=row + header_lines + 1,
        )
    return frame


def load_talkingdata_sample() -> pd.DataFrame:
    """The Kaggle ``train_sample.csv`` (100,000 rows) from the shared data."""
    return read_talkingdata(require("talkingdata_adtracking") / "train_sample.csv")

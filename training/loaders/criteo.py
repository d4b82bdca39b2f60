"""Criteo Display Advertising Challenge (Kaggle 2014, "DAC") rows.

Format (Kaggle ``train.txt``): TAB-separated, no header, 40 fields per line:
``label, I1..I13, C1..C26``. The integer features may be empty; the categoricals are
32-bit hashes written as 8 hex digits and may be empty.

Returned frame (one row per line, file order):

=========  ==================  ===========================================
column     dtype               meaning
=========  ==================  ===========================================
label      int8                1 = click, 0 = no click
I1..I13    Int64 (nullable)    integer count features; ``<NA>`` when empty
C1..C26    string[pyarrow]     hashed categoricals; ``<NA>`` when empty
=========  ==================  ===========================================

The comma-separated variant with a ``label,I1,...,C26`` header (DeepCTR's
``criteo_sample.txt``, integers written as ``260.0``) is read into the same frame.
Integral floats are accepted in integer columns; anything else is a :class:`DataError`.

The canonical copy in the shared data is ``criteo_dac_sample/lapis_hong_wide_resdnn``:
the first 8,000 rows of Kaggle ``train.txt`` split 7,200 / 409 / 391 into
``train.tsv`` / ``dev.tsv`` / ``test.tsv`` (byte-identical to the upstream files).
Criteo downsampled the negatives, so its ~22 % CTR is not a real-world rate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pandas as pd

from training.loaders._tabular import Column, parse_table, read_head
from training.loaders.datasets import require

CriteoSplit = Literal["train", "dev", "test"]

#: The canonical copy inside the ``criteo_dac_sample`` folder.
CANONICAL_COPY = "lapis_hong_wide_resdnn"
INT_FEATURES: tuple[str, ...] = tuple(f"I{i}" for i in range(1, 14))
CAT_FEATURES: tuple[str, ...] = tuple(f"C{i}" for i in range(1, 27))
CRITEO_COLUMNS: tuple[str, ...] = ("label", *INT_FEATURES, *CAT_FEATURES)
SPLITS: tuple[CriteoSplit, ...] = ("train", "dev", "test")


def _columns() -> list[Column]:
    return [
        Column("label", "int", "int8", lo=0, hi=1),
        *(Column(name, "nullable_int", "Int64") for name in INT_FEATURES),
        *(Column(name, "str") for name in CAT_FEATURES),
    ]


def read_criteo(path: str | Path, *, nrows: int | None = None) -> pd.DataFrame:
    """Read one Criteo DAC file (see the module doc for columns and dtypes).

    ``nrows`` reads only the first rows. Raises :class:`~adplatform.errors.DataError`
    naming the file and line of the first malformed row.
    """
    path = Path(path)
    with path.open("rb") as handle:
        head = handle.readline()
    sep = "," if b"\t" not in head and b"," in head else "\t"
    data, header_lines = read_head(path, nrows=nrows, sep=sep, names=CRITEO_COLUMNS)
    return parse_table(data, path, _columns(), sep=sep, header_lines=header_lines)


def load_criteo_sample(split: CriteoSplit | None = None) -> pd.DataFrame:
    """The canonical Criteo sample from the shared data folder.

    ``split`` picks ``train`` (7,200 rows), ``dev`` (409) or ``test`` (391). ``None`` reads
    all three in that order (8,000 rows) and appends a ``split`` column (categorical,
    categories ``train, dev, test``).
    """
    folder = require("criteo_dac_sample") / CANONICAL_COPY
    if split is not None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return read_criteo(folder / f"{split}.tsv")
    frames = [read_criteo(folder / f"{name}.tsv") for name in SPLITS]
    split_column = pd.Categorical(
        [name for name, frame in zip(SPLITS, frames, strict=True) for _ in range(len(frame))],
        categories=list(SPLITS),
    )
    return pd.concat(frames, ignore_index=True).assign(split=split_column)

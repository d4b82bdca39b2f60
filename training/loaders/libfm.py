"""libFM / libSVM-style sparse rows and ``featindex`` dictionaries.

Row format (space-separated): some leading integer fields, then ``index:value`` pairs::

    0 1:1 6:1 31:1 45:1 131280:1 ...

For the CTR files of ``ipinyou_adv2997_fm_deepctr`` the single leading field is the
click label (0/1) and each row has one ``index:1`` per field (16 fields). The DRSA files
use three leading fields; see :mod:`training.loaders.drsa`.

``featindex`` files map ``field:value<TAB>index`` and are returned as a frame with
columns ``field`` (string[pyarrow]), ``value`` (string[pyarrow]) and ``index`` (int64),
in file order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from adplatform.errors import DataError
from training.loaders._tabular import (
    STRING_DTYPE,
    Column,
    first_bad_row,
    parse_table,
    read_text,
    shorten,
)
from training.loaders.datasets import require

if TYPE_CHECKING:
    from scipy.sparse import csr_matrix

FmSplit = Literal["train", "test"]

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_INT = r"-?\d{1,15}"
_PAIR = re.compile(rf"\d{{1,15}}:{_NUM}")


@dataclass(frozen=True, eq=False)
class SparseFeatures:
    """Ragged rows of ``(index, value)`` pairs in CSR layout.

    Row ``i`` holds ``indices[offsets[i]:offsets[i + 1]]`` (int64) with the matching
    ``values`` (float32). ``offsets`` (int64) has one more entry than there are rows.
    """

    indices: np.ndarray
    values: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The indices and values of row ``i``."""
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.indices[start:end], self.values[start:end]

    def index_lists(self) -> list[np.ndarray]:
        """The feature indices of every row, one array per row."""
        return np.split(self.indices, self.offsets[1:-1])

    def width(self) -> int | None:
        """The number of features per row when every row has the same number, else None."""
        sizes = np.diff(self.offsets)
        if sizes.size == 0 or (sizes == sizes[0]).all():
            return int(sizes[0]) if sizes.size else 0
        return None

    def index_matrix(self) -> np.ndarray:
        """The indices as an ``(n_rows, width)`` int64 matrix (one column per field).

        Raises ValueError when rows have different numbers of features.
        """
        width = self.width()
        if width is None:
            raise ValueError("rows have different numbers of features; use index_lists()")
        return self.indices.reshape(len(self), width)

    def to_csr(self, n_features: int | None = None) -> csr_matrix:
        """A ``scipy.sparse.csr_matrix`` of shape ``(n_rows, n_features)``."""
        from scipy.sparse import csr_matrix

        width = int(self.indices.max()) + 1 if self.indices.size else 0
        if n_features is None:
            n_features = width
        elif n_features < width:
            raise ValueError(f"n_features={n_features} but an index is {width - 1}")
        return csr_matrix((self.values, self.indices, self.offsets), shape=(len(self), n_features))


@dataclass(frozen=True, eq=False)
class LibFMData:
    """Click labels (int8, 0/1) with their sparse features, row-aligned."""

    label: np.ndarray
    features: SparseFeatures

    def __len__(self) -> int:
        return len(self.label)


def parse_sparse_rows(data: bytes, path: Path, lead: Sequence[str]) -> tuple[np.ndarray, SparseFeatures]:
    """Parse rows of ``len(lead)`` integers then ``index:value`` pairs.

    Returns the leading integers as an ``(n_rows, len(lead))`` int64 array and the pairs.
    Raises :class:`DataError` at the first line that does not have that shape.
    """
    text = data.decode("utf-8")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    k = len(lead)
    line_re = re.compile(rf"[ \t]*{_INT}(?:[ \t]+{_INT}){{{k - 1}}}((?:[ \t]+\d{{1,15}}:{_NUM})*)[ \t]*\r?")
    counts = np.empty(len(lines), dtype=np.int64)
    for i, line in enumerate(lines):
        match = line_re.fullmatch(line)
        if match is None:
            raise DataError(_diagnose(line, lead), path=str(path), line=i + 1)
        counts[i] = match.group(1).count(":")
    tokens = np.array(text.replace(":", " ").split(), dtype=np.float64)
    per_line = k + 2 * counts
    starts = np.cumsum(per_line) - per_line
    lead_pos = (starts[:, None] + np.arange(k)).ravel()
    is_pair = np.ones(tokens.size, dtype=bool)
    is_pair[lead_pos] = False
    pair_pos = np.flatnonzero(is_pair)
    leading = tokens[lead_pos].astype(np.int64).reshape(len(lines), k)
    features = SparseFeatures(
        indices=tokens[pair_pos[0::2]].astype(np.int64),
        values=tokens[pair_pos[1::2]].astype(np.float32),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
    )
    return leading, features


def _diagnose(line: str, lead: Sequence[str]) -> str:
    tokens = line.split()
    shape = f"{len(lead)} leading integers ({', '.join(lead)}) then index:value pairs"
    if not tokens:
        return f"blank line; expected {shape}"
    if len(tokens) < len(lead):
        return f"expected {shape}, found {len(tokens)} fields"
    for name, token in zip(lead, tokens, strict=False):
        if not re.fullmatch(_INT, token):
            return f"field {name!r}: expected an integer, found {shorten(token)}"
    for token in tokens[len(lead):]:
        if not _PAIR.fullmatch(token):
            return f"expected index:value, found {shorten(token)}"
    return f"malformed line; expected {shape}"


def check_range(values: np.ndarray, path: Path, name: str, *, lo: int | None = None,
                hi: int | None = None, first_line: int = 1) -> None:
    """Raise :class:`DataError` at the first row whose value is outside ``[lo, hi]``."""
    bad = np.zeros(values.shape, dtype=bool)
    if lo is not None:
        bad |= values < lo
    if hi is not None:
        bad |= values > hi
    row = first_bad_row(bad)
    if row is not None:
        bounds = f"[{'' if lo is None else lo}, {'' if hi is None else hi}]"
        raise DataError(f"field {name!r}: expected a value in {bounds}, found {values[row]}",
                        path=str(path), line=row + first_line)


def read_libfm(path: str | Path, *, nrows: int | None = None) -> LibFMData:
    """Read a libFM click file: ``label idx:val idx:val ...`` with label 0 or 1."""
    path = Path(path)
    if nrows is not None and nrows < 0:
        raise ValueError(f"nrows must be >= 0, got {nrows}")
    leading, features = parse_sparse_rows(read_text(path, max_lines=nrows), path, ("label",))
    label = leading[:, 0]
    check_range(label, path, "label", lo=0, hi=1)
    return LibFMData(label=label.astype(np.int8), features=features)


def read_featindex(path: str | Path) -> pd.DataFrame:
    """Read a ``field:value<TAB>index`` dictionary (see the module doc).

    Raises :class:`DataError` for a key without ``:`` or a repeated key or index.
    """
    path = Path(path)
    columns = [Column("key", "str"), Column("index", "int", "int64", lo=0)]
    frame = parse_table(read_text(path), path, columns, sep="\t")
    keys = frame["key"].astype(object).where(frame["key"].notna(), "")
    parts = keys.str.partition(":")
    row = first_bad_row((parts[1] != ":").to_numpy())
    if row is not None:
        raise DataError(f"expected field:value, found {shorten(keys.iat[row])}",
                        path=str(path), line=row + 1)
    for name in ("key", "index"):
        row = first_bad_row(frame[name].duplicated().to_numpy())
        if row is not None:
            raise DataError(f"repeated {name} {shorten(frame[name].iat[row])}",
                            path=str(path), line=row + 1)
    return pd.DataFrame({
        "field": parts[0].astype(STRING_DTYPE),
        "value": parts[2].astype(STRING_DTYPE),
        "index": frame["index"],
    })


def load_ipinyou_fm_sample(split: FmSplit = "train") -> LibFMData:
    """iPinYou campaign 2997 (wnzhang/deep-ctr): ``train`` 26,773 rows, ``test`` 21,150."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return read_libfm(require("ipinyou_adv2997_fm_deepctr") / f"{split}.fm.txt")


def load_ipinyou_fm_featindex() -> pd.DataFrame:
    """The 133,465-entry ``featindex.fm.txt`` of campaign 2997 (16 named fields)."""
    return read_featindex(require("ipinyou_adv2997_fm_deepctr") / "featindex.fm.txt")

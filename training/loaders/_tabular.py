"""Strict reading of delimited text files into typed pandas frames.

Shared by the per-format loaders. The contract: a file either loads completely with the
declared dtypes, or :class:`~adplatform.errors.DataError` names the file and the 1-based
line of the first malformed row. No row is ever skipped.

How it stays fast: the field count of every line is checked on the raw bytes with numpy,
then pandas' C parser reads the typed columns directly (the fast path). Only when that
parse fails does a second pass read every column as text and validate it column by
column, which is what finds the offending line for the message (the slow path). The slow
path is the reference semantics (if it finds nothing wrong, its frame is returned); the
fast path is an optimisation that produces the same frame whenever it succeeds.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from adplatform.errors import DataError

Kind = Literal["int", "nullable_int", "str", "uint64", "datetime"]
TimeStyle = Literal["yyyymmddhhmmssfff", "yymmddhh", "iso_seconds"]

#: dtype of every text column the loaders return (missing values are ``pd.NA``).
STRING_DTYPE = "string[pyarrow]"

_UINT64_MAX = str(np.iinfo(np.uint64).max)
_TIME_REGEX: dict[TimeStyle, str] = {
    "yyyymmddhhmmssfff": r"\d{17}",
    "yymmddhh": r"\d{8}",
    "iso_seconds": r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}",
}
_SEP_NAMES = {"\t": "tab", ",": "comma", " ": "space"}


@dataclass(frozen=True)
class Column:
    """One column of a delimited file: how to parse it and what to return.

    ``kind``: ``int`` (non-null integer), ``nullable_int`` (integer or missing),
    ``str`` (text), ``uint64`` (unsigned 64-bit identifier), ``datetime``.
    ``dtype`` is the returned dtype for the integer kinds (``int8``, ``int32``, ``Int64``...).
    ``lo``/``hi`` bound integer values (inclusive). ``null`` lists raw tokens read as missing
    (besides the empty field, which is missing for every kind but ``int`` and ``uint64``).
    """

    name: str
    kind: Kind
    dtype: str = ""
    lo: int | None = None
    hi: int | None = None
    null: tuple[str, ...] = ()
    time_style: TimeStyle | None = None

    @property
    def null_tokens(self) -> list[str]:
        if self.kind in ("int", "uint64"):
            return list(self.null)
        return ["", *self.null]


@dataclass(frozen=True)
class _Bad:
    row: int
    message: str


def read_text(path: Path, *, max_lines: int | None = None) -> bytes:
    """The bytes of ``path`` (at most ``max_lines`` lines), checked to be UTF-8.

    A leading byte-order mark and trailing empty lines are dropped; the result is empty or
    ends with exactly one newline.
    """
    if max_lines is None:
        data = path.read_bytes()
    else:
        with path.open("rb") as handle:
            data = b"".join(itertools.islice(handle, max_lines))
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"not valid UTF-8 (byte {exc.object[exc.start]:#04x})",
                        path=str(path), line=line) from None
    data = data.rstrip(b"\r\n")
    return data + b"\n" if data else data


def first_line(data: bytes) -> str:
    """The first line of ``data`` without its terminator."""
    end = data.find(b"\n")
    line = data if end < 0 else data[:end]
    return line.decode("utf-8").rstrip("\r")


def read_head(path: Path, *, nrows: int | None, sep: str, names: Sequence[str],
              header_aliases: Mapping[str, str] | None = None) -> tuple[bytes, int]:
    """The text of ``path`` and how many header lines it starts with (0 or 1).

    The first line is a header when its fields are ``names`` (after renaming any field
    found in ``header_aliases``); a first line that is neither the header nor starts like
    a data row (a number first) is a :class:`DataError` at line 1. ``nrows`` limits the
    data rows read.
    """
    if nrows is not None and nrows < 0:
        raise ValueError(f"nrows must be >= 0, got {nrows}")
    head = first_line(read_text(path, max_lines=1))
    fields = [(header_aliases or {}).get(field, field) for field in head.split(sep)]
    header = fields == list(names)
    if not header and head and not re.match(r"\s*[-+]?\d", head):
        raise DataError(f"unexpected header {shorten(head, 80)}; expected "
                        f"{sep.join(names)!r} or no header", path=str(path), line=1)
    data = read_text(path, max_lines=None if nrows is None else nrows + int(header))
    return data, int(header)


def check_field_counts(data: bytes, path: Path, *, sep: str, allowed: Collection[int],
                       first_line_no: int = 1, hints: Mapping[int, str] | None = None) -> np.ndarray:
    """Raise unless every line of ``data`` has a field count in ``allowed``.

    Returns the per-line field counts. Blank lines are errors (they are never rows).
    ``hints`` adds a remark to the message for a given wrong count.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(buf == 10)
    seps = np.flatnonzero(buf == ord(sep))
    counts = np.diff(np.searchsorted(seps, newlines), prepend=0) + 1
    ok = np.isin(counts, np.fromiter(allowed, dtype=np.int64))
    if not ok.all():
        i = int(np.argmin(ok))
        start = 0 if i == 0 else int(newlines[i - 1]) + 1
        text = data[start:int(newlines[i])].rstrip(b"\r")
        want = " or ".join(str(n) for n in sorted(allowed))
        sep_name = _SEP_NAMES.get(sep, repr(sep))
        found = "a blank line" if not text.strip() else f"{counts[i]} fields"
        hint = (hints or {}).get(int(counts[i]))
        raise DataError(f"expected {want} {sep_name}-separated fields, found {found}"
                        + (f" ({hint})" if hint else ""), path=str(path), line=i + first_line_no)
    return counts


def parse_table(data: bytes, path: Path, columns: Sequence[Column], *, sep: str,
                header_lines: int = 0, field_counts: Collection[int] | None = None,
                count_hints: Mapping[int, str] | None = None) -> pd.DataFrame:
    """Parse ``data`` (from :func:`read_text`) into a frame with one column per ``columns``.

    ``header_lines`` leading lines are skipped (the caller has validated them). A row may
    have fewer fields than ``columns`` only if its count is in ``field_counts``; the absent
    trailing fields are missing values.
    """
    allowed = set(field_counts) if field_counts is not None else {len(columns)}
    if max(allowed) != len(columns):
        raise ValueError("field_counts must include the full column count")
    check_field_counts(data, path, sep=sep, allowed=allowed, hints=count_hints)
    first_row_line = header_lines + 1
    if data.count(b"\n") <= header_lines:
        return _empty_frame(columns)
    try:
        typed = _read_typed(data, columns, sep=sep, header_lines=header_lines)
    except (ValueError, TypeError, OverflowError, pd.errors.ParserError):
        # Some field did not parse as its type: the text pass finds which, and where.
        texts = _read_strings(data, columns, sep=sep, header_lines=header_lines)
        converted = [_convert(col, texts[col.name], from_text=True) for col in columns]
    else:
        converted = [_convert(col, typed[col.name], from_text=False) for col in columns]
    _raise_first_bad(converted, path, first_row_line)
    return pd.DataFrame({col.name: out for col, (out, _) in zip(columns, converted, strict=True)})


def first_bad_row(mask: np.ndarray) -> int | None:
    """Index of the first True in ``mask``, or None."""
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


def shorten(value: object, limit: int = 40) -> str:
    """``repr`` of a raw value, cut to ``limit`` characters for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- internals ---------------------------------------------------------------------------


def _read_csv(data: bytes, columns: Sequence[Column], *, sep: str, header_lines: int,
              dtype: dict[str, object], na_values: dict[str, list[str]] | None) -> pd.DataFrame:
    return pd.read_csv(
        io.BytesIO(data), sep=sep, header=None, names=[c.name for c in columns],
        skiprows=header_lines, dtype=dtype, na_values=na_values, keep_default_na=False,
        na_filter=na_values is not None, quoting=csv.QUOTE_NONE, skip_blank_lines=False,
        engine="c", encoding="utf-8", low_memory=False,
    )


def _read_typed(data: bytes, columns: Sequence[Column], *, sep: str, header_lines: int) -> pd.DataFrame:
    dtype: dict[str, object] = {}
    na_values: dict[str, list[str]] = {}
    for col in columns:
        if col.kind == "int":
            dtype[col.name] = "int64"
        elif col.kind == "nullable_int":
            dtype[col.name] = "Int64"
            na_values[col.name] = col.null_tokens
        else:
            dtype[col.name] = object
    return _read_csv(data, columns, sep=sep, header_lines=header_lines, dtype=dtype,
                     na_values=na_values)


def _read_strings(data: bytes, columns: Sequence[Column], *, sep: str, header_lines: int) -> pd.DataFrame:
    dtype: dict[str, object] = {col.name: object for col in columns}
    return _read_csv(data, columns, sep=sep, header_lines=header_lines, dtype=dtype, na_values=None)


def _text_values(series: pd.Series) -> pd.Series:
    # Padding for short rows can come back as NaN; every raw field is text here.
    return series.astype(object).where(series.notna(), "")


def _convert(col: Column, series: pd.Series, *, from_text: bool) -> tuple[pd.Series, _Bad | None]:
    """The returned column and the first bad row (if any)."""
    if col.kind == "str":
        raw = _text_values(series)
        out = raw.where(~raw.isin(col.null_tokens), None).astype(STRING_DTYPE)
        return out, None
    if col.kind == "uint64":
        return _convert_uint64(col, _text_values(series))
    if col.kind == "datetime":
        return _convert_datetime(col, _text_values(series))
    return _convert_int(col, series, from_text=from_text)


def _convert_int(col: Column, series: pd.Series, *, from_text: bool) -> tuple[pd.Series, _Bad | None]:
    nullable = col.kind == "nullable_int"
    if from_text:
        raw = _text_values(series)
        missing = raw.isin(["", *col.null]).to_numpy()  # an error below unless nullable
        # Checked and converted through float64: exact for |n| <= 2**53, which covers every
        # integer column the loaders declare (ids beyond that are uint64 or text).
        numbers = pd.to_numeric(raw.where(~missing, None), errors="coerce").astype("float64")
        values = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
        not_number = np.isnan(values) & ~missing
    else:
        raw = series
        missing = series.isna().to_numpy()
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        not_number = np.zeros(len(series), dtype=bool)
    info = np.iinfo(np.dtype(col.dtype.lower()))
    lo = info.min if col.lo is None else max(col.lo, info.min)
    hi = info.max if col.hi is None else min(col.hi, info.max)
    with np.errstate(invalid="ignore"):
        present = ~missing & ~not_number
        non_integral = present & ~(np.isfinite(values) & (np.floor(values) == values))
        out_of_range = present & ~non_integral & ((values < lo) | (values > hi))
    bad_missing = missing if not nullable else np.zeros_like(missing)
    for mask, what in ((bad_missing, "a missing value"), (not_number, "a non-number"),
                       (non_integral, "a non-integer"), (out_of_range, "out of range")):
        row = first_bad_row(mask)
        if row is not None:
            bounds = f"an integer in [{lo}, {hi}]" if col.lo is not None or col.hi is not None else "an integer"
            bad = _Bad(row, f"column {col.name!r}: expected {bounds}, found {what} "
                            f"{shorten(raw.iloc[row])}")
            return series, bad
    if from_text:
        typed = pd.array(np.where(missing, 0, values).astype(np.int64), dtype="Int64")
        typed[missing] = pd.NA
        return pd.Series(typed, index=series.index).astype(col.dtype), None
    return series.astype(col.dtype), None


def _convert_uint64(col: Column, raw: pd.Series) -> tuple[pd.Series, _Bad | None]:
    digits = raw.str.fullmatch(r"\d{1,20}").to_numpy(dtype=bool)
    too_big = digits & (raw.str.len().to_numpy() == 20) & (raw > _UINT64_MAX).to_numpy()
    bad_row = first_bad_row(~digits | too_big)
    if bad_row is not None:
        return raw, _Bad(bad_row, f"column {col.name!r}: expected an unsigned 64-bit integer, "
                                  f"found {shorten(raw.iloc[bad_row])}")
    values = np.asarray(raw.to_numpy(dtype=str)).astype(np.uint64)
    return pd.Series(values, index=raw.index, name=col.name), None


def _convert_datetime(col: Column, raw: pd.Series) -> tuple[pd.Series, _Bad | None]:
    if col.time_style is None:
        raise ValueError(f"column {col.name!r} needs a time_style")
    missing = raw.isin(col.null_tokens).to_numpy()
    usable = raw.str.fullmatch(_TIME_REGEX[col.time_style]).to_numpy(dtype=bool) & ~missing
    if col.time_style == "iso_seconds":
        parsed = pd.to_datetime(raw.where(usable, None), format="%Y-%m-%d %H:%M:%S", errors="coerce")
    else:
        number = np.where(usable, raw.to_numpy(dtype=object), "0").astype(np.int64)
        parts = pd.DataFrame(_time_parts(number, col.time_style), index=raw.index)
        # to_datetime validates the date but adds the clock fields as durations: bound them.
        clock_ok = np.ones(len(raw), dtype=bool)
        for field, limit in (("hour", 24), ("minute", 60), ("second", 60)):
            if field in parts:
                clock_ok &= (parts[field] < limit).to_numpy()
        usable &= clock_ok
        parts.loc[~usable, :] = 0
        parts.loc[~usable, ["year", "month", "day"]] = [2000, 1, 1]
        parsed = pd.to_datetime(parts, errors="coerce").where(usable)
    bad_row = first_bad_row(~missing & parsed.isna().to_numpy())
    if bad_row is not None:
        return raw, _Bad(bad_row, f"column {col.name!r}: expected a {_TIME_SHAPE[col.time_style]} "
                                  f"timestamp, found {shorten(raw.iloc[bad_row])}")
    return parsed.astype("datetime64[ns]").rename(col.name), None


_TIME_SHAPE: dict[TimeStyle, str] = {
    "yyyymmddhhmmssfff": "yyyyMMddHHmmssSSS",
    "yymmddhh": "yyMMddHH",
    "iso_seconds": "yyyy-MM-dd HH:mm:ss",
}


def _time_parts(number: np.ndarray, style: TimeStyle) -> dict[str, np.ndarray]:
    """Calendar fields of digit-encoded timestamps (to_datetime validates their ranges)."""
    if style == "yyyymmddhhmmssfff":
        rest = number // 1000
        return {"year": rest // 10**10, "month": rest // 10**8 % 100, "day": rest // 10**6 % 100,
                "hour": rest // 10**4 % 100, "minute": rest // 100 % 100, "second": rest % 100,
                "ms": number % 1000}
    # yymmddhh: two-digit years are read as 20yy (Avazu is 2014).
    return {"year": 2000 + number // 10**6, "month": number // 10**4 % 100,
            "day": number // 100 % 100, "hour": number % 100}


def _raise_first_bad(converted: Sequence[tuple[pd.Series, _Bad | None]], path: Path,
                     first_row_line: int) -> None:
    bads = [bad for _, bad in converted if bad is not None]
    if bads:
        first = min(bads, key=lambda bad: bad.row)
        raise DataError(first.message, path=str(path), line=first.row + first_row_line)


def _empty_frame(columns: Sequence[Column]) -> pd.DataFrame:
    frame: dict[str, pd.Series] = {}
    for col in columns:
        if col.kind == "str":
            frame[col.name] = pd.Series([], dtype=STRING_DTYPE)
        elif col.kind == "uint64":
            frame[col.name] = pd.Series([], dtype="uint64")
        elif col.kind == "datetime":
            frame[col.name] = pd.Series([], dtype="datetime64[ns]")
        else:
            frame[col.name] = pd.Series([], dtype=col.dtype)
    return pd.DataFrame(frame)

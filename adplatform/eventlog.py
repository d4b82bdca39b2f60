"""The event log: a versioned parquet schema, partitioned by day.

Layout: ``<root>/<table>/date=YYYY-MM-DD/part-NNNNN.parquet``. A decision and
everything that follows it (auction result, impression, click, conversion) is keyed by
``(request_id, imp_id)``. ``ts`` is always UTC microseconds. Files are written
deterministically (sorted by ``ts, request_id, imp_id``; fixed part names; no wall-clock
metadata) so that the same simulator seed gives byte-identical files. A file appears
under its name only once complete (written under a hidden temporary name, then renamed),
so a reader never opens a part a live service is still writing.

Schema version history:

* 1 — requests, decisions, auctions, impressions, clicks, conversions; truth kept apart.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from adplatform.errors import DataError

SCHEMA_VERSION = 1

_TS = pa.timestamp("us", tz="UTC")

SCHEMAS: dict[str, pa.Schema] = {
    # One row per impression opportunity (OpenRTB imp) offered to us.
    "requests": pa.schema([
        ("ts", _TS), ("request_id", pa.string()), ("imp_id", pa.string()),
        ("user_id", pa.string()),      # OpenRTB user.id (exchange-scoped, pseudonymous)
        ("device_id", pa.string()),    # ifa, or a hash of ip+ua when there is none
        ("ip", pa.string()), ("ua", pa.string()),
        ("device_type", pa.int8()),    # OpenRTB device.devicetype (1 mobile, 2 PC, 4 phone, ...)
        ("os", pa.string()), ("country", pa.string()), ("region", pa.string()),
        ("publisher_id", pa.string()), ("domain", pa.string()),  # site domain or app bundle
        ("is_app", pa.bool_()), ("slot_id", pa.string()),
        ("format", pa.string()),       # banner | video
        ("w", pa.int16()), ("h", pa.int16()),
        ("bidfloor", pa.float64()), ("tmax", pa.int32()),
    ]),
    # One row per (request, imp) answered by a bidding policy: bid or no-bid.
    "decisions": pa.schema([
        ("ts", _TS), ("request_id", pa.string()), ("imp_id", pa.string()),
        ("bid", pa.bool_()), ("price", pa.float64()),
        ("campaign_id", pa.string()), ("creative_id", pa.string()),
        ("reason", pa.string()),       # "bid" or the no-bid reason
        ("pctr", pa.float64()), ("value", pa.float64()),
        ("propensity", pa.float64()),  # P(this price | context) under the logging policy
        ("policy", pa.string()), ("variant", pa.string()),
        ("model_version", pa.string()), ("feature_service", pa.string()),
        ("latency_ms", pa.float64()),
    ]),
    # First-price auction result for every bid we made.
    "auctions": pa.schema([
        ("ts", _TS), ("request_id", pa.string()), ("imp_id", pa.string()),
        ("bid_price", pa.float64()), ("won", pa.bool_()),
        ("paid_price", pa.float64()),        # = bid_price when won (first price), else 0
        ("min_bid_to_win", pa.float64()),    # reported on some losses only; null otherwise
    ]),
    "impressions": pa.schema([
        ("ts", _TS), ("request_id", pa.string()), ("imp_id", pa.string()),
        ("user_id", pa.string()), ("campaign_id", pa.string()), ("creative_id", pa.string()),
        ("publisher_id", pa.string()), ("cost", pa.float64()),  # CPM price / 1000
    ]),
    "clicks": pa.schema([
        ("ts", _TS), ("request_id", pa.string()), ("imp_id", pa.string()),
        ("user_id", pa.string()), ("campaign_id", pa.string()), ("creative_id", pa.string()),
    ]),
    "conversions": pa.schema([
        ("ts", _TS), ("request_id", pa.string()), ("imp_id", pa.string()),
        ("campaign_id", pa.string()), ("value", pa.float64()),
    ]),
    # Ground truth, written under the workspace's truth/ folder, never read by models.
    "truth": pa.schema([
        ("ts", _TS), ("request_id", pa.string()), ("imp_id", pa.string()),
        ("is_bot", pa.bool_()), ("bot_kind", pa.string()),   # "" for humans
        ("user_group", pa.int16()),                         # latent interest group
        ("true_ctr", pa.float64()),                         # of the creative we showed, if any
        ("competing_bid", pa.float64()),                    # highest other bid (CPM)
    ]),
}

TABLES = tuple(SCHEMAS)


def _check_table(table: str) -> pa.Schema:
    try:
        return SCHEMAS[table]
    except KeyError:
        raise DataError(f"unknown event table {table!r}; known: {', '.join(TABLES)}") from None


def to_arrow(table: str, rows: pa.Table | pd.DataFrame | Iterable[Mapping[str, Any]]
             ) -> pa.Table:
    """Conform rows to the table's schema (column order, types); extra columns are an error.

    An Arrow table must have the schema already (the decision log builds it so)."""
    schema = _check_table(table)
    if isinstance(rows, pa.Table):
        if not rows.schema.equals(schema):
            raise DataError(f"{table}: Arrow schema differs from v{SCHEMA_VERSION}: "
                            f"{rows.schema} != {schema}")
        return rows
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    extra = set(df.columns) - set(schema.names)
    if extra:
        raise DataError(f"{table}: columns not in schema v{SCHEMA_VERSION}: {sorted(extra)}")
    missing = [n for n in schema.names if n not in df.columns]
    if missing:
        raise DataError(f"{table}: missing columns {missing}")
    df = df[schema.names]
    if "ts" in df and len(df) and df["ts"].dtype.kind == "M":
        df = df.assign(ts=df["ts"].dt.floor("us"))   # the log keeps microseconds
    return pa.Table.from_pandas(df, schema=schema, preserve_index=False)


def write_events(root: Path, table: str,
                 rows: pa.Table | pd.DataFrame | Iterable[Mapping[str, Any]], *,
                 part: int = 0) -> list[Path]:
    """Write rows into day partitions under ``root/table``; returns the files written.

    Rows are sorted by (ts, request_id, imp_id) so that output is deterministic.
    """
    tbl = to_arrow(table, rows)
    if tbl.num_rows == 0:
        return []
    tbl = tbl.sort_by([("ts", "ascending"), ("request_id", "ascending"), ("imp_id", "ascending")])
    day_arr = pc.strftime(tbl.column("ts"), format="%Y-%m-%d")
    out: list[Path] = []
    for day in sorted(pc.unique(day_arr).to_pylist()):
        sub = tbl.filter(pc.equal(day_arr, day))
        path = root / table / f"date={day}" / f"part-{part:05d}.parquet"
        write_parquet(sub, path, compression="zstd", write_statistics=True)
        out.append(path)
    return out


def write_parquet(tbl: pa.Table, path: Path, **options: Any) -> None:
    """Write ``tbl`` to ``path`` so that it appears there only once complete.

    The bytes go to a hidden temporary name in the same folder first (readers glob
    ``*.parquet`` and pyarrow skips names starting with "."), then :func:`os.replace`
    puts the file in place in one step. A reader that lists the folder while a
    service is writing a part (the trainer reading the live decision log) sees the
    part whole or not at all. ``options`` go to :func:`pyarrow.parquet.write_table`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(tbl, tmp, **options)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)        # a failed write leaves no temporary file


def read_events(root: Path, table: str, *, start: date | None = None,
                end: date | None = None) -> pd.DataFrame:
    """Read a table (optionally days in [start, end]) as a DataFrame with the schema's types."""
    schema = _check_table(table)
    base = root / table
    if not base.exists():
        return schema.empty_table().to_pandas()
    files = sorted(base.glob("date=*/*.parquet"))
    if start is not None or end is not None:
        def keep(p: Path) -> bool:
            d = date.fromisoformat(p.parent.name.removeprefix("date="))
            return (start is None or d >= start) and (end is None or d <= end)
        files = [f for f in files if keep(f)]
    if not files:
        return schema.empty_table().to_pandas()
    dataset = ds.dataset([str(f) for f in files], schema=schema, format="parquet")
    return dataset.to_table().to_pandas()


def last_event_time(root: Path) -> pd.Timestamp | None:
    """The latest ``ts`` of any table in the log (None for an empty log): the log's
    "now". Reads only the ``ts`` column of each table's last day."""
    latest: pd.Timestamp | None = None
    for table in TABLES:
        days = sorted((root / table).glob("date=*"))
        files = sorted(days[-1].glob("*.parquet")) if days else []
        if not files:
            continue
        ts = ds.dataset([str(f) for f in files], schema=SCHEMAS[table],
                        format="parquet").to_table(columns=["ts"]).column("ts")
        top = pc.max(ts).as_py()           # None for a table with no rows
        if top is not None:
            stamp = pd.Timestamp(top)
            latest = stamp if latest is None else max(latest, stamp)
    return latest


__all__ = ["SCHEMAS", "SCHEMA_VERSION", "TABLES", "last_event_time", "read_events", "to_arrow",
           "write_events", "write_parquet"]

"""The online reader: every feature one auction needs, in one call, as arrays.

It reads the stores Feast writes (SQLite or Redis, whichever the repo config names) with
Feast's own key and field encoding and value protos, so stored values are decoded exactly
as ``get_online_features`` decodes them (tests compare the two), but it skips Feast's
per-call feature resolution, reads every view of an auction in one round trip (one
``UNION ALL`` query on SQLite, one server-side HMGET script on a single Redis) and builds
the model matrices directly. Other online stores go through Feast's ``online_read``.
A bounded LRU cache with a TTL sits in front of the store: ``cache_size`` entries at
most (an entity row, or the rows of a whole candidate list), none older than
``cache_ttl_s`` seconds. On SQLite the reader reads through its own connection to
Feast's database file, which maps the file into memory and keeps a larger page cache
(``sqlite_mmap_mb``, ``sqlite_cache_mb``): a page read is then a memory access instead
of a ``read()`` system call; Feast's own connection (used for writes) is untouched.

Unknown entities get NaN (then defaults and a "missing" indicator in the matrix); an
unreachable store raises :class:`features.StoreUnavailable`.
"""

from __future__ import annotations

import sqlite3
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from features import _kernels, ivt
from features.context import AdRef, RequestContext
from features.errors import FeatureStoreError, StoreUnavailable
from features.ivt import IVT_COLUMNS, ivt_values
from features.repo import VIEWS
from features.vectorize import (
    CONTEXT,
    CTR_RAW,
    FRAUD_RAW,
    SHADING_RAW,
    ColumnBlock,
    ColumnLayout,
    format_code,
)
from serving.base import AuctionInputs

if TYPE_CHECKING:
    from feast import FeatureStore


@dataclass(frozen=True)
class ReaderConfig:
    cache_size: int = 200_000    # entries: an entity row (~200 B) or a candidate list (~1 kB)
    cache_ttl_s: float = 5.0     # staleness bound: batch views change daily, streams in ~1 s
    # SQLite only. Map up to this much of the database file: the bench world's store is
    # 470 MB, and with SQLite's default 2 MB page cache every cold page was a read()
    # system call. 0: no mapping. SQLite maps only what the file holds.
    sqlite_mmap_mb: int = 1024
    sqlite_cache_mb: int = 64    # SQLite's page cache for the reader's connection


# HMGET on every key with its view's fields, in one call. ARGV: per view, the number of
# keys, the number of fields, then the fields; KEYS: the entities' keys in view order.
# A missing field comes back nil (Lua false), as from HMGET itself.
_HMGET_ALL = """
local out, a, k = {}, 1, 1
while a <= #ARGV do
  local nkeys, nfields = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local fields = {}
  for i = 1, nfields do fields[i] = ARGV[a + 1 + i] end
  a = a + 2 + nfields
  for _ = 1, nkeys do
    out[#out + 1] = redis.call('HMGET', KEYS[k], unpack(fields))
    k = k + 1
  end
end
return out
"""
_U32 = struct.Struct("<I").pack
_KEY_MEMO_SIZE = 100_000   # serialized entity keys kept (~100 B each); cleared when full
# Decoded values kept, by their serialized ValueProto: counts repeat across entities, so a
# dict lookup replaces a protobuf parse for nearly every value; cleared when full.
_VALUE_MEMO_SIZE = 65_536
ALL_RAW = sorted({*CTR_RAW, *FRAUD_RAW, *SHADING_RAW})
_FIELDS = {name: fields for name, _, _, fields in VIEWS}        # view -> its fields


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


# (view, entity key) -> its row; (view, (key, ...)) -> the rows of a whole key list
_CacheKey = tuple[str, str | tuple[str, ...]]


class _TTLCache:
    """LRU of (view, key) -> row, bounded in size and age."""

    def __init__(self, size: int, ttl_s: float, clock: Callable[[], float]) -> None:
        self._data: OrderedDict[_CacheKey, tuple[float, np.ndarray]] = OrderedDict()
        self._size, self._ttl, self._clock = size, ttl_s, clock
        self.stats = CacheStats()

    def get(self, key: _CacheKey) -> np.ndarray | None:
        item = self._data.get(key)
        if item is None or item[0] < self._clock():
            self.stats.misses += 1
            return None
        self._data.move_to_end(key)
        self.stats.hits += 1
        return item[1]

    def put(self, key: _CacheKey, row: np.ndarray) -> None:
        self._data[key] = (self._clock() + self._ttl, row)
        self._data.move_to_end(key)
        while len(self._data) > self._size:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()


def _sqlite_store() -> type:
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    return SqliteOnlineStore


def _decode(value: Any) -> float:
    kind = value.WhichOneof("val")
    if kind is None:
        return float("nan")
    return float(getattr(value, kind))


class OnlineReader:
    """Implements :class:`features.featurizer.AuctionFeaturizer` over a Feast store."""

    def __init__(self, store: FeatureStore, config: ReaderConfig | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 shared_data: Path | None = None) -> None:
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        self._entity_key, self._value = EntityKey, Value
        self._serialize = serialize_entity_key
        self._key_version = store.config.entity_key_serialization_version
        self._key_memo: dict[tuple[str, str], bytes] = {}
        self._value_memo: dict[bytes | None, float] = {}
        self._hset_keys: dict[str, list[Any]] = {}
        self._hmget_script: Any = None
        self._tables: dict[str, str] = {}
        self._selects: dict[str, str] = {}
        online = store._get_provider().online_store
        store_cfg = store.config.online_store
        # The read path, chosen once: SQLite (one UNION ALL query), Redis (one script on a
        # single server; Feast's pipeline on a cluster or with glide, whose keys need not
        # share a slot), or Feast's online_read view by view for any other store.
        self._fetch = (self._fetch_sqlite if isinstance(online, _sqlite_store())
                       else self._fetch_redis if hasattr(online, "_read_hash_fields")
                       else self._fetch_online_read)
        self._redis_script_ok = (getattr(store_cfg, "redis_type", None) == "redis"
                                 and getattr(store_cfg, "client", "redis") == "redis")
        self._repo_config = store.config
        self._online = store._get_provider().online_store
        self._views = {name: store.get_feature_view(name) for name, *_ in VIEWS}
        self._keys = {name: key for name, _, key, _ in VIEWS}
        self._prefixes = {name: self._key_prefix(name) for name in self._keys}
        self._fields = _FIELDS
        self._nan_row = {name: np.full((1, len(f)), np.nan) for name, f in _FIELDS.items()}
        cfg = config or ReaderConfig()
        self._cache = _TTLCache(cfg.cache_size, cfg.cache_ttl_s, clock) if cfg.cache_size else None
        self.feature_service = "ctr_v1"
        self._shared_data = shared_data
        self._plan = _AuctionPlan(self._fields)
        _kernels.warm(self._plan.layout)  # compile now, not on the first auction
        ivt.warm(shared_data)             # the crawler matcher too (see ivt.warm)
        # SQLite: the reader's own connection, opened now rather than by the first auction.
        self._sqlite = self._open_sqlite(cfg) if self._fetch == self._fetch_sqlite else None

    @property
    def cache_stats(self) -> CacheStats:
        return self._cache.stats if self._cache else CacheStats()

    def clear_cache(self) -> None:
        if self._cache:
            self._cache.clear()

    def read(self, view: str, keys: Sequence[str]) -> np.ndarray:
        """(len(keys), n_fields) float64 for a view; NaN rows for unknown or empty keys."""
        return self.read_views({view: keys})[view]

    def read_views(self, requests: Mapping[str, Sequence[str]]) -> dict[str, np.ndarray]:
        """Several views at once: cache first, then ONE store round trip for the rest.

        On SQLite all misses of all views are one query, on Redis one script call (or
        one pipeline), both in Feast's own key and value encoding; other stores are read
        view by view through Feast's ``online_read``.
        """
        out: dict[str, np.ndarray] = {}
        todo: dict[str, list[int]] = {}
        batches: list[tuple[str, tuple[str, ...]]] = []
        for view, keys in requests.items():
            if len(keys) > 1 and self._cache is not None:
                # An auction's candidate list repeats: one entry for the whole list saves
                # a lookup per candidate (same TTL; the rows are also cached one by one).
                whole = (view, tuple(keys))
                rows = self._cache.get(whole)
                if rows is not None:
                    out[view] = rows.copy()
                    continue
                batches.append(whole)
            # One key (the request-level views): a copy of a NaN row costs less than
            # np.full, on every auction.
            arr = (self._nan_row[view].copy() if len(keys) == 1
                   else np.full((len(keys), len(self._fields[view])), np.nan))
            out[view] = arr
            for i, k in enumerate(keys):
                if not k:
                    continue
                row = self._cache.get((view, k)) if self._cache else None
                if row is None:
                    todo.setdefault(view, []).append(i)
                else:
                    arr[i] = row
        if not todo:
            self._cache_batches(batches, out)
            return out
        try:
            results = self._fetch({v: [requests[v][i] for i in idx] for v, idx in todo.items()})
        except FeatureStoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - any store failure becomes one typed error
            raise StoreUnavailable(f"online store read failed: {exc}") from exc
        for view, idx in todo.items():
            keys, arr = requests[view], out[view]
            for i, values in zip(idx, results[view], strict=True):
                if values is not None:
                    arr[i] = values
                if self._cache is not None:
                    self._cache.put((view, keys[i]), arr[i].copy())
        self._cache_batches(batches, out)
        return out

    def _cache_batches(self, batches: list[tuple[str, tuple[str, ...]]],
                       out: dict[str, np.ndarray]) -> None:
        if self._cache is not None:
            for whole in batches:
                self._cache.put(whole, out[whole[0]].copy())

    def _proto(self, view: str, key: str) -> Any:
        return self._entity_key(join_keys=[self._keys[view]],
                                entity_values=[self._value(string_val=key)])

    def _key_prefix(self, view: str) -> bytes | None:
        """The bytes before the value in Feast's version-3 serialized key of a one-string-
        join-key entity (None for other versions: Feast's own function then): the key
        count, the join key as a STRING and the value's type tag, all little-endian
        uint32 (``feast.infra.key_encoding_utils.serialize_entity_key``)."""
        if self._key_version != 3:
            return None
        from feast.protos.feast.types.Value_pb2 import ValueType

        name = self._keys[view].encode("utf8")
        return (_U32(1) + _U32(ValueType.STRING) + _U32(len(name)) + name
                + _U32(ValueType.STRING))

    def _serialized(self, view: str, keys: Sequence[str]) -> list[bytes]:
        """Feast's serialized entity keys (the SQLite row key; + project, the Redis key),
        memoised: the candidate ads and the heavy users come back in auction after
        auction."""
        memo = self._key_memo
        out: list[bytes] = []
        for k in keys:
            ser = memo.get((view, k))
            if ser is None:
                if len(memo) >= _KEY_MEMO_SIZE:
                    memo.clear()
                prefix = self._prefixes[view]
                if prefix is None:
                    ser = self._serialize(self._proto(view, k),
                                          entity_key_serialization_version=self._key_version)
                else:
                    # Feast's bytes without its protobuf objects (a miss is a new user,
                    # device or IP on most auctions); tests compare the two.
                    value = k.encode("utf8")
                    ser = prefix + _U32(len(value)) + value
                memo[(view, k)] = ser
            out.append(ser)
        return out

    def _parse(self, blob: bytes | None) -> float:
        """A stored ValueProto as a float (NaN: nil, empty or unset), via the value memo;
        the hot loops look the memo up themselves and call this only on a miss."""
        memo = self._value_memo
        if len(memo) >= _VALUE_MEMO_SIZE:
            memo.clear()
        value = memo[blob] = _decode(self._value.FromString(blob)) if blob else float("nan")
        return value

    def _fetch_online_read(self, misses: dict[str, list[str]]
                           ) -> dict[str, list[list[float] | None]]:
        """Per view, per key: the values in the view's field order (None: unknown); every
        fetch path returns this."""
        online: Any = self._online
        nan = float("nan")
        config = self._repo_config
        out: dict[str, list[list[float] | None]] = {}
        for view, keys in misses.items():
            fields = self._fields[view]
            protos = [self._proto(view, k) for k in keys]
            # A copy of the field list: some stores append their own keys to it.
            rows = online.online_read(config, self._views[view], protos, list(fields))
            out[view] = [None if values is None else
                         [_decode(values[f]) if f in values else nan for f in fields]
                         for _, values in rows]
        return out

    def _fetch_redis(self, misses: dict[str, list[str]]) -> dict[str, list[list[float] | None]]:
        """HMGETs for every view in one round trip (:meth:`_hmget_all`), in Feast's key
        and field encoding; the replies are decoded straight into rows (Feast's own
        conversion builds a dict of protos per entity first)."""
        online: Any = self._online
        config = self._repo_config
        project = config.project.encode()
        commands: list[tuple[bytes, list[Any]]] = []
        spans: list[tuple[str, int, int]] = []
        for view, keys in misses.items():
            hset = self._hset_keys.get(view)
            if hset is None:
                # Feast appends its event-timestamp field last: replies carry it last.
                _, hset = online._generate_hset_keys_for_features(self._views[view],
                                                                  list(self._fields[view]))
                self._hset_keys[view] = hset
            spans.append((view, len(commands), len(keys)))
            commands += [(ser + project, hset) for ser in self._serialized(view, keys)]
        replies = self._hmget_all(commands, spans)
        memo, parse = self._value_memo, self._parse
        out: dict[str, list[list[float] | None]] = {}
        for view, first, n in spans:
            out[view] = [[memo[b] if b in memo else parse(b) for b in reply[:-1]]
                         for reply in replies[first:first + n]]
        return out

    def _hmget_all(self, commands: list[tuple[bytes, list[Any]]],
                   spans: list[tuple[str, int, int]]) -> list[list[bytes | None]]:
        """Every HMGET reply, in order: one server-side script call on a single Redis
        (one command to pack and one reply to parse, instead of one per entity), Feast's
        pipeline on a cluster or with another client (a script's keys must share a
        slot)."""
        online: Any = self._online
        config = self._repo_config
        if not self._redis_script_ok:
            return list(online._read_hash_fields(config, commands))
        if self._hmget_script is None:
            self._hmget_script = online._get_client(config.online_store).register_script(
                _HMGET_ALL)
        args: list[Any] = []
        for _, first, n in spans:
            fields = commands[first][1] if n else []
            args += [n, len(fields), *fields]
        return list(self._hmget_script(keys=[key for key, _ in commands], args=args))

    def _table(self, view: str) -> str:
        """The view's quoted SQLite table name (Feast's naming), computed once."""
        table = self._tables.get(view)
        if table is None:
            from feast.infra.online_stores.sqlite import _quote_id, _table_id

            versioning = self._repo_config.registry.enable_online_feature_view_versioning
            table = self._tables[view] = _quote_id(_table_id(
                self._repo_config.project, self._views[view], versioning))
        return table

    def _open_sqlite(self, cfg: ReaderConfig) -> sqlite3.Connection:
        """The reader's connection to Feast's SQLite file: read-only (``query_only``),
        memory-mapped, with its own page cache. WAL mode (which Feast's writers and
        ``features.ops`` use) lets it read while they write."""
        online: Any = self._online
        conn = sqlite3.connect(online._get_db_path(self._repo_config), check_same_thread=False)
        conn.execute("PRAGMA query_only=1")
        conn.execute(f"PRAGMA mmap_size={int(cfg.sqlite_mmap_mb) << 20}")
        conn.execute(f"PRAGMA cache_size={-1024 * int(cfg.sqlite_cache_mb)}")
        return conn

    def _fetch_sqlite(self, misses: dict[str, list[str]]
                      ) -> dict[str, list[list[float] | None]]:
        """Feast's SQLite ``online_read`` for several views in one ``UNION ALL`` query,
        without the event timestamps (Feast parses one datetime per stored field; the
        reader does not use them).

        One ``SELECT`` per entity, which returns the entity's number and each field's
        position (SQLite maps the name with a ``CASE``) beside the stored value: an
        auction's miss is some 45 rows, and a row of two small ints and one blob costs
        Python less than one carrying the entity key and the field name as new objects.
        """
        parts: list[str] = []
        params: list[bytes] = []
        slots: list[int] = []                      # entity m -> its view's field count
        for view, keys in misses.items():
            select = self._select(view)
            width = len(self._fields[view])
            for ser in self._serialized(view, keys):
                parts.append(select % len(slots))
                params.append(ser)
                slots.append(width)
        nan = float("nan")
        rows: list[list[float] | None] = [None] * len(slots)
        memo, parse = self._value_memo, self._parse
        conn = self._sqlite
        if conn is None:                           # only the SQLite path reads here
            raise StoreUnavailable("the reader has no SQLite connection")
        for m, i, blob in conn.execute(" UNION ALL ".join(parts), params):
            row = rows[m]
            if row is None:
                row = rows[m] = [nan] * slots[m]
            if i >= 0:                             # a stored field the view no longer has
                row[i] = memo[blob] if blob in memo else parse(blob)
        out: dict[str, list[list[float] | None]] = {}
        m = 0
        for view, keys in misses.items():
            out[view] = rows[m:m + len(keys)]
            m += len(keys)
        return out

    def _select(self, view: str) -> str:
        """``SELECT %d, <field position>, value FROM <table> WHERE entity_key = ?`` for a
        view (``%d``: the entity's number in the query), built once."""
        select = self._selects.get(view)
        if select is None:
            whens = " ".join(f"WHEN '{f.replace(chr(39), chr(39) * 2)}' THEN {i}"
                             for i, f in enumerate(self._fields[view]))
            select = self._selects[view] = (
                f"SELECT %d, CASE feature_name {whens} ELSE -1 END, value "
                f"FROM {self._table(view)} WHERE entity_key = ?")
        return select

    def raw_columns(self, ctx: RequestContext, ads: Sequence[AdRef]) -> ColumnBlock:
        """Every column one auction's matrices are built from, as one (K, C) block: the
        stored values (NaN when unknown; request-level views repeated on every row),
        the context and the IVT signals."""
        personal = ctx.personalised and bool(ctx.user_id)
        rows = self.read_views({
            "user_stats": [ctx.user_id if personal else ""],
            "publisher_stats": [ctx.publisher_id], "ip_stats": [ctx.ip],
            "device_stats": [ctx.device_id], "ad_stats": [a.creative_id for a in ads]})
        return self._plan.assemble(ctx, ads, rows, self._shared_data)

    def build(self, ctx: RequestContext, ads: Sequence[AdRef]) -> AuctionInputs:
        return _inputs(self.raw_columns(ctx, ads))

    def defaults(self, ctx: RequestContext, ads: Sequence[AdRef]) -> AuctionInputs:
        rows = {view: np.full((len(ads) if view == "ad_stats" else 1, len(self._fields[view])),
                              np.nan) for view in (*_REQUEST_VIEWS, "ad_stats")}
        return _inputs(self._plan.assemble(ctx, ads, rows, self._shared_data))


_REQUEST_VIEWS = ("user_stats", "publisher_stats", "ip_stats", "device_stats")


class _AuctionPlan:
    """Where each view's fields, the context and the IVT signals go in an auction's
    :class:`ColumnBlock`; built once per reader."""

    def __init__(self, fields: Mapping[str, Sequence[str]]) -> None:
        views = (*_REQUEST_VIEWS, "ad_stats")
        self.layout = ColumnLayout([*(f for v in views for f in fields[v]), *CONTEXT,
                                    *IVT_COLUMNS])
        self.view_idx = {v: self.layout.take(tuple(fields[v])) for v in views}
        self.context_idx = self.layout.take(tuple(CONTEXT))
        self.ivt_idx = self.layout.take(IVT_COLUMNS)
        self.topic = self.layout.index["topic"]

    def assemble(self, ctx: RequestContext, ads: Sequence[AdRef],
                 rows: Mapping[str, np.ndarray], shared_data: Path | None) -> ColumnBlock:
        base = np.empty(len(self.layout))                                # (C,)
        for view in _REQUEST_VIEWS:
            base[self.view_idx[view]] = rows[view][0]
        # CONTEXT order: hour, device_type, is_app, format, w, h, topic (per ad), bidfloor
        base[self.context_idx] = (ctx.ts.hour, ctx.device_type, float(ctx.is_app),
                                  format_code(ctx.format), ctx.w, ctx.h, np.nan, ctx.bidfloor)
        base[self.ivt_idx] = ivt_values(ctx.ip, ctx.ua, shared_data)
        block = np.empty((len(ads), len(self.layout)))                   # (K, C)
        block[:] = base
        block[:, self.view_idx["ad_stats"]] = rows["ad_stats"]
        block[:, self.topic] = [a.topic for a in ads]
        return ColumnBlock(self.layout, block)


@cache
def _default_plan() -> _AuctionPlan:
    return _AuctionPlan(_FIELDS)


def inputs_from_values(values: Mapping[str, float], ctx: RequestContext,
                       ads: Sequence[AdRef], shared_data: Path | None = None) -> AuctionInputs:
    """The model inputs :meth:`OnlineReader.build` makes when the store holds ``values``
    (field -> value; a field left out is unknown): the training/serving parity tests."""
    rows = {view: np.array([[values.get(f, np.nan) for f in _FIELDS[view]]]
                           * (len(ads) if view == "ad_stats" else 1), dtype=np.float64)
            for view in (*_REQUEST_VIEWS, "ad_stats")}
    return _inputs(_default_plan().assemble(ctx, ads, rows, shared_data))


def _inputs(cols: ColumnBlock) -> AuctionInputs:
    # The compiled builders: the same matrices as features.vectorize's, bit for bit.
    one = cols.head(1)                    # the fraud and shading models see the request once
    return AuctionInputs(ctr=_kernels.ctr_matrix(cols), fraud=_kernels.fraud_matrix(one),
                         shading=_kernels.shading_matrix(one))


def context_columns(ctx: RequestContext, ads: Sequence[AdRef]) -> dict[str, np.ndarray]:
    """On-demand columns for one request and K ads (as :meth:`OnlineReader.raw_columns`
    fills them)."""
    k = len(ads)
    return {
        "hour": np.full(k, ctx.ts.hour), "device_type": np.full(k, ctx.device_type),
        "is_app": np.full(k, float(ctx.is_app)), "format": np.full(k, format_code(ctx.format)),
        "w": np.full(k, ctx.w), "h": np.full(k, ctx.h),
        "topic": np.array([a.topic for a in ads], dtype=np.float64),
        "bidfloor": np.full(k, ctx.bidfloor),
    }


__all__ = ["CacheStats", "OnlineReader", "ReaderConfig", "context_columns",
           "inputs_from_values"]

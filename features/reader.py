"""The online reader: every feature one auction needs, in one call, as arrays.

It reads through Feast's own online-store implementation (SQLite or Redis, whichever the
repo config names), so stored values are decoded exactly as ``get_online_features``
decodes them, but it skips Feast's per-call feature resolution and builds the model
matrices directly. A bounded LRU cache with a TTL sits in front of the store:
``cache_size`` entity rows at most, none older than ``cache_ttl_s`` seconds.

Unknown entities get NaN (then defaults and a "missing" indicator in the matrix); an
unreachable store raises :class:`features.StoreUnavailable`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from features.context import AdRef, RequestContext
from features.errors import FeatureStoreError, StoreUnavailable
from features.ivt import ivt_columns
from features.repo import VIEWS
from features.vectorize import (
    CTR_RAW,
    FRAUD_RAW,
    SHADING_RAW,
    ctr_matrix,
    format_code,
    fraud_matrix,
    shading_matrix,
)
from serving.base import AuctionInputs

if TYPE_CHECKING:
    from feast import FeatureStore


@dataclass(frozen=True)
class ReaderConfig:
    cache_size: int = 200_000    # entity rows; ~200 B each -> tens of MB at most
    cache_ttl_s: float = 5.0     # staleness bound: batch views change daily, streams in ~1 s


ALL_RAW = sorted({*CTR_RAW, *FRAUD_RAW, *SHADING_RAW})


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class _TTLCache:
    """LRU of (view, key) -> row, bounded in size and age."""

    def __init__(self, size: int, ttl_s: float, clock: Callable[[], float]) -> None:
        self._data: OrderedDict[tuple[str, str], tuple[float, np.ndarray]] = OrderedDict()
        self._size, self._ttl, self._clock = size, ttl_s, clock
        self.stats = CacheStats()

    def get(self, key: tuple[str, str]) -> np.ndarray | None:
        item = self._data.get(key)
        if item is None or item[0] < self._clock():
            self.stats.misses += 1
            return None
        self._data.move_to_end(key)
        self.stats.hits += 1
        return item[1]

    def put(self, key: tuple[str, str], row: np.ndarray) -> None:
        self._data[key] = (self._clock() + self._ttl, row)
        self._data.move_to_end(key)
        while len(self._data) > self._size:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()


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
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        self._entity_key, self._value = EntityKey, Value
        self._repo_config = store.config
        self._online = store._get_provider().online_store
        self._views = {name: store.get_feature_view(name) for name, *_ in VIEWS}
        self._keys = {name: key for name, _, key, _ in VIEWS}
        self._fields = {name: fields for name, _, _, fields in VIEWS}
        cfg = config or ReaderConfig()
        self._cache = _TTLCache(cfg.cache_size, cfg.cache_ttl_s, clock) if cfg.cache_size else None
        self.feature_service = "ctr_v1"
        self._shared_data = shared_data

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

        On Redis all misses of all views go out in a single pipeline; other stores are
        read view by view through Feast's ``online_read``.
        """
        out: dict[str, np.ndarray] = {}
        todo: dict[str, list[int]] = {}
        for view, keys in requests.items():
            arr = np.full((len(keys), len(self._fields[view])), np.nan)
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
            return out
        try:
            results = self._fetch({v: [requests[v][i] for i in idx] for v, idx in todo.items()})
        except FeatureStoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - any store failure becomes one typed error
            raise StoreUnavailable(f"online store read failed: {exc}") from exc
        for view, idx in todo.items():
            fields, keys, arr = self._fields[view], requests[view], out[view]
            for i, (_, values) in zip(idx, results[view], strict=True):
                if values is not None:
                    arr[i] = [_decode(values[f]) if f in values else np.nan for f in fields]
                if self._cache is not None:
                    self._cache.put((view, keys[i]), arr[i].copy())
        return out

    def _protos(self, view: str, keys: Sequence[str]) -> list[Any]:
        join_key = self._keys[view]
        return [self._entity_key(join_keys=[join_key], entity_values=[self._value(string_val=k)])
                for k in keys]

    def _fetch(self, misses: dict[str, list[str]]) -> dict[str, list[Any]]:
        online: Any = self._online
        config = self._repo_config
        if not hasattr(online, "_read_hash_fields"):
            # A copy of the field list: some stores append their own keys to it.
            return {v: online.online_read(config, self._views[v], self._protos(v, keys),
                                          list(self._fields[v]))
                    for v, keys in misses.items()}
        # Redis: one pipeline for every view (Feast's own key and field encoding).
        commands: list[tuple[bytes, list[Any]]] = []
        spans: list[tuple[str, int, int, list[str]]] = []
        for view, keys in misses.items():
            wanted, hset_keys = online._generate_hset_keys_for_features(
                self._views[view], list(self._fields[view]))
            rkeys = online._generate_redis_keys_for_entities(config, self._protos(view, keys))
            spans.append((view, len(commands), len(rkeys), wanted))
            commands += [(k, hset_keys) for k in rkeys]
        values = online._read_hash_fields(config, commands)
        return {view: online._convert_redis_values_to_protobuf(
                    values[start:start + n], view, wanted)
                for view, start, n, wanted in spans}

    def raw_columns(self, ctx: RequestContext, ads: Sequence[AdRef]) -> dict[str, np.ndarray]:
        """Every stored column one auction needs: (K,) for ads, scalars broadcast to (K,)."""
        personal = ctx.personalised and bool(ctx.user_id)
        k = len(ads)
        rows = self.read_views({
            "user_stats": [ctx.user_id if personal else ""],
            "publisher_stats": [ctx.publisher_id], "ip_stats": [ctx.ip],
            "device_stats": [ctx.device_id], "ad_stats": [a.creative_id for a in ads]})
        cols: dict[str, np.ndarray] = {}
        for view in ("user_stats", "publisher_stats", "ip_stats", "device_stats"):
            row = rows[view][0]
            for j, f in enumerate(self._fields[view]):
                cols[f] = np.full(k, row[j])
        for j, f in enumerate(self._fields["ad_stats"]):
            cols[f] = rows["ad_stats"][:, j]
        return cols

    def build(self, ctx: RequestContext, ads: Sequence[AdRef]) -> AuctionInputs:
        return _inputs(self.raw_columns(ctx, ads), ctx, ads, self._shared_data)

    def defaults(self, ctx: RequestContext, ads: Sequence[AdRef]) -> AuctionInputs:
        nan = np.full(len(ads), np.nan)
        return _inputs({f: nan for f in ALL_RAW}, ctx, ads, self._shared_data)


def _inputs(raw: dict[str, np.ndarray], ctx: RequestContext, ads: Sequence[AdRef],
            shared_data: Path | None) -> AuctionInputs:
    context = context_columns(ctx, ads)
    one = {k: v[:1] for k, v in {**raw, **context}.items()}       # the (1,) request row
    ivt = ivt_columns([ctx.ip], [ctx.ua], shared_data)
    return AuctionInputs(ctr=ctr_matrix({**raw, **context}),
                         fraud=fraud_matrix({**one, **ivt}),
                         shading=shading_matrix(one))


def context_columns(ctx: RequestContext, ads: Sequence[AdRef]) -> dict[str, np.ndarray]:
    """On-demand columns for one request and K ads."""
    k = len(ads)
    return {
        "hour": np.full(k, ctx.ts.hour), "device_type": np.full(k, ctx.device_type),
        "is_app": np.full(k, float(ctx.is_app)), "format": np.full(k, format_code(ctx.format)),
        "w": np.full(k, ctx.w), "h": np.full(k, ctx.h),
        "topic": np.array([a.topic for a in ads], dtype=np.float64),
        "bidfloor": np.full(k, ctx.bidfloor),
    }


__all__ = ["CacheStats", "OnlineReader", "ReaderConfig", "context_columns"]

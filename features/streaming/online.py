"""Online reads of the streaming views, for the decision engine and for measurements.

Reads go through the repo's online store implementation (SQLite or Redis) directly, as
:class:`features.reader.OnlineReader` does, with the feature views resolved once: one
``online_read`` per view and call, whatever the number of keys (e.g. every candidate
campaign of an auction for the frequency cap).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from features.errors import FeatureStoreError, StoreUnavailable
from features.streaming.definitions import StreamView
from features.streaming.windows import Key

if TYPE_CHECKING:
    from feast import FeatureStore


class StreamReader:
    """Counters of streaming views by key; a key never seen reads as 0."""

    def __init__(self, store: FeatureStore) -> None:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        self._entity_key, self._value = EntityKey, Value
        self._store = store
        self._online = store._get_provider().online_store
        self._views: dict[str, Any] = {}

    def _fv(self, view: StreamView) -> Any:
        fv = self._views.get(view.name)
        if fv is None:
            fv = self._views[view.name] = self._store.get_feature_view(
                view.name, allow_registry_cache=True)
        return fv

    def rows(self, view: StreamView, keys: Sequence[Key]) -> list[tuple[int, ...] | None]:
        """Stored values per key (tuples in ``view.join_keys`` order); None if absent."""
        return [None if r is None else r[1] for r in self.stamped(view, keys)]

    def stamped(self, view: StreamView, keys: Sequence[Key]
                ) -> list[tuple[datetime, tuple[int, ...]] | None]:
        """Stored (event timestamp, values) per key; None if absent."""
        if not keys:
            return []
        protos = [self._entity_key(join_keys=list(view.join_keys),
                                   entity_values=[self._value(string_val=v) for v in key])
                  for key in keys]
        names = view.feature_names
        try:
            result = self._online.online_read(self._store.config, self._fv(view), protos,
                                              list(names))
        except FeatureStoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - any store failure becomes one typed error
            raise StoreUnavailable(f"online store read failed for {view.name}: {exc}") from exc
        out: list[tuple[datetime, tuple[int, ...]] | None] = []
        for ts, values in result:
            if ts is None or values is None or any(n not in values for n in names):
                out.append(None)
            else:
                ts = ts if ts.tzinfo else ts.replace(tzinfo=UTC)
                out.append((ts, tuple(int(values[n].int64_val) for n in names)))
        return out

    def read(self, view: StreamView, keys: Sequence[Key]) -> np.ndarray:
        """``(len(keys), n_features)`` int64 counters; 0 for keys the stream never saw."""
        out = np.zeros((len(keys), len(view.features)), dtype=np.int64)
        for i, row in enumerate(self.rows(view, keys)):
            if row is not None:
                out[i] = row
        return out


def read_online(store: FeatureStore, view: StreamView, keys: Sequence[Key]
                ) -> list[tuple[int, ...] | None]:
    """One-off read of ``keys`` (see :meth:`StreamReader.rows`)."""
    return StreamReader(store).rows(view, keys)


__all__ = ["StreamReader", "read_online"]

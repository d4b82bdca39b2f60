"""Skew check for the streaming views: what the online store holds vs the offline backfill.

Every online row carries the instant it describes (the aggregator's flush time), so the
check needs no common "as of": for sampled keys it reads the online values *and their
timestamp*, and asks Feast's ``get_historical_features`` for the point-in-time value at
exactly that timestamp. A difference means the live path and the backfill disagree: a
window bug, events the stream lost or counted twice, or events that reached the
aggregator after a flush stamped later than them (late data).

The offline side must cover the online timestamps: run it on an event log that includes
the events the aggregator has seen (e.g. after ``materialize`` wrote the backfill).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from features.streaming.definitions import STREAM_VIEWS, StreamView
from features.streaming.online import StreamReader

if TYPE_CHECKING:
    from feast import FeatureStore

    from adplatform.config import Settings


@dataclass
class StreamSkewReport:
    mismatch: dict[str, float] = field(default_factory=dict)   # "view:feature" -> rate
    compared: dict[str, int] = field(default_factory=dict)     # view -> keys compared
    not_online: dict[str, int] = field(default_factory=dict)   # view -> sampled keys absent

    @property
    def worst(self) -> float:
        return max(self.mismatch.values(), default=0.0)


def stream_skew_check(settings: Settings, *, sample: int = 500, seed: int = 0,
                      views: tuple[StreamView, ...] = STREAM_VIEWS) -> StreamSkewReport:
    """Mismatch rate per streaming feature over up to ``sample`` keys per view (keys
    from the offline backfill; keys absent online are counted, not compared)."""
    from features.store import offline_dir, open_store

    store = open_store(settings)
    reader = StreamReader(store)
    rng = np.random.default_rng(seed)
    report = StreamSkewReport()
    for v in views:
        path = offline_dir(settings) / f"{v.name}.parquet"
        if not path.exists():
            continue
        cols = list(v.join_keys)
        all_keys = pd.read_parquet(path, columns=cols).drop_duplicates()
        if all_keys.empty:
            continue
        pick = rng.choice(len(all_keys), size=min(sample, len(all_keys)), replace=False)
        keys = [tuple(str(x) for x in row)
                for row in all_keys.iloc[np.sort(pick)].itertuples(index=False, name=None)]
        stamped = reader.stamped(v, keys)
        present = [(k, r) for k, r in zip(keys, stamped, strict=True) if r is not None]
        report.not_online[v.name] = len(keys) - len(present)
        report.compared[v.name] = len(present)
        if not present:
            continue
        stamps = pd.to_datetime([r[0] for _, r in present], utc=True)
        online = np.array([r[1] for _, r in present], dtype=np.float64)
        # Feast's SQLite store keeps event times in whole seconds: there the online row
        # was written somewhere in the second its timestamp names, and must equal the
        # offline value at the start or the end of that second.
        instants = [stamps] if settings.profile == "services" else [
            stamps, stamps + pd.Timedelta(seconds=1) - pd.Timedelta(microseconds=1)]
        offline = [_point_in_time(store, v, [k for k, _ in present], at) for at in instants]
        for j, f in enumerate(v.feature_names):
            ok = np.zeros(len(present), dtype=bool)
            for values in offline:
                ok |= values[:, j] == online[:, j]
            report.mismatch[f"{v.name}:{f}"] = float(1.0 - ok.mean())
    return report


def _point_in_time(store: FeatureStore, view: StreamView, keys: list[tuple[str, ...]],
                   at: pd.DatetimeIndex) -> np.ndarray:
    """Offline values of ``keys`` at the instants ``at`` (0 where no row precedes)."""
    cols = list(view.join_keys)
    entity_df = pd.DataFrame([dict(zip(cols, k, strict=True)) for k in keys])
    entity_df["event_timestamp"] = at
    hist = store.get_historical_features(entity_df=entity_df, features=view.refs()).to_df()
    hist["event_timestamp"] = pd.to_datetime(hist["event_timestamp"], utc=True)
    merged = entity_df.merge(hist, on=[*cols, "event_timestamp"], how="left")
    return merged[view.feature_names].to_numpy(dtype=np.float64, na_value=0.0)


__all__ = ["StreamSkewReport", "stream_skew_check"]

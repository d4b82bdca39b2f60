"""Training/serving skew check: offline point-in-time values vs what the online store serves.

For sampled entities of every view, the offline value is Feast's
``get_historical_features`` at the end of the last materialized interval (what training
would see at that instant); the online value is what the decision engine's reader
returns. Any difference is skew: a pipeline bug, a stale or partial materialization, or
a writer that bypassed the feature definitions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from adplatform.config import Settings
from features.reader import OnlineReader, ReaderConfig
from features.repo import VIEWS
from features.store import materialized_until, offline_dir, open_store


@dataclass
class SkewReport:
    sample: int
    threshold: float
    as_of: pd.Timestamp | None
    mismatch: dict[str, float] = field(default_factory=dict)   # "view:feature" -> rate

    @property
    def worst(self) -> float:
        return max(self.mismatch.values(), default=0.0)

    @property
    def ok(self) -> bool:
        return self.worst <= self.threshold


def skew_check(settings: Settings, *, sample: int = 500, threshold: float = 0.0,
               seed: int = 0) -> SkewReport:
    store = open_store(settings)
    reader = OnlineReader(store, ReaderConfig(cache_size=0))
    rng = np.random.default_rng(seed)
    report = SkewReport(sample=sample, threshold=threshold, as_of=None)
    for view, _, key, fields in VIEWS:
        path = offline_dir(settings) / f"{view}.parquet"
        if not path.exists():
            continue
        offline = pd.read_parquet(path, columns=[key, "event_timestamp"])
        if offline.empty:
            continue
        until = materialized_until(store, view)
        # Never materialized: the offline store's end.
        as_of = offline["event_timestamp"].max() if until is None else pd.Timestamp(until)
        offline = offline[offline["event_timestamp"] <= as_of]
        report.as_of = as_of if report.as_of is None else max(report.as_of, as_of)
        keys = offline[key].drop_duplicates().to_numpy()
        keys = rng.choice(keys, size=min(sample, len(keys)), replace=False)
        entity_df = pd.DataFrame({key: keys, "event_timestamp": as_of})
        hist = store.get_historical_features(
            entity_df=entity_df, features=[f"{view}:{f}" for f in fields]).to_df()
        hist = hist.set_index(key).loc[keys]
        online = reader.read(view, [str(k) for k in keys])
        for j, f in enumerate(fields):
            off = hist[f].to_numpy(dtype=np.float64, na_value=np.nan)
            on = online[:, j]
            same = np.isclose(off, on, rtol=1e-6, atol=1e-9, equal_nan=True)
            report.mismatch[f"{view}:{f}"] = float(1.0 - same.mean())
    return report


__all__ = ["SkewReport", "skew_check"]

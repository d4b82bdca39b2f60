"""Training sets from the event log, joined to Feast features point-in-time.

Serving and training share :func:`features.vectorize.ctr_matrix`; this module only
turns event-log rows into the same raw columns the online reader produces.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from adplatform.eventlog import read_events
from features.campaign_info import creative_topics
from features.vectorize import FORMAT_CODES

if TYPE_CHECKING:
    from feast import FeatureStore


@dataclass
class ImpressionFrame:
    """One row per impression: keys, context, label, ``event_timestamp``."""

    df: pd.DataFrame

    @property
    def label(self) -> np.ndarray:
        return self.df["click"].to_numpy(dtype=np.float32)


def impressions(workspace_root: Path) -> ImpressionFrame:
    """Impressions joined with their request context and click label."""
    events = workspace_root / "events"
    imp = read_events(events, "impressions")
    req = read_events(events, "requests")
    clk = read_events(events, "clicks")[["request_id", "imp_id"]].drop_duplicates()
    ctx_cols = ["request_id", "imp_id", "device_id", "ip", "ua", "device_type", "is_app",
                "format", "w", "h", "bidfloor", "domain", "country"]
    df = imp.merge(req[ctx_cols], on=["request_id", "imp_id"], how="inner")
    df = df.merge(clk.assign(click=1), on=["request_id", "imp_id"], how="left")
    df["click"] = df["click"].fillna(0).astype(np.int8)
    topics = creative_topics(workspace_root / "world" / "campaigns.json")
    df["topic"] = df["creative_id"].map(topics).fillna(-1).astype(np.int64)
    df["hour"] = df["ts"].dt.hour
    df["format"] = df["format"].map(FORMAT_CODES).fillna(-1).astype(np.int64)
    df["event_timestamp"] = df["ts"]
    return ImpressionFrame(df.sort_values(["ts", "request_id"]).reset_index(drop=True))


def with_features(store: FeatureStore, frame: ImpressionFrame, service: str) -> pd.DataFrame:
    """Point-in-time join of the frame with a feature service (Feast get_historical_features)."""
    fs = store.get_feature_service(service)
    out = store.get_historical_features(entity_df=frame.df, features=fs).to_df()
    # Feast may reorder rows; restore the event order so time splits stay meaningful.
    return out.sort_values(["event_timestamp", "request_id"]).reset_index(drop=True)


def time_split(df: pd.DataFrame, holdout_days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train on days before the last ``holdout_days``; hold out the rest."""
    day = df["event_timestamp"].dt.floor("D")
    days = np.sort(day.unique())
    if len(days) <= holdout_days:
        cut = df["event_timestamp"].quantile(0.8)
        return df[df["event_timestamp"] < cut], df[df["event_timestamp"] >= cut]
    first_holdout = days[-holdout_days]
    return df[day < first_holdout], df[day >= first_holdout]


__all__ = ["ImpressionFrame", "impressions", "time_split", "with_features"]

"""Streaming feature views: what is counted, over which window, keyed by what; and their
Feast objects (entities, push sources, feature views).

Each view is fed online by :class:`features.streaming.aggregator.StreamAggregator`
through its push source ``<view>_push``; offline, the push source's file source
``<offline_dir>/<view>.parquet`` holds the backfill written from the event log
(:func:`features.streaming.backfill.backfill_frames`). Both come from the same window
code, so a point-in-time offline value equals the online value at that instant.

Counters are exact integers. A key the stream has never seen reads as missing (None /
NaN); callers treat a missing counter as 0. Views have ``ttl=0`` (no expiry): a window
that empties is written as an explicit 0 instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from features.streaming.windows import FIVE_MINUTES, TODAY_UTC, Window

if TYPE_CHECKING:
    from feast import Entity, FeatureView, PushSource


@dataclass(frozen=True)
class StreamFeature:
    name: str
    kind: str          # the event kind it counts (see features.streaming.events)
    window: Window


@dataclass(frozen=True)
class StreamView:
    name: str
    entities: tuple[str, ...]      # Feast entity names, one per join key
    join_keys: tuple[str, ...]     # event fields, in the same order
    features: tuple[StreamFeature, ...]
    description: str = ""

    @property
    def push_source(self) -> str:
        return f"{self.name}_push"

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def refs(self) -> list[str]:
        """Feature references, ``view:feature``."""
        return [f"{self.name}:{f.name}" for f in self.features]


IP_VELOCITY = StreamView(
    "ip_velocity", ("ip",), ("ip",),
    (StreamFeature("ip_requests_5m", "request", FIVE_MINUTES),
     StreamFeature("ip_clicks_5m", "click", FIVE_MINUTES)),
    "bid requests and clicks per ip, 5-minute sliding window (10-s buckets)")
DEVICE_VELOCITY = StreamView(
    "device_velocity", ("device",), ("device_id",),
    (StreamFeature("device_requests_5m", "request", FIVE_MINUTES),
     StreamFeature("device_clicks_5m", "click", FIVE_MINUTES)),
    "bid requests and clicks per device, 5-minute sliding window (10-s buckets)")
USER_CAMPAIGN_FREQUENCY = StreamView(
    "user_campaign_frequency", ("user", "campaign"), ("user_id", "campaign_id"),
    (StreamFeature("user_campaign_imps_today", "impression", TODAY_UTC),
     StreamFeature("user_campaign_clicks_today", "click", TODAY_UTC)),
    "impressions and clicks per user x campaign since UTC midnight (frequency caps)")

STREAM_VIEWS: tuple[StreamView, ...] = (IP_VELOCITY, DEVICE_VELOCITY, USER_CAMPAIGN_FREQUENCY)

# Entities the streaming views need: name -> (join key, description). ``user`` is in
# features/repo.py; the others are defined here until repo.py has them (same names).
_ENTITY_DEFS = {
    "user": ("user_id", "Exchange user id (pseudonymous)"),
    "ip": ("ip", "Client IP address of a bid request"),
    "device": ("device_id", "Device id: ifa, or a hash of ip+ua when there is none"),
    "campaign": ("campaign_id", "An advertiser campaign"),
}


def stream_view(name: str) -> StreamView:
    for view in STREAM_VIEWS:
        if view.name == name:
            return view
    raise KeyError(f"no streaming view {name!r}; known: {[v.name for v in STREAM_VIEWS]}")


def streaming_definitions(offline_dir: Path, existing: Iterable[Entity] | None = None,
                          views: Iterable[StreamView] = STREAM_VIEWS
                          ) -> list[Entity | PushSource | FeatureView]:
    """Feast objects of the streaming views, file sources under ``offline_dir``.

    ``existing``: entities already defined elsewhere (default: ``features.repo.ENTITIES``);
    those are reused, and only the missing ones are returned with the views and push
    sources, so both lists can be applied together.
    """
    from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
    from feast.types import Int64, String

    if existing is None:
        from features.repo import ENTITIES

        existing = ENTITIES
    have = {e.name: e for e in existing}
    views = tuple(views)
    needed = [name for v in views for name in v.entities]
    own: dict[str, Entity] = {}
    for name in dict.fromkeys(needed):
        if name in have:
            continue
        join_key, description = _ENTITY_DEFS[name]
        own[name] = Entity(name=name, join_keys=[join_key], value_type=ValueType.STRING,
                           description=description)
    entities = {**have, **own}
    out: list[Entity | PushSource | FeatureView] = list(own.values())
    for v in views:
        batch = FileSource(name=f"{v.name}_source", path=str(offline_dir / f"{v.name}.parquet"),
                           timestamp_field="event_timestamp")
        push = PushSource(name=v.push_source, batch_source=batch)
        schema = ([Field(name=k, dtype=String) for k in v.join_keys]
                  + [Field(name=f.name, dtype=Int64) for f in v.features])
        windows = ",".join(sorted({f.window.name for f in v.features}))
        out += [push, FeatureView(
            name=v.name, entities=[entities[e] for e in v.entities], ttl=timedelta(0),
            schema=schema, source=push, online=True, description=v.description,
            tags={"owner": "adplatform", "stream": "true", "window": windows})]
    return out


__all__ = ["DEVICE_VELOCITY", "IP_VELOCITY", "STREAM_VIEWS", "USER_CAMPAIGN_FREQUENCY",
           "StreamFeature", "StreamView", "stream_view", "streaming_definitions"]

"""Feast definitions: entities, batch feature views and one FeatureService per model version.

Declarative, in the shape of Feast's own repo template. Entities are module-level; the
views' file sources point into the workspace, so they are built by :func:`definitions`
from the offline folder the pipeline wrote (no paths are resolved at import time).

Windows: every view is snapshotted at whole hours; a row with ``event_timestamp = T``
aggregates events in ``[T - window, T)``, so a point-in-time join never sees the future
(features/windows.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float32, Int64

# Number of creative topics in the ad taxonomy the campaigns use.
N_TOPICS = 8

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING,
              description="Exchange user id (pseudonymous)")
ad = Entity(name="ad", join_keys=["creative_id"], value_type=ValueType.STRING,
            description="A creative")
campaign = Entity(name="campaign", join_keys=["campaign_id"], value_type=ValueType.STRING,
                  description="An advertiser campaign")
publisher = Entity(name="publisher", join_keys=["publisher_id"], value_type=ValueType.STRING,
                   description="A site or app publisher")
device = Entity(name="device", join_keys=["device_id"], value_type=ValueType.STRING,
                description="A device: its advertising id, or a hash of ip + user agent")
ip = Entity(name="ip", join_keys=["ip"], value_type=ValueType.STRING,
            description="A client IP address")

ENTITIES = [user, ad, campaign, publisher, device, ip]

# Snapshots older than this are not joined: an entity unseen for 30 days is "missing".
TTL = timedelta(days=30)

# Windows: every view is snapshotted at whole hours; a field named *_1h, *_1d, *_7d sums
# its events over the last 1, 24 or 168 hours before the snapshot (features/windows.py).
USER_FIELDS = (["user_imps_1d", "user_clicks_1d", "user_imps_7d", "user_clicks_7d"]
               + [f"user_imps_7d_t{t}" for t in range(N_TOPICS)]
               + [f"user_clicks_7d_t{t}" for t in range(N_TOPICS)])
AD_FIELDS = ["ad_imps_1d", "ad_clicks_1d", "ad_imps_7d", "ad_clicks_7d"]
CAMPAIGN_FIELDS = ["camp_imps_1h", "camp_imps_1d", "camp_imps_7d", "camp_clicks_1d",
                   "camp_clicks_7d", "camp_spend_1h", "camp_spend_1d"]
PUBLISHER_FIELDS = ["pub_requests_1h", "pub_requests_1d", "pub_requests_7d", "pub_imps_7d",
                    "pub_clicks_7d", "pub_bids_7d", "pub_wins_7d", "pub_mean_paid_7d",
                    "pub_reported_7d", "pub_mean_mbtw_7d"]
IP_FIELDS = ["ip_requests_1h", "ip_requests_1d", "ip_imps_1d", "ip_clicks_1h", "ip_clicks_1d"]
DEVICE_FIELDS = ["dev_requests_1h", "dev_requests_1d", "dev_imps_1d", "dev_clicks_1h",
                 "dev_clicks_1d", "dev_fast_clicks_1d", "dev_repeat_clicks_1d",
                 "dev_click_delay_1d"]
# Fields that are not event counts (Float32); the rest are Int64 counts.
FLOAT_FIELDS = {"pub_mean_paid_7d", "pub_mean_mbtw_7d", "camp_spend_1h", "camp_spend_1d",
                "dev_click_delay_1d"}

# (view name, entity, join key, fields)
VIEWS: tuple[tuple[str, Entity, str, list[str]], ...] = (
    ("user_stats", user, "user_id", USER_FIELDS),
    ("ad_stats", ad, "creative_id", AD_FIELDS),
    ("campaign_stats", campaign, "campaign_id", CAMPAIGN_FIELDS),
    ("publisher_stats", publisher, "publisher_id", PUBLISHER_FIELDS),
    ("ip_stats", ip, "ip", IP_FIELDS),
    ("device_stats", device, "device_id", DEVICE_FIELDS),
)


@dataclass(frozen=True)
class FeatureRepo:
    entities: list[Entity]
    views: dict[str, FeatureView]
    services: dict[str, FeatureService]

    def objects(self) -> list[Entity | FeatureView | FeatureService]:
        return [*self.entities, *self.views.values(), *self.services.values()]


def _view(name: str, entity: Entity, fields: list[str], offline_dir: Path) -> FeatureView:
    source = FileSource(name=f"{name}_source", path=str(offline_dir / f"{name}.parquet"),
                        timestamp_field="event_timestamp")
    schema = [Field(name=f, dtype=Float32 if f in FLOAT_FIELDS else Int64) for f in fields]
    return FeatureView(name=name, entities=[entity], ttl=TTL, schema=schema, source=source,
                       online=True, tags={"owner": "adplatform", "snapshots": "hourly"})


def definitions(offline_dir: Path) -> FeatureRepo:
    """Every Feast object of the repo, with file sources under ``offline_dir``."""
    from features.audience.writeback import VIEW_NAME as SEGMENTS_VIEW
    from features.audience.writeback import segment_view

    views = {name: _view(name, ent, fields, offline_dir) for name, ent, _, fields in VIEWS}
    # Audience segments (lookalikes) written back for campaign targeting.
    views[SEGMENTS_VIEW] = segment_view(offline_dir)
    # Streaming windows (5-minute velocity, frequency today), fed by push sources.
    from features.streaming.definitions import streaming_definitions

    for obj in streaming_definitions(offline_dir, existing=ENTITIES):
        if isinstance(obj, FeatureView):
            views[obj.name] = obj           # Feast registers each view's push source itself
    services = {
        # CTR v1 reads user, ad and publisher aggregates (see features/vectorize.py).
        "ctr_v1": FeatureService(name="ctr_v1", features=[
            views["user_stats"], views["ad_stats"],
            views["publisher_stats"][["pub_imps_7d", "pub_clicks_7d"]]],
            tags={"model": "ctr"}),
        # Bid shading v1 reads the publisher's competition statistics (see vectorize.py).
        "shading_v1": FeatureService(name="shading_v1", features=[
            views["publisher_stats"][["pub_requests_7d", "pub_bids_7d", "pub_wins_7d",
                                      "pub_mean_paid_7d", "pub_reported_7d",
                                      "pub_mean_mbtw_7d"]]],
            tags={"model": "shading"}),
        # Fraud v1 reads ip and device velocity and click behaviour.
        "fraud_v1": FeatureService(name="fraud_v1", features=[
            views["ip_stats"], views["device_stats"]], tags={"model": "fraud"}),
    }
    return FeatureRepo(entities=list(ENTITIES), views=views, services=services)


__all__ = ["AD_FIELDS", "CAMPAIGN_FIELDS", "DEVICE_FIELDS", "ENTITIES", "FLOAT_FIELDS",
           "IP_FIELDS", "N_TOPICS", "PUBLISHER_FIELDS", "USER_FIELDS", "VIEWS", "FeatureRepo",
           "definitions"]

"""Feast definitions: entities, batch feature views and one FeatureService per model version.

Declarative, in the shape of Feast's own repo template. Entities are module-level; the
views' file sources point into the workspace, so they are built by :func:`definitions`
from the offline folder the pipeline wrote (no paths are resolved at import time).

Windows: the batch views hold 7-day aggregates snapshotted at each day boundary; a row
with ``event_timestamp = D 00:00`` aggregates events in ``[D - 7d, D)``, so a
point-in-time join never sees the future.
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
publisher = Entity(name="publisher", join_keys=["publisher_id"], value_type=ValueType.STRING,
                   description="A site or app publisher")

ENTITIES = [user, ad, publisher]

# Snapshots older than this are not joined: a user unseen for 30 days is "missing".
TTL = timedelta(days=30)

USER_FIELDS = (["user_imps_7d", "user_clicks_7d"]
               + [f"user_imps_7d_t{t}" for t in range(N_TOPICS)]
               + [f"user_clicks_7d_t{t}" for t in range(N_TOPICS)])
AD_FIELDS = ["ad_imps_7d", "ad_clicks_7d"]
PUBLISHER_FIELDS = ["pub_requests_7d", "pub_imps_7d", "pub_clicks_7d", "pub_bids_7d",
                    "pub_wins_7d", "pub_mean_paid_7d"]
# Fields whose value is a count (Int64); the rest are Float32.
_FLOAT_FIELDS = {"pub_mean_paid_7d"}

# (view name, entity, join key, fields)
VIEWS: tuple[tuple[str, Entity, str, list[str]], ...] = (
    ("user_stats", user, "user_id", USER_FIELDS),
    ("ad_stats", ad, "creative_id", AD_FIELDS),
    ("publisher_stats", publisher, "publisher_id", PUBLISHER_FIELDS),
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
    schema = [Field(name=f, dtype=Float32 if f in _FLOAT_FIELDS else Int64) for f in fields]
    return FeatureView(name=name, entities=[entity], ttl=TTL, schema=schema, source=source,
                       online=True, tags={"owner": "adplatform", "window": "7d"})


def definitions(offline_dir: Path) -> FeatureRepo:
    """Every Feast object of the repo, with file sources under ``offline_dir``."""
    views = {name: _view(name, ent, fields, offline_dir) for name, ent, _, fields in VIEWS}
    services = {
        # CTR v1 reads user, ad and publisher aggregates (see features/vectorize.py).
        "ctr_v1": FeatureService(name="ctr_v1", features=[
            views["user_stats"], views["ad_stats"],
            views["publisher_stats"][["pub_imps_7d", "pub_clicks_7d"]]],
            tags={"model": "ctr"}),
        # Bid shading v1 reads the publisher's competition statistics (see vectorize.py).
        "shading_v1": FeatureService(name="shading_v1", features=[
            views["publisher_stats"][["pub_requests_7d", "pub_bids_7d", "pub_wins_7d",
                                      "pub_mean_paid_7d"]]],
            tags={"model": "shading"}),
    }
    return FeatureRepo(entities=list(ENTITIES), views=views, services=services)


__all__ = ["AD_FIELDS", "ENTITIES", "N_TOPICS", "PUBLISHER_FIELDS", "USER_FIELDS", "VIEWS",
           "FeatureRepo", "definitions"]

"""The world: config, campaign file shape, world file, IP ranges, devices."""

from __future__ import annotations

import ipaddress
import json

import numpy as np
import pytest

from simulator import (
    CRAWLER_CIDRS,
    DATACENTER_CIDRS,
    TOPICS,
    SimulationError,
    WorldConfig,
    build_world,
    in_ranges,
    is_datacenter_ip,
)
from simulator.devices import device_key
from simulator.geo import COUNTRIES
from simulator.world import World

CAMPAIGN_KEYS = ["campaign_id", "advertiser", "adomain", "cat", "goal", "cpc", "cpa",
                 "daily_budget", "status", "targeting", "creatives"]
TARGETING_KEYS = ["countries", "device_types", "domains", "formats", "segments"]
CREATIVE_KEYS = ["creative_id", "format", "w", "h", "topic", "cat", "adm"]


def test_config_defaults_validate_and_round_trip() -> None:
    cfg = WorldConfig()
    assert WorldConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    assert cfg.start_datetime.isoformat() == "2026-01-01T00:00:00+00:00"


@pytest.mark.parametrize("bad", [{"bot_share": 1.5}, {"n_users": 0}, {"n_groups": 5},
                                 {"bot_mix": (0.0, 0.0, 0.0)}, {"report_min_bid_share": -0.1}])
def test_config_rejects_bad_values(bad: dict[str, object]) -> None:
    with pytest.raises(SimulationError):
        WorldConfig(**bad)  # type: ignore[arg-type]


def test_from_json_rejects_unknown_fields() -> None:
    with pytest.raises(SimulationError, match="unknown"):
        WorldConfig.from_json({"n_users": 10, "colour": "blue"})


def test_campaign_document_shape(default_world: World) -> None:
    doc = default_world.campaigns_document()
    assert doc["version"] == 1
    camps = doc["campaigns"]
    assert 20 <= len(camps) <= 40
    for c in camps:
        assert list(c) == CAMPAIGN_KEYS
        assert list(c["targeting"]) == TARGETING_KEYS
        assert c["goal"] in ("cpc", "cpa")
        if c["goal"] == "cpc":
            assert c["cpc"] > 0 and c["cpa"] is None
        else:
            assert c["cpa"] > 0 and c["cpc"] is None
        assert c["daily_budget"] > 0 and c["status"] in ("active", "paused")
        assert 1 <= len(c["creatives"]) <= 4
        for cr in c["creatives"]:
            assert list(cr) == CREATIVE_KEYS
            assert 0 <= cr["topic"] < len(TOPICS)
            assert cr["format"] in ("banner", "video")
            assert cr["adm"]
    assert any(c["goal"] == "cpa" for c in camps)
    ids = [cr["creative_id"] for c in camps for cr in c["creatives"]]
    assert len(ids) == len(set(ids))


def test_generic_campaigns_cover_common_slots(default_world: World) -> None:
    """Several untargeted active campaigns have 300x250, 728x90 and 640x480 video."""
    camps = default_world.campaigns_document()["campaigns"]

    def generic_with(fmt: str, w: int, h: int) -> int:
        return sum(1 for c in camps if c["status"] == "active"
                   and not any(c["targeting"].values())
                   and any((cr["format"], cr["w"], cr["h"]) == (fmt, w, h) for cr in c["creatives"]))

    assert generic_with("banner", 300, 250) >= 3
    assert generic_with("banner", 728, 90) >= 3
    assert generic_with("video", 640, 480) >= 3


def test_world_document_has_no_latent_data(default_world: World) -> None:
    doc = default_world.world_document(days=3, requests_per_day=10)
    assert set(doc) == {"version", "seed", "days", "requests_per_day", "start", "config",
                        "crawler_ua_source", "topics", "countries", "sizes", "publishers", "slots"}
    # The config holds scales (e.g. affinity_match), never the draws they produced.
    assert all(not isinstance(v, list) or len(v) <= 3 for v in doc["config"].values())
    visible = {"publisher_id", "name", "is_app", "site_id", "app_id", "domain", "bundle", "cat"}
    assert all(set(p) <= visible for p in doc["publishers"])
    assert "user_group" not in json.dumps(doc)
    assert doc["seed"] == default_world.seed and doc["days"] == 3
    assert len(doc["publishers"]) == 100 and doc["slots"]
    json.dumps(default_world.campaigns_document())   # JSON-able


def test_world_is_a_function_of_config_and_seed() -> None:
    cfg = WorldConfig(n_users=500, n_residential_bots=10)
    a, b, c = build_world(cfg, 1), build_world(cfg, 1), build_world(cfg, 2)
    assert a.campaigns_document() == b.campaigns_document()
    assert np.array_equal(a.agents.ip, b.agents.ip)
    assert not np.array_equal(a.agents.ip, c.agents.ip)


def test_ip_ranges_are_disjoint_and_helpers_agree() -> None:
    residential = [ipaddress.ip_network(c) for co in COUNTRIES for c in co.residential_cidrs]
    invalid = [ipaddress.ip_network(c) for c in DATACENTER_CIDRS]
    invalid += [ipaddress.ip_network(c) for v in CRAWLER_CIDRS.values() for c in v]
    assert not [(a, b) for a in residential for b in invalid if a.overlaps(b)]
    assert is_datacenter_ip("3.80.1.2") and not is_datacenter_ip("73.1.2.3")
    assert in_ranges(["52.1.2.3", "not an ip", "86.130.0.1"]).tolist() == [True, False, False]


def test_humans_have_residential_ips_and_groups(default_world: World) -> None:
    ag = default_world.agents
    human = ag.kind == 0
    assert not in_ranges(ag.ip[human][:5000]).any()
    assert set(np.unique(ag.group[human])) == set(range(len(TOPICS)))
    assert (ag.group[~human] == -1).all()


def test_device_key_rule() -> None:
    ifa = "6d92078a-8246-4ba4-ae5b-76104861e7dc"
    assert device_key(ifa, "1.2.3.4", "x") == ifa
    zero = "00000000-0000-0000-0000-000000000000"
    assert device_key(zero, "1.2.3.4", "x") == device_key(None, "1.2.3.4", "x")
    assert len(device_key("", "1.2.3.4", "x")) == 16
    assert device_key(None, None, None) == ""

"""The simulated world: its configuration and everything drawn from (config, seed).

A :class:`World` is a pure function of its :class:`WorldConfig` and seed (plus the
crawler user-agent list, when the public one is present): users with a latent interest
group, their devices, bots, publishers and slots, campaigns and creatives, the
click-through ground truth and the competing-bid model. Traffic is generated from it
day by day (:mod:`simulator.traffic`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np

from simulator.bots import (
    CRAWLER_UA_FILE,
    build_crawlers,
    build_datacenter_bots,
    build_residential_bots,
    load_crawler_user_agents,
)
from simulator.campaigns import TOPIC_IAB, TOPICS, Catalog, build_catalog
from simulator.competition import CompetitionModel
from simulator.errors import SimulationError
from simulator.geo import COUNTRIES
from simulator.inventory import SIZES, Publishers, Slots, build_inventory
from simulator.outcomes import CtrModel
from simulator.population import Agents, IdPool, build_humans, concat_agents

_WORLD_STREAM = 0
#: Files under ``workspace.world``.
CAMPAIGNS_FILE = "campaigns.json"
WORLD_FILE = "world.json"


@dataclass(frozen=True)
class WorldConfig:
    """Knobs of the world. Defaults are tuned for the demo and the CTR/fraud/shading models."""

    # First simulated day (UTC midnight): runs are reproducible, never tied to the wall clock.
    start: date = date(2026, 1, 1)
    # Enough users that most are seen a handful of times (sparse but learnable user features).
    n_users: int = 50_000
    # Latent interest groups; equal to the creative topics (features.repo.N_TOPICS).
    n_groups: int = 8
    # Per-user random effect on the CTR logit: some people simply click more.
    user_re_sd: float = 0.6
    # Activity ∝ (rank + offset)^-exponent: heavy-tailed, the offset caps the heaviest
    # users at a few hundred requests a day at the default volume.
    zipf_exponent: float = 1.0
    zipf_offset: float = 50.0
    # iOS devices without an advertising id (App Tracking Transparency opt-out).
    lat_share_ios: float = 0.5
    # Supply: ~100 publishers keeps per-publisher statistics meaningful in a week.
    n_sites: int = 60
    n_apps: int = 40
    publisher_zipf: float = 0.9          # publisher popularity skew
    publisher_sd: float = 0.35           # hidden publisher effect on the CTR logit
    # People visit publishers about their interests: a log-boost for matching topics,
    # which makes the publisher a (weak) proxy of the latent group.
    interest_publisher_boost: float = 1.0
    app_share_mobile: float = 0.55       # share of phone/tablet requests that come from apps
    # Demand: 20-40 campaigns over 16 advertisers; a few optimise for conversions.
    n_campaigns: int = 30
    cpa_share: float = 0.15
    creative_quality_sd: float = 0.3     # hidden creative effect on the CTR logit
    # Invalid traffic: share of all requests, and its split (crawler, datacenter, residential).
    bot_share: float = 0.10
    bot_mix: tuple[float, float, float] = (0.25, 0.35, 0.40)
    # Declared crawlers: a couple of dozen agents, each a steady, high-volume source.
    n_crawlers: int = 20
    # Few data-centre agents, each sending many requests (high velocity per IP) while
    # rotating through this many user/advertising ids.
    n_datacenter_bots: int = 8
    datacenter_id_pool: int = 300
    # Residential bots hide among users: many agents with human-like volumes each.
    n_residential_bots: int = 500
    # Click rates of (crawler, datacenter, residential) bots: flat, interest-blind.
    bot_ctr: tuple[float, float, float] = (0.0005, 0.03, 0.10)
    # CTR ground truth: tuned for a 0.5-3% base CTR and an oracle AUC in 0.70-0.85.
    ctr_base_logit: float = -4.7
    affinity_match: float = 1.8          # logit boost when creative topic = user's group
    affinity_sd: float = 0.35            # spread of the other group x topic affinities
    hour_amplitude: float = 0.15         # evening clicks more
    # Conversions: ~5-10% of human clicks, more when the topic matches the interest.
    cvr_base_logit: float = -2.8
    cvr_affinity_weight: float = 0.5
    # Competition: other bidders pay more for users who click more; some auctions are
    # uncontested (only the floor counts).
    competition_user_coupling: float = 0.2
    no_competition_rate: float = 0.05
    # Share of lost auctions for which the exchange reports min_bid_to_win.
    report_min_bid_share: float = 0.5
    tmax: int = 100                      # OpenRTB tmax (ms)
    # Crawler user agents: a crawler-user-agents.json path; None reads
    # <shared_data>/crawler_user_agents/crawler-user-agents.json when present, else a
    # built-in list.
    crawler_user_agents: str | None = None

    def __post_init__(self) -> None:
        def bad(msg: str) -> SimulationError:
            return SimulationError(f"WorldConfig: {msg}")

        if self.n_groups != len(TOPICS):
            raise bad(f"n_groups must equal the number of creative topics ({len(TOPICS)})")
        for name in ("n_users", "n_sites", "n_apps", "n_campaigns", "n_crawlers",
                     "n_datacenter_bots", "datacenter_id_pool", "n_residential_bots", "tmax"):
            if getattr(self, name) < 1:
                raise bad(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.bot_share < 1.0:
            raise bad(f"bot_share must be in [0, 1), got {self.bot_share}")
        if len(self.bot_mix) != 3 or min(self.bot_mix) < 0 or sum(self.bot_mix) <= 0:
            raise bad("bot_mix must be three non-negative shares with a positive sum")
        for name in ("lat_share_ios", "app_share_mobile", "cpa_share", "no_competition_rate",
                     "report_min_bid_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise bad(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.no_competition_rate < 1.0:
            raise bad("no_competition_rate must be in (0, 1)")
        if any(not 0.0 <= p <= 1.0 for p in self.bot_ctr):
            raise bad("bot_ctr values must be probabilities")

    @property
    def start_datetime(self) -> datetime:
        return datetime(self.start.year, self.start.month, self.start.day, tzinfo=UTC)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["start"] = self.start.isoformat()
        d["bot_mix"] = list(self.bot_mix)
        d["bot_ctr"] = list(self.bot_ctr)
        return d

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorldConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SimulationError(f"WorldConfig: unknown fields {sorted(unknown)}")
        d = dict(data)
        if isinstance(d.get("start"), str):
            d["start"] = date.fromisoformat(d["start"])
        for name in ("bot_mix", "bot_ctr"):
            if name in d:
                d[name] = tuple(d[name])
        return cls(**d)


@dataclass(frozen=True)
class World:
    config: WorldConfig
    seed: int
    agents: Agents               # human devices first, then crawlers, data-centre, residential bots
    ids: IdPool
    publishers: Publishers
    slots: Slots
    catalog: Catalog
    ctr: CtrModel
    competition: CompetitionModel
    crawler_ua_source: str       # the crawler list file, or "builtin"

    def campaigns_document(self) -> dict[str, Any]:
        return self.catalog.document()

    def world_document(self, *, days: int, requests_per_day: int) -> dict[str, Any]:
        """``world.json``: config, seed, publishers and slots (no latent user data)."""
        pubs, slots = self.publishers, self.slots
        return {
            "version": 1,
            "seed": self.seed,
            "days": days,
            "requests_per_day": requests_per_day,
            "start": self.config.start.isoformat(),
            "config": self.config.to_json(),
            "crawler_ua_source": "builtin" if self.crawler_ua_source == "builtin" else "shared_data",
            "topics": list(TOPICS),
            "countries": [c.code for c in COUNTRIES],
            "sizes": [{"format": s.format, "w": s.w, "h": s.h} for s in SIZES],
            "publishers": [
                {"publisher_id": pubs.publisher_id[i], "name": pubs.name[i],
                 "is_app": bool(pubs.is_app[i]),
                 ("app_id" if pubs.is_app[i] else "site_id"): pubs.site_id[i],
                 ("bundle" if pubs.is_app[i] else "domain"): pubs.domain[i],
                 "cat": [TOPIC_IAB[int(pubs.topic[i])]]}
                for i in range(len(pubs))],
            "slots": [
                {"slot_id": slots.slot_id[j], "publisher_id": pubs.publisher_id[slots.publisher[j]],
                 "format": SIZES[slots.size[j]].format, "w": SIZES[slots.size[j]].w,
                 "h": SIZES[slots.size[j]].h, "bidfloor": float(slots.floor[j])}
                for j in range(len(slots))],
        }


def _crawler_path(config: WorldConfig) -> Path | None:
    if config.crawler_user_agents is not None:
        return Path(config.crawler_user_agents)
    from adplatform.config import get_settings

    return get_settings().shared_data / CRAWLER_UA_FILE


def build_world(config: WorldConfig | None = None, seed: int = 7) -> World:
    """Draw a world from ``config`` (default :class:`WorldConfig`) and ``seed``."""
    config = config or WorldConfig()
    streams = np.random.SeedSequence([seed, _WORLD_STREAM]).spawn(8)
    rng = [np.random.default_rng(s) for s in streams]
    crawler_uas, source = load_crawler_user_agents(_crawler_path(config))
    humans = build_humans(rng[0], n_users=config.n_users, n_groups=config.n_groups,
                          user_re_sd=config.user_re_sd, zipf_exponent=config.zipf_exponent,
                          zipf_offset=config.zipf_offset, lat_share_ios=config.lat_share_ios)
    agents, ids = concat_agents([
        humans,
        build_crawlers(rng[1], config.n_crawlers, crawler_uas),
        build_datacenter_bots(rng[2], config.n_datacenter_bots, config.datacenter_id_pool),
        build_residential_bots(rng[3], config.n_residential_bots, config.lat_share_ios),
    ])
    publishers, slots = build_inventory(
        rng[4], n_sites=config.n_sites, n_apps=config.n_apps, n_topics=len(TOPICS),
        publisher_sd=config.publisher_sd, publisher_zipf=config.publisher_zipf)
    catalog = build_catalog(rng[5], n_campaigns=config.n_campaigns, cpa_share=config.cpa_share,
                            creative_quality_sd=config.creative_quality_sd,
                            publisher_domains=publishers.domain,
                            countries=tuple(c.code for c in COUNTRIES))
    ctr = CtrModel.build(rng[6], n_groups=config.n_groups, base=config.ctr_base_logit,
                         affinity_match=config.affinity_match, affinity_sd=config.affinity_sd,
                         hour_amplitude=config.hour_amplitude, bot_ctr=config.bot_ctr,
                         cvr_base=config.cvr_base_logit, cvr_affinity=config.cvr_affinity_weight)
    competition = CompetitionModel.build(
        rng[7], n_publishers=len(publishers), no_competition_rate=config.no_competition_rate,
        user_coupling=config.competition_user_coupling)
    return World(config=config, seed=seed, agents=agents, ids=ids, publishers=publishers,
                 slots=slots, catalog=catalog, ctr=ctr, competition=competition,
                 crawler_ua_source=source)


__all__ = ["CAMPAIGNS_FILE", "WORLD_FILE", "World", "WorldConfig", "build_world"]

"""Demand: advertisers, campaigns and creatives, and the campaign file the bidder reads.

Creatives carry a visible ``topic`` (one of :data:`TOPICS`, the same taxonomy as the
users' latent interest groups) and a hidden quality that only the ground truth uses.
The first ``N_GENERIC`` campaigns are untargeted CPC campaigns with 300x250 and 728x90
banners and a 640x480 video, so a bidder can always bid on ordinary requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simulator.inventory import SIZES

TOPICS: tuple[str, ...] = ("sports", "technology", "fashion", "travel", "finance", "food",
                           "gaming", "automotive")
#: IAB content category of each topic (OpenRTB ``cat``).
TOPIC_IAB: tuple[str, ...] = ("IAB17", "IAB19", "IAB18", "IAB20", "IAB13", "IAB8", "IAB9", "IAB2")

#: (advertiser, domain, topic index)
ADVERTISERS: tuple[tuple[str, str, int], ...] = (
    ("Summit Sportswear", "summitsports.example", 0), ("Pitchside Tickets", "pitchside.example", 0),
    ("Nimbus Laptops", "nimbuslaptops.example", 1), ("Voltline Phones", "voltline.example", 1),
    ("Acme Shoes", "acmeshoes.example", 2), ("Linen & Loom", "linenloom.example", 2),
    ("Bluewater Travel", "bluewatertravel.example", 3), ("Skyhop Airlines", "skyhop.example", 3),
    ("Harbor Bank", "harborbank.example", 4), ("Ledgerly Invest", "ledgerly.example", 4),
    ("Greenbasket Grocery", "greenbasket.example", 5), ("Crumb & Co", "crumbco.example", 5),
    ("Pixelforge Games", "pixelforge.example", 6), ("Quest Arcade", "questarcade.example", 6),
    ("Roadster Motors", "roadstermotors.example", 7), ("Trailmark Tyres", "trailmark.example", 7),
)

N_GENERIC = 6
_SIZE_WEIGHTS = np.array([0.35, 0.20, 0.20, 0.10, 0.15])
_VIDEO = 4


@dataclass(frozen=True)
class Creative:
    creative_id: str
    format: str
    w: int
    h: int
    topic: int
    cat: tuple[str, ...]
    adm: str

    def to_json(self) -> dict[str, Any]:
        return {"creative_id": self.creative_id, "format": self.format, "w": self.w, "h": self.h,
                "topic": self.topic, "cat": list(self.cat), "adm": self.adm}


@dataclass(frozen=True)
class Targeting:
    """Empty tuples mean "no restriction"."""

    countries: tuple[str, ...] = ()
    device_types: tuple[int, ...] = ()
    domains: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()
    segments: tuple[str, ...] = ()

    def to_json(self) -> dict[str, list[Any]]:
        return {"countries": list(self.countries), "device_types": list(self.device_types),
                "domains": list(self.domains), "formats": list(self.formats),
                "segments": list(self.segments)}


@dataclass(frozen=True)
class Campaign:
    campaign_id: str
    advertiser: str
    adomain: tuple[str, ...]
    cat: tuple[str, ...]
    goal: str                   # "cpc" | "cpa"
    cpc: float | None           # USD per click (cpc goal)
    cpa: float | None           # USD per conversion (cpa goal)
    daily_budget: float         # USD
    status: str                 # "active" | "paused"
    targeting: Targeting = field(default_factory=Targeting)
    creatives: tuple[Creative, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"campaign_id": self.campaign_id, "advertiser": self.advertiser,
                "adomain": list(self.adomain), "cat": list(self.cat), "goal": self.goal,
                "cpc": self.cpc, "cpa": self.cpa, "daily_budget": self.daily_budget,
                "status": self.status, "targeting": self.targeting.to_json(),
                "creatives": [c.to_json() for c in self.creatives]}


@dataclass(frozen=True)
class Catalog:
    """Campaigns plus per-creative arrays (creative index = position in ``creative_id``)."""

    campaigns: tuple[Campaign, ...]
    creative_id: np.ndarray        # object
    campaign: np.ndarray           # int64, index into campaigns
    size: np.ndarray               # int64, index into SIZES
    topic: np.ndarray              # int16
    quality: np.ndarray            # float64, hidden CTR logit effect
    cvr_effect: np.ndarray         # float64 per campaign, hidden CVR logit effect
    cpc: np.ndarray                # float64 per campaign, NaN for cpa campaigns
    cpa: np.ndarray                # float64 per campaign, NaN for cpc campaigns
    active: np.ndarray             # bool per campaign

    def document(self) -> dict[str, Any]:
        """The ``campaigns.json`` document."""
        return {"version": 1, "campaigns": [c.to_json() for c in self.campaigns]}

    def index(self) -> dict[str, int]:
        """creative_id -> creative index."""
        return {str(c): i for i, c in enumerate(self.creative_id)}


def _adm(crid: str, domain: str, advertiser: str, size: int) -> str:
    if size == _VIDEO:
        return (f'<VAST version="4.0"><Ad id="{crid}"><InLine><AdSystem>AdPlatform</AdSystem>'
                f"<AdTitle>{advertiser.replace('&', '&amp;')}</AdTitle>"
                f"<Impression><![CDATA[https://track.{domain}/imp/{crid}]]></Impression>"
                "<Creatives><Creative><Linear><Duration>00:00:15</Duration><MediaFiles>"
                '<MediaFile delivery="progressive" type="video/mp4" width="640" height="480">'
                f"<![CDATA[https://cdn.{domain}/{crid}.mp4]]></MediaFile></MediaFiles></Linear>"
                "</Creative></Creatives></InLine></Ad></VAST>")
    return f'<a href="https://{domain}"><img src="https://cdn.{domain}/{crid}.png"></a>'


def _targeting(rng: np.random.Generator, domains: np.ndarray, countries: tuple[str, ...]
               ) -> Targeting:
    r = rng.random()
    if r < 0.55:
        return Targeting()
    if r < 0.72:
        k = int(rng.integers(1, 4))
        picked = sorted({countries[0], *rng.choice(countries, size=k, replace=False).tolist()})
        return Targeting(countries=tuple(picked))
    if r < 0.84:
        return Targeting(device_types=(2,) if rng.random() < 0.4 else (4, 5))
    if r < 0.92:
        return Targeting(formats=("video",) if rng.random() < 0.4 else ("banner",))
    k = int(rng.integers(4, 9))
    return Targeting(domains=tuple(sorted(rng.choice(domains, size=k, replace=False).tolist())))


def _sizes(rng: np.random.Generator, i: int, targeting: Targeting) -> list[int]:
    if i < N_GENERIC:
        # 300x250, 728x90 and video everywhere, plus 320x50 or 160x600 in turn.
        return [0, 1, _VIDEO, 2 if i % 2 == 0 else 3]
    if targeting.formats == ("video",):
        return [_VIDEO]
    w = _SIZE_WEIGHTS.copy()
    if targeting.formats == ("banner",):
        w[_VIDEO] = 0.0
    k = int(min(rng.integers(1, 5), np.count_nonzero(w)))
    return sorted(rng.choice(len(SIZES), size=k, replace=False, p=w / w.sum()).tolist())


def build_catalog(rng: np.random.Generator, *, n_campaigns: int, cpa_share: float,
                  creative_quality_sd: float, publisher_domains: np.ndarray,
                  countries: tuple[str, ...]) -> Catalog:
    """``n_campaigns`` campaigns over the advertisers, 1-4 creatives each."""
    rest = np.arange(N_GENERIC, n_campaigns)
    n_cpa = min(len(rest), max(2, round(cpa_share * n_campaigns)))
    cpa_ids = set(rng.choice(rest, size=n_cpa, replace=False).tolist()) if n_cpa else set()
    n_paused = min(2, max(0, len(rest) - n_cpa))
    paused = set(rng.choice(sorted(set(rest.tolist()) - cpa_ids), size=n_paused,
                            replace=False).tolist()) if n_paused else set()
    campaigns: list[Campaign] = []
    cr_rows: list[tuple[str, int, int, int]] = []
    for i in range(n_campaigns):
        name, domain, topic = ADVERTISERS[i % len(ADVERTISERS)]
        cid = f"c{i + 1:02d}"
        targeting = Targeting() if i < N_GENERIC else _targeting(rng, publisher_domains, countries)
        goal = "cpa" if i in cpa_ids else "cpc"
        cpc = round(float(np.clip(np.exp(rng.normal(math.log(0.6), 0.45)), 0.15, 2.5)), 2)
        cpa = round(float(np.clip(np.exp(rng.normal(math.log(12.0), 0.4)), 4.0, 60.0)), 1)
        budget = round(float(np.clip(np.exp(rng.normal(math.log(300.0), 0.5)), 50, 2000)), -1)
        creatives: list[Creative] = []
        for j, s in enumerate(_sizes(rng, i, targeting)):
            crid = f"cr{i + 1:02d}{chr(ord('a') + j)}"
            ctopic = topic if rng.random() < 0.85 else int(rng.integers(len(TOPICS)))
            size = SIZES[s]
            creatives.append(Creative(crid, size.format, size.w, size.h, ctopic,
                                      (TOPIC_IAB[ctopic],), _adm(crid, domain, name, s)))
            cr_rows.append((crid, i, s, ctopic))
        campaigns.append(Campaign(
            campaign_id=cid, advertiser=name, adomain=(domain,), cat=(TOPIC_IAB[topic],),
            goal=goal, cpc=None if goal == "cpa" else cpc, cpa=cpa if goal == "cpa" else None,
            daily_budget=budget, status="paused" if i in paused else "active",
            targeting=targeting, creatives=tuple(creatives)))
    n_cr = len(cr_rows)
    return Catalog(
        campaigns=tuple(campaigns),
        creative_id=np.asarray([r[0] for r in cr_rows], dtype=object),
        campaign=np.asarray([r[1] for r in cr_rows], dtype=np.int64),
        size=np.asarray([r[2] for r in cr_rows], dtype=np.int64),
        topic=np.asarray([r[3] for r in cr_rows], dtype=np.int16),
        quality=rng.normal(0.0, creative_quality_sd, size=n_cr),
        cvr_effect=rng.normal(0.0, 0.4, size=n_campaigns),
        cpc=np.asarray([np.nan if c.cpc is None else c.cpc for c in campaigns]),
        cpa=np.asarray([np.nan if c.cpa is None else c.cpa for c in campaigns]),
        active=np.asarray([c.status == "active" for c in campaigns]),
    )


__all__ = ["ADVERTISERS", "N_GENERIC", "TOPICS", "TOPIC_IAB", "Campaign", "Catalog", "Creative",
           "Targeting", "build_catalog"]

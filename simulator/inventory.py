"""Supply: publishers (sites with domains, apps with bundles) and their ad slots.

A slot has one size; sizes are indexed by position in :data:`SIZES`. Sites serve desktop
and mobile-web layouts (728x90 and 160x600 on desktop, 320x50 on phones; 300x250 and
video everywhere); apps are mobile only. Each publisher also carries a hidden effect on
click-through (its audience and layout) that only the ground truth uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class AdSize:
    format: str   # "banner" | "video"
    w: int
    h: int

    @property
    def label(self) -> str:
        return f"{self.format} {self.w}x{self.h}"


SIZES: tuple[AdSize, ...] = (
    AdSize("banner", 300, 250), AdSize("banner", 728, 90), AdSize("banner", 320, 50),
    AdSize("banner", 160, 600), AdSize("video", 640, 480),
)
#: Which sizes a desktop page / a phone or tablet screen shows, by size index.
DESKTOP_OK = np.array([True, True, False, True, True])
MOBILE_OK = np.array([True, False, True, False, True])
#: Floor multipliers by size: video sells for several times a banner.
_FLOOR_MULT = np.array([1.0, 0.8, 0.5, 0.7, 6.0])

_SITE_WORDS: tuple[tuple[str, ...], ...] = (
    ("scores", "matchday", "sprint", "fanzone", "arena"),
    ("gadget", "bytes", "techwire", "circuit", "devices"),
    ("runway", "styled", "wardrobe", "trendy", "closet"),
    ("wander", "passport", "getaway", "voyage", "atlas"),
    ("ledger", "markets", "savvy", "wallet", "invest"),
    ("recipes", "tasty", "kitchen", "brunch", "flavor"),
    ("respawn", "pixel", "quest", "loot", "arcade"),
    ("motor", "garage", "torque", "roadtest", "wheels"),
)
_SUFFIXES: tuple[str, ...] = ("daily", "hub", "zone", "today", "central", "times", "insider",
                              "world", "news", "post")


@dataclass(frozen=True)
class Publishers:
    publisher_id: np.ndarray   # object, "pub001"
    site_id: np.ndarray        # object, OpenRTB site.id / app.id ("s001" / "a001")
    domain: np.ndarray         # object, site domain or app bundle
    name: np.ndarray           # object
    is_app: np.ndarray         # bool
    topic: np.ndarray          # int16, the content category (visible as IAB cat)
    popularity: np.ndarray     # float64, relative traffic
    effect: np.ndarray         # float64, hidden CTR logit effect

    def __len__(self) -> int:
        return len(self.publisher_id)


@dataclass(frozen=True)
class Slots:
    slot_id: np.ndarray        # object, OpenRTB imp.tagid
    publisher: np.ndarray      # int64, index into Publishers
    size: np.ndarray           # int64, index into SIZES
    floor: np.ndarray          # float64, CPM

    def __len__(self) -> int:
        return len(self.slot_id)


def _names(rng: np.random.Generator, topic: np.ndarray, is_app: np.ndarray
           ) -> tuple[list[str], list[str]]:
    used: set[str] = set()
    domains: list[str] = []
    names: list[str] = []
    for i, (t, app) in enumerate(zip(topic, is_app, strict=True)):
        words = _SITE_WORDS[int(t)]
        base = ""
        for _ in range(20):
            base = f"{words[rng.integers(len(words))]}{_SUFFIXES[rng.integers(len(_SUFFIXES))]}"
            if base not in used:
                break
        else:
            base = f"{base}{i}"     # generated names have no digits: this one is unique
        used.add(base)
        domains.append(f"com.example.{base}" if app else f"{base}.example")
        names.append(base.capitalize())
    return domains, names


def build_inventory(rng: np.random.Generator, *, n_sites: int, n_apps: int, n_topics: int,
                    publisher_sd: float, publisher_zipf: float) -> tuple[Publishers, Slots]:
    """Publishers with Zipf popularity, topics, hidden effects; slots with sizes and floors."""
    n = n_sites + n_apps
    is_app = np.arange(n) >= n_sites
    topic = rng.integers(0, n_topics, size=n).astype(np.int16)
    popularity = (rng.permutation(n) + 1.0) ** -publisher_zipf
    domains, names = _names(rng, topic, is_app)
    pubs = Publishers(
        publisher_id=np.asarray([f"pub{i + 1:03d}" for i in range(n)], dtype=object),
        site_id=np.asarray([f"{'a' if a else 's'}{i + 1:03d}" for i, a in enumerate(is_app)],
                           dtype=object),
        domain=np.asarray(domains, dtype=object), name=np.asarray(names, dtype=object),
        is_app=is_app, topic=topic, popularity=popularity,
        effect=rng.normal(0.0, publisher_sd, size=n),
    )
    floor_level = np.exp(rng.normal(np.log(1.0), 0.5, size=n))
    slot_pub: list[int] = []
    slot_size: list[int] = []
    for p in range(n):
        # 300x250 everywhere; the rest by layout (probabilities of carrying each size).
        chance = (1.0, 0.0, 0.9, 0.0, 0.5) if is_app[p] else (1.0, 0.8, 0.7, 0.4, 0.35)
        draws = rng.random(len(SIZES))
        for s, c in enumerate(chance):
            if draws[s] < c:
                slot_pub.append(p)
                slot_size.append(s)
    sp = np.asarray(slot_pub, dtype=np.int64)
    ss = np.asarray(slot_size, dtype=np.int64)
    floor = np.round(floor_level[sp] * _FLOOR_MULT[ss] * np.exp(rng.normal(0, 0.2, len(sp))), 2)
    floor[rng.random(len(sp)) < 0.15] = 0.0        # some slots sell without a floor
    slot_ids = [f"{pubs.publisher_id[p]}-{SIZES[s].w}x{SIZES[s].h}" for p, s in zip(sp, ss, strict=True)]
    return pubs, Slots(np.asarray(slot_ids, dtype=object), sp, ss, floor)


__all__ = ["DESKTOP_OK", "MOBILE_OK", "SIZES", "AdSize", "Publishers", "Slots", "build_inventory"]

"""The population of request sources: human users' devices and bot agents, as arrays.

Every row of :class:`Agents` is one device that sends bid requests: a human user's
phone, tablet or PC, or one bot. Humans carry a latent interest group and a per-user
random effect on click-through; bots carry neither (group -1). User ids and advertising
ids live in :class:`IdPool`; a row draws from ``pool[id_start : id_start + id_count]``
on each request (humans have one entry, data-centre bots rotate through many).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from simulator.datacenters import sample_ips
from simulator.devices import PC, PHONE, TABLET, random_ifas, sample_user_agents, web_device_keys
from simulator.geo import COUNTRIES

#: Source kinds, by code: 0 is a human; the rest are the bot kinds (``truth.bot_kind``).
KIND_NAMES: tuple[str, ...] = ("", "crawler", "datacenter", "residential")
HUMAN, CRAWLER, DATACENTER, RESIDENTIAL = 0, 1, 2, 3


@dataclass(frozen=True)
class Agents:
    kind: np.ndarray          # int8, index into KIND_NAMES
    user: np.ndarray          # int64, human user index; -1 for bots
    group: np.ndarray         # int16, latent interest group; -1 for bots
    quality: np.ndarray       # float64, per-user random effect on the CTR logit
    device_type: np.ndarray   # int8, OpenRTB devicetype
    os: np.ndarray            # object
    ua: np.ndarray            # object
    ip: np.ndarray            # object
    country: np.ndarray       # int16, index into COUNTRIES
    region: np.ndarray        # object
    web_key: np.ndarray       # object, device_key(None, ip, ua)
    id_start: np.ndarray      # int64, into IdPool
    id_count: np.ndarray      # int64
    weight: np.ndarray        # float64, activity within the agent's traffic source

    def __len__(self) -> int:
        return len(self.kind)


@dataclass(frozen=True)
class IdPool:
    user_id: np.ndarray       # object; "" when the agent sends no user id
    ifa: np.ndarray           # object; "" when the agent sends no advertising id


def concat_agents(parts: list[tuple[Agents, IdPool]]) -> tuple[Agents, IdPool]:
    """One table from several, re-basing each part's id pool offsets."""
    offset = 0
    cols: dict[str, list[np.ndarray]] = {f.name: [] for f in fields(Agents)}
    for agents, pool in parts:
        for f in fields(Agents):
            col = getattr(agents, f.name)
            cols[f.name].append(col + offset if f.name == "id_start" else col)
        offset += len(pool.user_id)
    merged = Agents(**{k: np.concatenate(v) for k, v in cols.items()})
    pool = IdPool(np.concatenate([p.user_id for _, p in parts]),
                  np.concatenate([p.ifa for _, p in parts]))
    return merged, pool


def hex_ids(rng: np.random.Generator, n: int, prefix: str) -> np.ndarray:
    """``n`` pseudonymous ids: ``prefix`` + 16 hex digits."""
    raw = rng.integers(0, 2**63 - 1, size=n, dtype=np.int64)
    return np.asarray([f"{prefix}{int(v):016x}" for v in raw], dtype=object)


def sample_device_types(rng: np.random.Generator, n: int) -> np.ndarray:
    """Device types with a phone-first mix: phone 55%, PC 35%, tablet 10%."""
    return rng.choice(np.array([PHONE, PC, TABLET], dtype=np.int8), size=n, p=[0.55, 0.35, 0.10])


def sample_countries(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(country index, region) drawn by the countries' traffic shares."""
    share = np.array([c.share for c in COUNTRIES])
    country = rng.choice(len(COUNTRIES), size=n, p=share / share.sum()).astype(np.int16)
    region = np.empty(n, dtype=object)
    for i, c in enumerate(COUNTRIES):
        mask = country == i
        region[mask] = np.asarray(c.regions, dtype=object)[rng.integers(0, len(c.regions),
                                                                        int(mask.sum()))]
    return country, region


def residential_ips(rng: np.random.Generator, country: np.ndarray) -> np.ndarray:
    """One residential IP per row, from that row's country blocks."""
    out = np.empty(len(country), dtype=object)
    for i, c in enumerate(COUNTRIES):
        mask = country == i
        if mask.any():
            out[mask] = sample_ips(rng, c.residential_cidrs, int(mask.sum()))
    return out


def mobile_ifas(rng: np.random.Generator, device_type: np.ndarray, os: np.ndarray,
                lat_share_ios: float) -> np.ndarray:
    """Advertising ids for phones and tablets; none on PCs and on iOS devices that opted out."""
    ifa = random_ifas(rng, len(device_type))
    mobile = device_type != PC
    opted_out = (os == "iOS") & (rng.random(len(os)) < lat_share_ios)
    ifa[~mobile | opted_out] = ""
    return ifa


def build_humans(rng: np.random.Generator, *, n_users: int, n_groups: int, user_re_sd: float,
                 zipf_exponent: float, zipf_offset: float, lat_share_ios: float
                 ) -> tuple[Agents, IdPool]:
    """Users (group, random effect, country, Zipf activity) and their 1-3 devices."""
    group = rng.integers(0, n_groups, size=n_users).astype(np.int16)
    quality = rng.normal(0.0, user_re_sd, size=n_users)
    country, region = sample_countries(rng, n_users)
    # Zipf-like activity over a random ranking; the offset caps the heaviest users.
    rank = rng.permutation(n_users).astype(np.float64)
    activity = (rank + zipf_offset) ** -zipf_exponent
    user_ids = hex_ids(rng, n_users, "u")
    home_ip = residential_ips(rng, country)

    n_dev = rng.choice(np.array([1, 2, 3]), size=n_users, p=[0.6, 0.3, 0.1])
    user = np.repeat(np.arange(n_users), n_dev)
    m = len(user)
    device_type = sample_device_types(rng, m)
    ua, os = sample_user_agents(rng, device_type)
    # Households share one IP; half of the phones browse from a carrier IP instead.
    ip = home_ip[user].copy()
    carrier = (device_type == PHONE) & (rng.random(m) < 0.5)
    ip[carrier] = residential_ips(rng, country[user][carrier])
    ifa = mobile_ifas(rng, device_type, os, lat_share_ios)
    agents = Agents(
        kind=np.zeros(m, dtype=np.int8), user=user.astype(np.int64), group=group[user],
        quality=quality[user], device_type=device_type, os=os, ua=ua, ip=ip,
        country=country[user], region=region[user], web_key=web_device_keys(ip, ua),
        id_start=np.arange(m, dtype=np.int64), id_count=np.ones(m, dtype=np.int64),
        weight=activity[user] / n_dev[user],
    )
    return agents, IdPool(user_ids[user], ifa)


__all__ = ["CRAWLER", "DATACENTER", "HUMAN", "KIND_NAMES", "RESIDENTIAL", "Agents", "IdPool",
           "build_humans", "concat_agents", "hex_ids", "mobile_ifas", "residential_ips",
           "sample_countries", "sample_device_types"]

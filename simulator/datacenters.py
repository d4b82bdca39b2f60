"""Data-centre and crawler IP ranges, and vectorised IPv4 helpers.

``DATACENTER_CIDRS`` is a small, fixed snapshot of well-known cloud and hosting
ranges (AWS, Google Cloud, Azure, DigitalOcean, Linode, Hetzner, OVH, Scaleway). It is
illustrative, not authoritative: real IVT screening reads the providers' published
lists (e.g. AWS ``ip-ranges.json``), which change weekly. The simulator draws
data-centre bot IPs from it, so a fraud model or a general-IVT rule can use the same
list as its "known data-centre ranges" feature.

``CRAWLER_CIDRS`` holds ranges the big search-engine crawlers publish for their bots.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np

#: (provider, CIDR) pairs; the order is part of the simulator's determinism.
DATACENTER_RANGES: tuple[tuple[str, str], ...] = (
    ("aws", "3.80.0.0/12"),
    ("aws", "18.204.0.0/14"),
    ("aws", "52.0.0.0/11"),
    ("aws", "54.144.0.0/12"),
    ("gcp", "34.64.0.0/10"),
    ("gcp", "35.184.0.0/13"),
    ("azure", "20.36.0.0/14"),
    ("azure", "40.112.0.0/13"),
    ("digitalocean", "104.131.0.0/16"),
    ("digitalocean", "142.93.0.0/16"),
    ("digitalocean", "159.65.0.0/16"),
    ("linode", "45.33.0.0/17"),
    ("hetzner", "5.9.0.0/16"),
    ("hetzner", "95.216.0.0/15"),
    ("ovh", "51.68.0.0/16"),
    ("scaleway", "51.15.0.0/16"),
)

#: Data-centre CIDR ranges (public constant list; see the module docstring).
DATACENTER_CIDRS: tuple[str, ...] = tuple(cidr for _, cidr in DATACENTER_RANGES)

#: Published search-engine crawler ranges, by crawler family.
CRAWLER_CIDRS: dict[str, tuple[str, ...]] = {
    "google": ("66.249.64.0/19",),
    "bing": ("157.55.39.0/24", "207.46.13.0/24", "40.77.167.0/24"),
    "other": ("5.255.253.0/24", "180.76.15.0/24", "17.58.96.0/19"),
}


@lru_cache(maxsize=64)
def _bounds(cidrs: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    nets = [ipaddress.IPv4Network(c) for c in cidrs]
    lo = np.array([int(n.network_address) for n in nets], dtype=np.int64)
    hi = np.array([int(n.broadcast_address) for n in nets], dtype=np.int64)
    return lo, hi


def ints_to_ips(values: np.ndarray) -> np.ndarray:
    """Dotted-quad strings (object array) for an array of IPv4 integers."""
    v = np.asarray(values, dtype=np.int64)
    parts = [((v >> shift) & 255).astype(str) for shift in (24, 16, 8, 0)]
    out = parts[0].astype(object)
    for p in parts[1:]:
        out = out + "." + p.astype(object)
    return np.asarray(out, dtype=object)


def ips_to_ints(ips: Iterable[str]) -> np.ndarray:
    """IPv4 integers for dotted-quad strings (-1 where a string is not an IPv4 address)."""
    out: list[int] = []
    for ip in ips:
        try:
            out.append(int(ipaddress.IPv4Address(ip)))
        except ValueError:
            out.append(-1)
    return np.asarray(out, dtype=np.int64)


def sample_ips(rng: np.random.Generator, cidrs: Sequence[str], n: int) -> np.ndarray:
    """``n`` host addresses drawn uniformly over ``cidrs`` (range chosen by its size)."""
    lo, hi = _bounds(tuple(cidrs))
    size = (hi - lo - 1).clip(min=1)
    which = rng.choice(len(lo), size=n, p=size / size.sum())
    host = 1 + np.floor(rng.random(n) * size[which]).astype(np.int64)
    return ints_to_ips(lo[which] + host)


def in_ranges(ips: Iterable[str], cidrs: Sequence[str] = DATACENTER_CIDRS) -> np.ndarray:
    """Boolean array: is each IP inside any of ``cidrs`` (default: the data-centre list)."""
    lo, hi = _bounds(tuple(cidrs))
    v = ips_to_ints(ips)
    if v.size == 0:
        return np.zeros(0, dtype=bool)
    inside = (v[:, None] >= lo[None, :]) & (v[:, None] <= hi[None, :])
    return np.asarray(inside.any(axis=1), dtype=bool)


def is_datacenter_ip(ip: str) -> bool:
    """Whether one IPv4 address lies in :data:`DATACENTER_CIDRS`."""
    return bool(in_ranges([ip])[0])


__all__ = ["CRAWLER_CIDRS", "DATACENTER_CIDRS", "DATACENTER_RANGES", "in_ranges", "ints_to_ips",
           "ips_to_ints", "is_datacenter_ip", "sample_ips"]

"""General-IVT signals computed at request time: declared crawlers and data-centre IPs.

The crawler patterns come from the public crawler-user-agents list
(``<shared_data>/crawler_user_agents/crawler-user-agents.json``) when present, else from
a short built-in list of the best-known crawlers. The data-centre ranges are the cloud
providers' published ranges (a small snapshot; production reads the providers' lists,
which change weekly). Both are compiled once per process and cached.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

BUILTIN_CRAWLER_PATTERNS = (
    r"Googlebot", r"bingbot", r"Baiduspider", r"YandexBot", r"DuckDuckBot", r"Slurp",
    r"facebookexternalhit", r"AhrefsBot", r"SemrushBot", r"MJ12bot", r"crawler", r"spider",
    r"[a-z]bot[/ ;)]", r"curl/", r"python-requests", r"Wget",
)

# Published ranges of large cloud and hosting providers (snapshot).
DATACENTER_CIDRS = (
    "3.80.0.0/12", "18.204.0.0/14", "52.0.0.0/11", "54.144.0.0/12", "34.64.0.0/10",
    "35.184.0.0/13", "20.36.0.0/14", "40.112.0.0/13", "104.131.0.0/16", "142.93.0.0/16",
    "159.65.0.0/16", "45.33.0.0/17", "5.9.0.0/16", "95.216.0.0/15", "51.68.0.0/16",
    "51.15.0.0/16",
)


@lru_cache(maxsize=4)
def crawler_regex(shared_data: Path | None = None) -> re.Pattern[str]:
    patterns: list[str] = list(BUILTIN_CRAWLER_PATTERNS)
    path = shared_data / "crawler_user_agents" / "crawler-user-agents.json" if shared_data else None
    if path is not None and path.exists():
        patterns = [str(e["pattern"]) for e in json.loads(path.read_text())]
    valid = []
    for p in patterns:
        try:
            re.compile(p)
        except re.error:
            log.warning("skipping an invalid crawler pattern %r", p)
            continue
        valid.append(p)
    return re.compile("|".join(f"(?:{p})" for p in valid))


@lru_cache(maxsize=1)
def _dc_ranges() -> tuple[tuple[int, int], ...]:
    nets = [ipaddress.ip_network(c) for c in DATACENTER_CIDRS]
    return tuple((int(n.network_address), int(n.broadcast_address)) for n in nets)


def _ipv4(ip: str) -> int:
    """The address as an integer; -1 for anything but a dotted-quad IPv4 address.

    ``inet_pton`` takes exactly what ``ipaddress.IPv4Address`` takes (four decimal
    octets, no leading zeros; tests/features/test_ivt.py compares them) without
    building an address object: one call per bid request."""
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")
    except (OSError, ValueError, TypeError):
        return -1


def _is_datacenter_one(ip: str) -> bool:
    x = _ipv4(ip)
    return x >= 0 and any(lo <= x <= hi for lo, hi in _dc_ranges())


def is_datacenter(ips: Sequence[str]) -> np.ndarray:
    return np.fromiter((_is_datacenter_one(i) for i in ips), dtype=bool, count=len(ips))


@lru_cache(maxsize=65_536)
def _is_crawler_one(ua: str, shared_data: Path | None) -> bool:
    # The combined pattern is large (~26 kB); a user agent is matched once per process.
    return bool(ua) and crawler_regex(shared_data).search(ua) is not None


def is_crawler(uas: Sequence[str], shared_data: Path | None = None) -> np.ndarray:
    return np.array([_is_crawler_one(ua, shared_data) for ua in uas], dtype=bool)


#: The columns of :func:`ivt_columns`, in the order :func:`ivt_values` returns them.
IVT_COLUMNS = ("ua_crawler", "dc_ip", "ua_len")


def ivt_values(ip: str, ua: str, shared_data: Path | None = None) -> tuple[float, float, float]:
    """The IVT columns of one request (the serving path): crawler UA, data-centre IP,
    UA length."""
    return (float(_is_crawler_one(ua, shared_data)), float(_is_datacenter_one(ip)),
            float(len(ua)))


def ivt_columns(ips: Sequence[str], uas: Sequence[str], shared_data: Path | None = None
                ) -> dict[str, np.ndarray]:
    """On-demand IVT columns for the fraud features: crawler UA, data-centre IP, UA length."""
    return {"ua_crawler": is_crawler(uas, shared_data).astype(np.float64),
            "dc_ip": is_datacenter(ips).astype(np.float64),
            "ua_len": np.array([len(u) for u in uas], dtype=np.float64)}


__all__ = ["BUILTIN_CRAWLER_PATTERNS", "DATACENTER_CIDRS", "IVT_COLUMNS", "crawler_regex",
           "is_crawler", "is_datacenter", "ivt_columns", "ivt_values"]

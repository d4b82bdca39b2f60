"""Devices: OpenRTB device types, operating systems, browser user agents, advertising ids.

The user-agent catalogue is a fixed list of realistic strings (browser family x version)
with market-share-like weights; :func:`device_key` is the event log's ``device_id`` rule
(the same rule the decision service applies to a parsed request).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# OpenRTB 2.x device.devicetype values used by the simulator.
PC = 2
PHONE = 4
TABLET = 5
#: Device types in index order: effects and tables are indexed by position in this tuple.
DEVICE_TYPES: tuple[int, ...] = (PC, PHONE, TABLET)

_ZERO_IFA = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True, slots=True)
class UaFamily:
    device_type: int
    os: str
    template: str           # "{v}" is replaced by each version
    versions: tuple[str, ...]
    weight: float           # share within the device type


_CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36"
_FAMILIES: tuple[UaFamily, ...] = (
    UaFamily(PC, "Windows", _CHROME, ("131", "132", "133", "134"), 0.45),
    UaFamily(PC, "Windows", _CHROME + " Edg/{v}.0.0.0", ("131", "132", "133"), 0.15),
    UaFamily(PC, "Windows", "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
             ("133", "134", "135"), 0.07),
    UaFamily(PC, "macOS", "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{v} Safari/605.1.15",
             ("17.6", "18.1", "18.2"), 0.12),
    UaFamily(PC, "macOS", "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36",
             ("131", "132", "133"), 0.15),
    UaFamily(PC, "Linux", "Mozilla/5.0 (X11; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
             ("133", "134"), 0.03),
    UaFamily(PC, "Linux", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36",
             ("131", "132"), 0.03),
    UaFamily(PHONE, "iOS", "Mozilla/5.0 (iPhone; CPU iPhone OS {v} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.0 Mobile/15E148 Safari/604.1",
             ("17_6", "18_1", "18_2", "18_3"), 0.45),
    UaFamily(PHONE, "Android", "Mozilla/5.0 (Linux; Android {v}; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/132.0.0.0 Mobile Safari/537.36",
             ("12", "13", "14", "15"), 0.50),
    UaFamily(PHONE, "Android", "Mozilla/5.0 (Linux; Android {v}; SAMSUNG SM-S921B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/27.0 Chrome/125.0.0.0 Mobile Safari/537.36",
             ("14", "15"), 0.05),
    UaFamily(TABLET, "iOS", "Mozilla/5.0 (iPad; CPU OS {v} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.0 Mobile/15E148 Safari/604.1",
             ("17_6", "18_1", "18_2"), 0.60),
    UaFamily(TABLET, "Android", "Mozilla/5.0 (Linux; Android {v}; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/132.0.0.0 Safari/537.36",
             ("13", "14"), 0.40),
)

#: What data-centre bots driving a headless browser announce.
HEADLESS_UAS: tuple[str, ...] = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/133.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/132.0.0.0 Safari/537.36",
)


@dataclass(frozen=True, slots=True)
class UaCatalog:
    ua: np.ndarray           # object array of strings
    os: np.ndarray           # object array
    device_type: np.ndarray  # int8
    weight: np.ndarray       # float, sums to 1 within each device type


@lru_cache(maxsize=1)
def ua_catalog() -> UaCatalog:
    """Every (family, version) user agent with its weight within its device type."""
    ua: list[str] = []
    os_: list[str] = []
    dt: list[int] = []
    w: list[float] = []
    for fam in _FAMILIES:
        # Newer versions are more common: weights 1, 2, ..., k over the listed versions.
        vw = np.arange(1, len(fam.versions) + 1, dtype=float)
        vw /= vw.sum()
        for v, share in zip(fam.versions, vw, strict=True):
            ua.append(fam.template.replace("{v}", v))
            os_.append(fam.os)
            dt.append(fam.device_type)
            w.append(fam.weight * share)
    weights = np.asarray(w)
    types = np.asarray(dt, dtype=np.int8)
    for t in DEVICE_TYPES:
        weights[types == t] /= weights[types == t].sum()
    return UaCatalog(np.asarray(ua, dtype=object), np.asarray(os_, dtype=object), types, weights)


def sample_user_agents(rng: np.random.Generator, device_type: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(ua, os) object arrays for devices of the given OpenRTB types."""
    cat = ua_catalog()
    idx = np.zeros(len(device_type), dtype=np.int64)
    for t in DEVICE_TYPES:
        rows = np.flatnonzero(cat.device_type == t)
        mask = device_type == t
        idx[mask] = rng.choice(rows, size=int(mask.sum()), p=cat.weight[rows])
    return cat.ua[idx], cat.os[idx]


def random_ifas(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` version-4 UUID strings (advertising ids) drawn from ``rng``."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    out = np.empty(n, dtype=object)
    for i, row in enumerate(raw):
        h = row.tobytes().hex()
        out[i] = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return out


def device_key(ifa: str | None, ip: str | None, ua: str | None) -> str:
    """The ``device_id`` rule: the advertising id, else a 64-bit blake2b of ip + ua.

    Zeroed advertising ids count as absent. This matches the decision service's rule
    (``decisioning.request_context.device_key``) so that training and serving agree.
    """
    if ifa and ifa != _ZERO_IFA:
        return ifa
    if not ip and not ua:
        return ""
    raw = f"{ip or ''}\x00{ua or ''}".encode()
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


def web_device_keys(ip: np.ndarray, ua: np.ndarray) -> np.ndarray:
    """:func:`device_key` without an ifa, for each (ip, ua) pair (object array)."""
    return np.asarray([device_key(None, a, b) for a, b in zip(ip, ua, strict=True)], dtype=object)


__all__ = ["DEVICE_TYPES", "HEADLESS_UAS", "PC", "PHONE", "TABLET", "UaCatalog", "UaFamily",
           "device_key", "random_ifas", "sample_user_agents", "ua_catalog", "web_device_keys"]

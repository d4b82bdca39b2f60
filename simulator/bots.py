"""Bots: three kinds of invalid traffic and how they click.

* ``crawler`` — declared crawlers: user agents from the public crawler list
  (``<shared_data>/crawler_user_agents/crawler-user-agents.json``) or a built-in list of
  well-known ones; IPs from the crawlers' published ranges; site traffic only; they
  almost never click.
* ``datacenter`` — automated browsers in the cloud: IPs in
  :data:`~simulator.datacenters.DATACENTER_CIDRS`, often headless user agents, few
  agents sending many requests each while rotating user and advertising ids; fast clicks.
* ``residential`` — residential proxies / infected home machines: residential IPs and
  normal browser user agents, human-like request timing, but a click rate far above
  humans that ignores interest, very short click delays and repeated clicks.

No bot ever converts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.datacenters import CRAWLER_CIDRS, DATACENTER_CIDRS, sample_ips
from simulator.devices import HEADLESS_UAS, PC, PHONE, sample_user_agents, web_device_keys
from simulator.errors import SimulationError
from simulator.population import (
    CRAWLER,
    DATACENTER,
    RESIDENTIAL,
    Agents,
    IdPool,
    hex_ids,
    mobile_ifas,
    residential_ips,
    sample_countries,
    sample_device_types,
)

logger = logging.getLogger(__name__)

#: Used when the public crawler list is absent: well-known declared crawlers.
BUILTIN_CRAWLER_USER_AGENTS: tuple[str, ...] = (
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/132.0.6834.110 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "DuckDuckBot/1.1; (+http://duckduckgo.com/duckduckbot.html)",
    "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
    "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/13.1.1 Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)",
)

CRAWLER_UA_FILE = Path("crawler_user_agents") / "crawler-user-agents.json"


@dataclass(frozen=True, slots=True)
class ClickBehaviour:
    """How one kind of source clicks once it has decided to click an impression."""

    delay_median_s: float    # impression -> first click, lognormal median
    delay_sigma: float       # lognormal shape
    repeat_p: float          # chance of each further click (geometric count)
    max_clicks: int
    gap_median_s: float      # between repeated clicks, lognormal median (sigma 0.5)


#: Indexed by source kind code (human, crawler, datacenter, residential).
CLICK_BEHAVIOUR: tuple[ClickBehaviour, ...] = (
    ClickBehaviour(6.0, 0.8, 0.02, 2, 0.7),    # humans: seconds, rare accidental double click
    ClickBehaviour(20.0, 1.0, 0.0, 1, 1.0),    # crawlers: the odd link followed
    ClickBehaviour(0.4, 0.5, 0.30, 3, 0.3),    # data-centre bots: scripted, fast
    ClickBehaviour(0.9, 0.4, 0.60, 6, 0.8),    # residential bots: fast and repeated
)


def load_crawler_user_agents(path: Path | None) -> tuple[tuple[str, ...], str]:
    """(user agents, source) from the public crawler list, else the built-in list.

    ``source`` is the file path, or ``"builtin"`` when the file is absent.
    """
    if path is None or not path.exists():
        logger.info("crawler user-agent list not found (%s); using the built-in list", path)
        return BUILTIN_CRAWLER_USER_AGENTS, "builtin"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        seen: dict[str, None] = {}
        for entry in doc:
            for ua in entry.get("instances", ()):
                if isinstance(ua, str) and ua.strip():
                    seen.setdefault(ua.strip(), None)
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise SimulationError(f"{path}: unreadable crawler user-agent list: {exc}") from exc
    if not seen:
        raise SimulationError(f"{path}: no user-agent instances in the crawler list")
    return tuple(seen), str(path)


def _crawler_ips(rng: np.random.Generator, uas: np.ndarray) -> np.ndarray:
    """Crawler IPs from the range of the crawler family named in the user agent."""
    low = np.asarray([u.lower() for u in uas], dtype=object)
    fam = np.where([("google" in u) for u in low], "google",
                   np.where([("bing" in u or "msnbot" in u) for u in low], "bing", "other"))
    out = np.empty(len(uas), dtype=object)
    for name in ("google", "bing", "other"):
        mask = fam == name
        if mask.any():
            cidrs = CRAWLER_CIDRS[name] + (DATACENTER_CIDRS if name == "other" else ())
            out[mask] = sample_ips(rng, cidrs, int(mask.sum()))
    return out


def _rows(kind: int, n: int, *, device_type: np.ndarray, os: np.ndarray, ua: np.ndarray,
          ip: np.ndarray, country: np.ndarray, region: np.ndarray, id_count: np.ndarray,
          weight: np.ndarray) -> Agents:
    return Agents(
        kind=np.full(n, kind, dtype=np.int8), user=np.full(n, -1, dtype=np.int64),
        group=np.full(n, -1, dtype=np.int16), quality=np.zeros(n), device_type=device_type,
        os=os, ua=ua, ip=ip, country=country, region=region, web_key=web_device_keys(ip, ua),
        id_start=np.concatenate([[0], np.cumsum(id_count)[:-1]]).astype(np.int64),
        id_count=id_count.astype(np.int64), weight=weight,
    )


def build_crawlers(rng: np.random.Generator, n: int, crawler_uas: tuple[str, ...]
                   ) -> tuple[Agents, IdPool]:
    """Declared crawlers: one crawler user agent each, no user or advertising id."""
    pick = rng.choice(len(crawler_uas), size=n, replace=n > len(crawler_uas))
    ua = np.asarray(crawler_uas, dtype=object)[pick]
    usa = np.zeros(n, dtype=np.int16)  # COUNTRIES[0]: the crawlers' home
    agents = _rows(CRAWLER, n, device_type=np.full(n, PC, dtype=np.int8),
                   os=np.full(n, "", dtype=object), ua=ua, ip=_crawler_ips(rng, ua),
                   country=usa, region=np.full(n, "", dtype=object),
                   id_count=np.ones(n, dtype=np.int64), weight=np.ones(n))
    return agents, IdPool(np.full(n, "", dtype=object), np.full(n, "", dtype=object))


def build_datacenter_bots(rng: np.random.Generator, n: int, id_pool_size: int
                          ) -> tuple[Agents, IdPool]:
    """Cloud bots: data-centre IPs, headless or spoofed user agents, rotating ids."""
    device_type = np.where(rng.random(n) < 0.7, PC, PHONE).astype(np.int8)
    ua, os = sample_user_agents(rng, device_type)
    headless = (device_type == PC) & (rng.random(n) < 0.5)
    ua[headless] = np.asarray(HEADLESS_UAS, dtype=object)[rng.integers(0, len(HEADLESS_UAS),
                                                                       int(headless.sum()))]
    os[headless] = np.where([("Windows" in u) for u in ua[headless]], "Windows", "Linux")
    country, _ = sample_countries(rng, n)
    ids = np.full(n, id_pool_size, dtype=np.int64)
    total = int(ids.sum())
    pool_dt = np.repeat(device_type, ids)
    pool_os = np.repeat(os, ids)
    agents = _rows(DATACENTER, n, device_type=device_type, os=os, ua=ua,
                   ip=sample_ips(rng, DATACENTER_CIDRS, n), country=country,
                   region=np.full(n, "", dtype=object), id_count=ids, weight=np.ones(n))
    return agents, IdPool(hex_ids(rng, total, "u"), mobile_ifas(rng, pool_dt, pool_os, 0.0))


def build_residential_bots(rng: np.random.Generator, n: int, lat_share_ios: float
                           ) -> tuple[Agents, IdPool]:
    """Residential bots: indistinguishable from humans by request; stable ids."""
    country, region = sample_countries(rng, n)
    device_type = sample_device_types(rng, n)
    ua, os = sample_user_agents(rng, device_type)
    rank = rng.permutation(n).astype(np.float64)
    agents = _rows(RESIDENTIAL, n, device_type=device_type, os=os, ua=ua,
                   ip=residential_ips(rng, country), country=country, region=region,
                   id_count=np.ones(n, dtype=np.int64), weight=(rank + 5.0) ** -0.8)
    return agents, IdPool(hex_ids(rng, n, "u"), mobile_ifas(rng, device_type, os, lat_share_ios))


__all__ = ["BUILTIN_CRAWLER_USER_AGENTS", "CLICK_BEHAVIOUR", "CRAWLER_UA_FILE", "ClickBehaviour",
           "build_crawlers", "build_datacenter_bots", "build_residential_bots",
           "load_crawler_user_agents"]

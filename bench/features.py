"""Feature-read suite: all features of one auction, our reader vs Feast's get_online_features.

An auction reads user, device, ip, publisher and 20 candidate ads. Users are drawn
Zipf-distributed over 100,000 users (a few heavy users, a long tail), as real traffic
is; each request comes from one of its user's 1-3 devices and that device's IP
(household or carrier), as in the simulator's population. The online stores (SQLite
and Redis) are loaded with synthetic rows for every entity, through Feast's own write
path. The naive baseline is what a Feast user would write: one
``get_online_features`` call for the request-level views and one for the ads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from adplatform.config import Settings
from bench.harness import Row, with_ratios
from features.context import AdRef, RequestContext
from features.ops import apply
from features.reader import OnlineReader, ReaderConfig
from features.repo import FLOAT_FIELDS, VIEWS
from features.store import open_store

N_USERS = 100_000
N_ADS = 200
N_PUBS = 500
ZIPF_A = 1.2          # heavy head: the top users account for a large share of requests
K = 20
# Devices and IPs follow the user, as in ``simulator.population.build_humans``: a user
# owns 1-3 devices (60/30/10%), the household shares one IP, and some devices browse
# from a carrier IP of their own. Drawing device and IP independently of the user would
# make every auction's device and IP a cold key, which no real traffic does.
DEVICES_PER_USER = (1, 2, 3)
DEVICES_PER_USER_P = (0.6, 0.3, 0.1)
CARRIER_SHARE = 0.25  # simulator: half of the phones (55% of devices) use a carrier IP


@dataclass(frozen=True)
class Population:
    """Who sends the requests: each user's devices and each device's IP."""

    rank_to_user: np.ndarray   # (N_USERS,) Zipf rank -> user index (heavy users scattered)
    first_device: np.ndarray   # (N_USERS,) index of the user's first device
    n_devices: np.ndarray      # (N_USERS,) 1-3
    device_ip: np.ndarray      # (n_dev,) IP index of each device

    @property
    def n_ips(self) -> int:
        return int(self.device_ip.max()) + 1


def population(rng: np.random.Generator) -> Population:
    n_dev = rng.choice(np.array(DEVICES_PER_USER), size=N_USERS, p=DEVICES_PER_USER_P)
    first = np.concatenate([[0], np.cumsum(n_dev)[:-1]])
    owner = np.repeat(np.arange(N_USERS), n_dev)                       # (n_dev,)
    ip = owner.copy()                                                  # household IP
    carrier = rng.random(len(owner)) < CARRIER_SHARE
    ip[carrier] = N_USERS + np.arange(int(carrier.sum()))              # a carrier IP each
    return Population(rng.permutation(N_USERS), first, n_dev, ip)


def _load(settings: Settings, rng: np.random.Generator, pop: Population) -> None:
    store = apply(settings)
    sizes = {"user_stats": N_USERS, "ad_stats": N_ADS, "campaign_stats": 50,
             "publisher_stats": N_PUBS, "ip_stats": pop.n_ips,
             "device_stats": len(pop.device_ip)}
    prefix = {"user_stats": "u", "ad_stats": "cr", "campaign_stats": "c",
              "publisher_stats": "p", "ip_stats": "ip", "device_stats": "d"}
    ts = pd.Timestamp("2026-01-10", tz="UTC")
    for view, _, key, fields in VIEWS:
        n = sizes[view]
        df = pd.DataFrame({key: [f"{prefix[view]}{i}" for i in range(n)],
                           "event_timestamp": ts})
        for f in fields:
            v = rng.poisson(20, n)
            df[f] = v.astype(np.float32) if f in FLOAT_FIELDS else v.astype(np.int64)
        for start in range(0, n, 20_000):
            store.write_to_online_store(view, df.iloc[start:start + 20_000])


def _auctions(n: int, rng: np.random.Generator,
              pop: Population) -> list[tuple[RequestContext, list[AdRef]]]:
    users = pop.rank_to_user[np.minimum(rng.zipf(ZIPF_A, n), N_USERS) - 1]
    devices = pop.first_device[users] + rng.integers(0, pop.n_devices[users])
    out = []
    for i in range(n):
        ctx = RequestContext(ts=datetime(2026, 1, 10, 12, tzinfo=UTC), request_id=str(i),
                             imp_id="1", user_id=f"u{users[i]}",
                             publisher_id=f"p{rng.integers(N_PUBS)}",
                             ip=f"ip{pop.device_ip[devices[i]]}",
                             device_id=f"d{devices[i]}", format="banner", w=300, h=250)
        ads = [AdRef("c", f"cr{a}", int(a % 8)) for a in rng.choice(N_ADS, K, replace=False)]
        out.append((ctx, ads))
    return out


def _time(fn: Callable[[RequestContext, list[AdRef]], object],
          auctions: list[tuple[RequestContext, list[AdRef]]]) -> tuple[np.ndarray, float]:
    lat = np.empty(len(auctions))
    t_start = time.perf_counter()
    for i, (ctx, ads) in enumerate(auctions):
        t0 = time.perf_counter()
        fn(ctx, ads)
        lat[i] = (time.perf_counter() - t0) * 1000.0
    return lat, len(auctions) / (time.perf_counter() - t_start)


def _row(target: str, baseline: str, lat: np.ndarray, rps: float, **extra: float | str) -> Row:
    return Row(suite="features", target=target, baseline=baseline, rate=None,
               p50_ms=float(np.percentile(lat, 50)), p99_ms=float(np.percentile(lat, 99)),
               throughput=rps, extra=dict(extra))


def run(settings: Settings, *, n: int = 3000, seed: int = 5) -> list[Row]:
    rows: list[Row] = []
    stores = {
        "sqlite": Settings(**{**settings.model_dump(),
                              "home": settings.workspace.root / "bench-features"}),
        "redis": Settings(**{**settings.model_dump(), "profile": "services",
                             "home": settings.workspace.root / "bench-features-redis",
                             "redis_url": "redis://127.0.0.1:6379/13"}),
    }
    for name, s in stores.items():
        rng = np.random.default_rng(seed)
        pop = population(rng)
        _load(s, rng, pop)
        store = open_store(s)
        auctions = _auctions(n, rng, pop)
        request_feats = [f"{v}:{f}" for v, _, _, fields in VIEWS
                         if v in ("user_stats", "publisher_stats", "ip_stats", "device_stats")
                         for f in fields]
        ad_feats = [f"ad_stats:{f}" for f in dict((v, f) for v, _, _, f in VIEWS)["ad_stats"]]

        def naive(ctx: RequestContext, ads: list[AdRef], store=store,  # type: ignore[no-untyped-def]
                  request_feats=request_feats, ad_feats=ad_feats) -> object:
            store.get_online_features(features=request_feats, entity_rows=[{
                "user_id": ctx.user_id, "publisher_id": ctx.publisher_id, "ip": ctx.ip,
                "device_id": ctx.device_id}]).to_dict()
            return store.get_online_features(
                features=ad_feats, entity_rows=[{"creative_id": a.creative_id} for a in ads]
            ).to_dict()

        _time(naive, auctions[:100])                       # warm-up
        base_lat, base_rps = _time(naive, auctions)
        base = _row(f"naive get_online_features ({name})", "-", base_lat, base_rps)
        rows.append(base)
        uncached = OnlineReader(store, ReaderConfig(cache_size=0))
        _time(uncached.raw_columns, auctions[:100])
        lat, rps = _time(uncached.raw_columns, auctions)
        rows.append(with_ratios(_row(f"reader, uncached ({name})", base.target, lat, rps),
                                base))
        cfg = ReaderConfig()
        cached = OnlineReader(store, cfg)
        lat, rps = _time(cached.raw_columns, auctions)
        rows.append(with_ratios(_row(
            f"reader, cached ({name})", base.target, lat, rps,
            hit_rate=round(cached.cache_stats.hit_rate, 4), cache_size=cfg.cache_size,
            cache_ttl_s=cfg.cache_ttl_s), base))
    rows += freshness(stores["sqlite"], stores["redis"])
    rows += crawler_match(settings.shared_data, seed=seed)
    return rows


def browser_agents(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct browser user agents (Chrome, Firefox and Safari templates with
    random versions and devices): each is new to a matcher, as a fresh device is."""
    templates = (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/{a}.0.{b}.{c} Safari/537.36",
        "Mozilla/5.0 (Linux; Android {d}; SM-A{b}) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/{a}.0.{c}.0 Mobile Safari/537.36",
        "Mozilla/5.0 (X11; Linux x86_64; rv:{a}.{d}) Gecko/{b}0101 Firefox/{a}.{d}.{c}",
        "Mozilla/5.0 (iPhone; CPU iPhone OS {d}_{c} like Mac OS X) AppleWebKit/605.1.{b} "
        "(KHTML, like Gecko) Version/{d}.{c} Mobile/15E{b} Safari/604.1",
    )
    out: set[str] = set()
    while len(out) < n:     # every template has ~10^7 variants or more: this ends
        a, b, c, d = (int(x) for x in rng.integers((90, 100, 0, 9), (140, 9999, 300, 19)))
        out.add(templates[len(out) % len(templates)].format(a=a, b=b, c=c, d=d))
    return sorted(out)


def crawler_match(shared_data: Path, *, n: int = 2000, seed: int = 5) -> list[Row]:
    """The crawler signal for user agents a process has not seen yet (its result is
    memoised per agent after that): Python's ``re`` alternation of every pattern (the
    baseline) against :class:`features.ivt.CrawlerMatcher` (RE2), on distinct browser
    agents and on the crawler list's own examples when the shared data is there."""
    import json

    from features.ivt import CrawlerMatcher, crawler_patterns, crawler_regex

    source = shared_data if (shared_data / "crawler_user_agents").exists() else None
    patterns = crawler_patterns(source)
    agents = browser_agents(n, np.random.default_rng(seed))
    if source is not None:
        entries = json.loads((source / "crawler_user_agents" /
                              "crawler-user-agents.json").read_text())
        agents += [str(i) for e in entries for i in e.get("instances", [])][:n]
    reference, matcher = crawler_regex(source), CrawlerMatcher(patterns)
    label = f"{len(patterns)} patterns, {len(agents)} distinct agents"

    def timed(search: Callable[[str], object]) -> tuple[np.ndarray, float]:
        for ua in agents[:50]:
            search(ua)                              # compiled (RE2 builds its DFA lazily)
        lat = np.empty(len(agents))
        t_start = time.perf_counter()
        for i, ua in enumerate(agents):
            t0 = time.perf_counter()
            search(ua)
            lat[i] = (time.perf_counter() - t0) * 1000.0
        return lat, len(agents) / (time.perf_counter() - t_start)

    lat, rps = timed(reference.search)
    base = _row(f"crawler match, re ({label})", "-", lat, rps)
    lat, rps = timed(matcher.search)
    return [base, with_ratios(_row(f"crawler match, RE2 ({label})", base.target, lat, rps,
                                   re_fallback_patterns=matcher.re_patterns), base)]


def freshness(sqlite: Settings, redis_settings: Settings, n: int = 300) -> list[Row]:
    """Streaming freshness: publish -> visible in the online store (goal p99 <= 1 s)."""
    from features.streaming import measure_freshness

    out = []
    for store_name, s in (("sqlite", sqlite), ("redis", redis_settings)):
        transports = ("inprocess",) if store_name == "sqlite" else ("inprocess", "nats", "redis")
        for transport in transports:
            r = measure_freshness(s, transport, n, rate_hz=100.0)
            out.append(Row(suite="features", target=f"push freshness ({transport} -> {store_name})",
                           baseline="-", rate=100.0, p50_ms=float(r.get("p50_ms", "nan")),
                           p99_ms=float(r.get("p99_ms", "nan")), throughput=float("nan"),
                           errors=n - int(r["seen"]),
                           extra={"max_ms": float(r.get("max_ms", "nan")), "n": n}))
    return out

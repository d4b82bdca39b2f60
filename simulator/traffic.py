"""Traffic: when requests arrive, who sends them, where, and their fixed randomness.

Arrivals follow a diurnal intensity: each country's humans follow
:data:`~simulator.geo.DIURNAL_PROFILE` in their local time, residential bots mimic the
human mix, crawlers and data-centre bots run flat around the clock. Given arrival
times, :func:`generate` draws everything else vectorised — the source (country's humans
or a bot kind) in proportion to its intensity at that hour, the agent (Zipf activity),
its user/advertising id, the publisher (humans prefer publishers of their interest),
the slot (by device layout), the highest competing bid, and the uniforms that later
decide clicks and conversions. Batch days and the live exchange share this code; they
differ only in how arrival times are drawn (:class:`Clock`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime

import numpy as np
import pandas as pd

from simulator.devices import DEVICE_TYPES, PC
from simulator.geo import COUNTRIES, DIURNAL_PROFILE
from simulator.inventory import DESKTOP_OK, MOBILE_OK, SIZES
from simulator.population import CRAWLER, DATACENTER, HUMAN, RESIDENTIAL
from simulator.world import World

US_PER_HOUR = 3_600_000_000
US_PER_DAY = 24 * US_PER_HOUR


def sample_rows(cdf: np.ndarray, row: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Column index drawn from ``cdf[row[i]]`` with uniform ``u[i]``, for every ``i``.

    ``cdf`` is (R, C), each row non-decreasing and ending at 1; rows are offset by their
    index so one ``searchsorted`` serves all of them.
    """
    r, c = cdf.shape
    flat = (cdf + np.arange(r)[:, None]).ravel()
    idx = np.searchsorted(flat, row + u, side="right") - row * c
    return np.clip(idx, 0, c - 1)


def _cdf(weights: np.ndarray) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    total = w.sum(axis=-1, keepdims=True)
    cdf = np.cumsum(w / np.where(total > 0, total, 1.0), axis=-1)
    cdf[..., -1] = 1.0
    return cdf


def _source_intensity(world: World) -> np.ndarray:
    """(24 UTC hours, sources) intensity; sources = countries' humans, then bot kinds.

    Each source's daily mean equals its share of traffic, so the total's daily mean is 1.
    """
    cfg = world.config
    profile = np.asarray(DIURNAL_PROFILE) / np.mean(DIURNAL_PROFILE)
    hours = np.arange(24)
    share = np.array([c.share for c in COUNTRIES])
    share = share / share.sum()
    human = np.stack([share[i] * profile[(hours + c.utc_offset) % 24]
                      for i, c in enumerate(COUNTRIES)], axis=1)
    mix = np.asarray(cfg.bot_mix) / sum(cfg.bot_mix)
    crawler = np.full(24, cfg.bot_share * mix[0])
    datacenter = np.full(24, cfg.bot_share * mix[1])
    residential = cfg.bot_share * mix[2] * human.sum(axis=1)
    return np.column_stack([(1.0 - cfg.bot_share) * human, crawler, datacenter, residential])


@dataclass(frozen=True)
class Clock:
    """Maps "request count" to time: cumulative intensity and its inverse, per day."""

    start_us: int
    requests_per_day: int
    knots: np.ndarray          # (25,) cumulative share of a day's requests at each UTC hour

    @classmethod
    def for_world(cls, world: World, requests_per_day: int) -> Clock:
        total = _source_intensity(world).sum(axis=1)
        knots = np.concatenate([[0.0], np.cumsum(total) / total.sum()])
        start = int(world.config.start_datetime.timestamp()) * 1_000_000
        return cls(start, requests_per_day, knots)

    def _to_us(self, position: np.ndarray) -> np.ndarray:
        """Time (µs) at cumulative position ``position`` (in days' worth of requests)."""
        day = np.floor(position)
        hour = np.interp(position - day, self.knots, np.arange(25.0))
        return self.start_us + (day * US_PER_DAY + hour * US_PER_HOUR).astype(np.int64)

    def _position(self, ts_us: int) -> float:
        t = (ts_us - self.start_us) / US_PER_DAY
        day = np.floor(t)
        return float(day + np.interp((t - day) * 24, np.arange(25.0), self.knots))

    def day_times(self, rng: np.random.Generator, day: int, n: int) -> np.ndarray:
        """``n`` sorted arrival times (µs) within simulated day ``day`` (0 = start)."""
        return self._to_us(day + np.sort(rng.random(n)))

    def arrivals(self, rng: np.random.Generator, after_us: int, n: int) -> np.ndarray:
        """The next ``n`` arrivals of the Poisson process after ``after_us`` (µs)."""
        gaps = rng.exponential(1.0 / self.requests_per_day, size=n)
        return self._to_us(self._position(after_us) + np.cumsum(gaps))

    def day_start_us(self, day: int) -> int:
        return self.start_us + day * US_PER_DAY

    def to_datetime(self, ts_us: int) -> datetime:
        return pd.Timestamp(ts_us, unit="us", tz="UTC").to_pydatetime()


@dataclass(frozen=True)
class TrafficModel:
    """Sampling tables derived once from a world."""

    world: World
    source_cdf: np.ndarray        # (24, S) by UTC hour
    source_agents: tuple[np.ndarray, ...]
    source_agent_cdf: tuple[np.ndarray, ...]
    publisher_cdf: np.ndarray     # ((groups + 1) * 2, P): row = group * 2 + mobile
    slot_table: np.ndarray        # (P * 2, M) slot index, -1 padding: row = pub * 2 + mobile
    slot_cdf: np.ndarray          # (P * 2, M)
    device_index: np.ndarray      # OpenRTB devicetype -> position in DEVICE_TYPES
    utc_offset: np.ndarray        # by country index

    @classmethod
    def for_world(cls, world: World) -> TrafficModel:
        cfg, ag, pubs, slots = world.config, world.agents, world.publishers, world.slots
        intensity = _source_intensity(world)
        sources: list[np.ndarray] = [np.flatnonzero((ag.kind == HUMAN) & (ag.country == i))
                                     for i in range(len(COUNTRIES))]
        sources += [np.flatnonzero(ag.kind == k) for k in (CRAWLER, DATACENTER, RESIDENTIAL)]
        # A source with no agents (tiny worlds) gets no traffic.
        intensity[:, [len(s) == 0 for s in sources]] = 0.0
        # Publisher choice: popularity, boosted for the user's interest; apps on mobile only.
        groups = cfg.n_groups
        boost = np.exp(cfg.interest_publisher_boost
                       * (pubs.topic[None, :] == np.arange(groups)[:, None]))
        base = np.vstack([pubs.popularity * boost, pubs.popularity[None, :]])   # (G+1, P)
        desktop = np.where(pubs.is_app, 0.0, base)
        sites = desktop / desktop.sum(axis=1, keepdims=True)
        apps = np.where(pubs.is_app, base, 0.0)
        app_total = apps.sum(axis=1, keepdims=True)
        mobile = ((1 - cfg.app_share_mobile) * sites
                  + cfg.app_share_mobile * apps / np.where(app_total > 0, app_total, 1.0))
        pub_w = np.stack([desktop, mobile], axis=1).reshape(-1, len(pubs))
        # Slot choice: uniform over the publisher's slots that fit the device's layout.
        n_pub = len(pubs)
        per_pub = np.bincount(slots.publisher, minlength=n_pub)
        width = int(per_pub.max())
        table = np.full((n_pub * 2, width), -1, dtype=np.int64)
        weight = np.zeros((n_pub * 2, width))
        fill = np.zeros(n_pub * 2, dtype=np.int64)
        for j in range(len(slots)):
            p, s = int(slots.publisher[j]), int(slots.size[j])
            for m, ok in ((0, DESKTOP_OK[s]), (1, MOBILE_OK[s])):
                if ok:
                    r = p * 2 + m
                    table[r, fill[r]] = j
                    weight[r, fill[r]] = 1.0
                    fill[r] += 1
        device_index = np.zeros(max(DEVICE_TYPES) + 1, dtype=np.int64)
        device_index[list(DEVICE_TYPES)] = np.arange(len(DEVICE_TYPES))
        return cls(
            world=world, source_cdf=_cdf(intensity), source_agents=tuple(sources),
            source_agent_cdf=tuple(_cdf(ag.weight[s]) if len(s) else np.ones(1) for s in sources),
            publisher_cdf=_cdf(pub_w), slot_table=table, slot_cdf=_cdf(weight),
            device_index=device_index,
            utc_offset=np.array([c.utc_offset for c in COUNTRIES], dtype=np.int64),
        )


@dataclass(frozen=True)
class RequestBatch:
    """Generated requests as columns; latent columns never leave the simulator."""

    ts: np.ndarray             # int64 µs UTC
    request_id: np.ndarray     # object
    agent: np.ndarray          # int64, row of world.agents
    kind: np.ndarray           # int8 source kind (0 human)
    group: np.ndarray          # int16 latent interest group (-1 bots)
    quality: np.ndarray        # float64 per-user CTR effect
    user_id: np.ndarray        # object ("" none)
    ifa: np.ndarray            # object, sent on app requests only ("" none)
    device_id: np.ndarray      # object
    ip: np.ndarray             # object
    ua: np.ndarray             # object
    device_type: np.ndarray    # int8 OpenRTB devicetype
    device: np.ndarray         # int64 position in DEVICE_TYPES
    os: np.ndarray             # object
    country: np.ndarray        # int64 index into COUNTRIES
    region: np.ndarray         # object
    publisher: np.ndarray      # int64
    is_app: np.ndarray         # bool
    slot: np.ndarray           # int64
    size: np.ndarray           # int64 index into SIZES
    floor: np.ndarray          # float64 CPM
    local_hour: np.ndarray     # int64
    competing: np.ndarray      # float64 CPM, highest other bid (0: none)
    u_report: np.ndarray       # decides whether a loss reports min_bid_to_win
    u_click: np.ndarray
    u_conv: np.ndarray
    u_repeat: np.ndarray       # in (0, 1]
    z_render: np.ndarray
    z_delay: np.ndarray
    z_gap: np.ndarray
    z_conv_delay: np.ndarray
    z_value: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, idx: np.ndarray) -> RequestBatch:
        return RequestBatch(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    @staticmethod
    def concat(batches: list[RequestBatch]) -> RequestBatch:
        return RequestBatch(**{f.name: np.concatenate([getattr(b, f.name) for b in batches])
                               for f in fields(RequestBatch)})


def request_ids(prefix: str, day: int, start: int, n: int) -> np.ndarray:
    """Readable unique ids: ``<prefix><day:04d>-<seq:07d>`` (object array)."""
    seq = np.strings.zfill(np.arange(start, start + n).astype(np.dtypes.StringDType()), 7)
    head = f"{prefix}{day:04d}-"
    return np.strings.add(head, seq).astype(object)


def generate(model: TrafficModel, rng: np.random.Generator, ts: np.ndarray,
             request_id: np.ndarray) -> RequestBatch:
    """Requests arriving at ``ts`` (µs, sorted), everything drawn vectorised."""
    world = model.world
    ag, ids, pubs, slots = world.agents, world.ids, world.publishers, world.slots
    n = len(ts)
    u = rng.random((n, 6))
    hour = ((ts // US_PER_HOUR) % 24).astype(np.int64)
    source = sample_rows(model.source_cdf, hour, u[:, 0])
    agent = np.zeros(n, dtype=np.int64)
    for s, (rows, cdf) in enumerate(zip(model.source_agents, model.source_agent_cdf, strict=True)):
        mask = source == s
        if mask.any():
            agent[mask] = rows[np.searchsorted(cdf, u[mask, 1], side="right").clip(0, len(rows) - 1)]
    kind = ag.kind[agent]
    id_row = ag.id_start[agent] + np.floor(u[:, 2] * ag.id_count[agent]).astype(np.int64)
    device_type = ag.device_type[agent]
    mobile = (device_type != PC).astype(np.int64)
    group = ag.group[agent]
    pub_row = np.where(kind == HUMAN, group, world.config.n_groups).astype(np.int64) * 2 + mobile
    publisher = sample_rows(model.publisher_cdf, pub_row, u[:, 3])
    slot_row = publisher * 2 + mobile
    slot = model.slot_table[slot_row, sample_rows(model.slot_cdf, slot_row, u[:, 4])]
    is_app = pubs.is_app[publisher]
    ifa = np.where(is_app, ids.ifa[id_row], "").astype(object)
    device_id = np.where(ifa != "", ifa, ag.web_key[agent]).astype(object)
    country = ag.country[agent].astype(np.int64)
    local_hour = (hour + model.utc_offset[country]) % 24
    device = model.device_index[device_type]
    size = slots.size[slot]
    quality = ag.quality[agent]
    competing = world.competition.sample(rng, publisher=publisher, size=size, device=device,
                                         local_hour=local_hour, quality=quality)
    z = rng.standard_normal((n, 6))
    return RequestBatch(
        ts=ts.astype(np.int64), request_id=request_id, agent=agent, kind=kind, group=group,
        quality=quality, user_id=ids.user_id[id_row], ifa=ifa, device_id=device_id,
        ip=ag.ip[agent], ua=ag.ua[agent], device_type=device_type, device=device,
        os=ag.os[agent], country=country, region=ag.region[agent], publisher=publisher,
        is_app=is_app, slot=slot, size=size, floor=slots.floor[slot], local_hour=local_hour,
        competing=competing, u_report=u[:, 5], u_click=rng.random(n), u_conv=rng.random(n),
        u_repeat=1.0 - rng.random(n), z_render=z[:, 0], z_delay=z[:, 1], z_gap=z[:, 2],
        z_conv_delay=z[:, 3], z_value=z[:, 4],
    )


_COUNTRY_CODES = np.asarray([c.code for c in COUNTRIES], dtype=object)
_FORMATS = np.asarray([s.format for s in SIZES], dtype=object)
_W = np.asarray([s.w for s in SIZES], dtype=np.int16)
_H = np.asarray([s.h for s in SIZES], dtype=np.int16)


def to_timestamps(ts_us: np.ndarray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.to_datetime(np.asarray(ts_us, dtype=np.int64), unit="us", utc=True))


def requests_frame(world: World, batch: RequestBatch) -> pd.DataFrame:
    """The ``requests`` event-log rows of a batch (one imp per request, imp id "1")."""
    pubs = world.publishers
    return pd.DataFrame({
        "ts": to_timestamps(batch.ts), "request_id": batch.request_id,
        "imp_id": np.full(len(batch), "1", dtype=object), "user_id": batch.user_id,
        "device_id": batch.device_id, "ip": batch.ip, "ua": batch.ua,
        "device_type": batch.device_type, "os": batch.os, "country": _COUNTRY_CODES[batch.country],
        "region": batch.region, "publisher_id": pubs.publisher_id[batch.publisher],
        "domain": pubs.domain[batch.publisher], "is_app": batch.is_app,
        "slot_id": world.slots.slot_id[batch.slot], "format": _FORMATS[batch.size],
        "w": _W[batch.size], "h": _H[batch.size], "bidfloor": batch.floor,
        "tmax": np.full(len(batch), world.config.tmax, dtype=np.int32),
    })


__all__ = ["Clock", "RequestBatch", "TrafficModel", "generate", "request_ids", "requests_frame",
           "sample_rows", "to_timestamps"]

"""Batch simulation: days of traffic under the bootstrap policy, written to the event log.

:func:`simulate` is the entry point. It regenerates the world from the seed, writes
``world/campaigns.json`` and ``world/world.json``, and for each day generates the
requests, lets :class:`~simulator.policy.BootstrapPolicy` decide, settles the auctions
and writes every event table (and ``truth``) with
:func:`adplatform.eventlog.write_events`. Day ``d`` writes part number ``d`` of each
partition, so events that spill into the next day (late clicks, conversions) never
overwrite another day's file. Same seed, same files, byte for byte.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from adplatform.eventlog import TABLES, write_events
from adplatform.workspace import Workspace
from simulator.errors import SimulationError
from simulator.exchange import Settlement, event_tables, settle
from simulator.policy import POLICY, VARIANT, BootstrapPolicy, Decisions, Eligibility
from simulator.population import HUMAN
from simulator.traffic import (
    Clock,
    RequestBatch,
    TrafficModel,
    generate,
    request_ids,
    to_timestamps,
)
from simulator.world import CAMPAIGNS_FILE, WORLD_FILE, World, WorldConfig, build_world

logger = logging.getLogger(__name__)

#: 200k requests a day: a 14-day run gives well over 5,000 human clicks in its last
#: 3 days and finishes in well under two minutes on two cores.
DEFAULT_REQUESTS_PER_DAY = 200_000
TRAFFIC_STREAM = 1
POLICY_STREAM = 2


@dataclass
class SimulationSummary:
    days: int
    seed: int
    requests_per_day: int
    requests: int = 0
    bids: int = 0
    wins: int = 0
    impressions: int = 0
    clicks: int = 0
    conversions: int = 0
    spend: float = 0.0                  # USD
    bot_requests: int = 0
    human_impressions: int = 0
    human_clicks: int = 0               # distinct clicked human impressions
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)

    @property
    def ctr(self) -> float:
        """Click events per impression (bots included, repeated clicks counted)."""
        return self.clicks / self.impressions if self.impressions else 0.0

    @property
    def human_ctr(self) -> float:
        return self.human_clicks / self.human_impressions if self.human_impressions else 0.0

    @property
    def bot_share(self) -> float:
        return self.bot_requests / self.requests if self.requests else 0.0

    @property
    def win_rate(self) -> float:
        return self.wins / self.bids if self.bids else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(ctr=self.ctr, human_ctr=self.human_ctr, bot_share=self.bot_share,
                 win_rate=self.win_rate)
        return d


@dataclass(frozen=True)
class DayEvents:
    """One simulated day: the batch, the policy's decisions and the exchange's settlement."""

    day: int
    batch: RequestBatch
    decisions: Decisions
    settlement: Settlement


def decisions_frame(world: World, batch: RequestBatch, d: Decisions) -> pd.DataFrame:
    """The ``decisions`` rows the bootstrap policy logs."""
    cat = world.catalog
    camp_id = np.asarray([c.campaign_id for c in cat.campaigns], dtype=object)
    has = d.creative >= 0
    cr = np.where(has, d.creative, 0)
    n = len(batch)
    none = np.full(n, None, dtype=object)
    return pd.DataFrame({
        "ts": to_timestamps(batch.ts), "request_id": batch.request_id, "imp_id": "1",
        "bid": d.bid, "price": d.price,
        "campaign_id": np.where(has, camp_id[cat.campaign[cr]], none),
        "creative_id": np.where(has, cat.creative_id[cr], none),
        "reason": d.reason, "pctr": d.pctr, "value": d.value, "propensity": d.propensity,
        "policy": POLICY, "variant": VARIANT, "model_version": none, "feature_service": none,
        "latency_ms": np.full(n, np.nan),
    })


def _check(days: int, requests_per_day: int) -> None:
    if days < 1:
        raise SimulationError(f"days must be >= 1, got {days}")
    if requests_per_day < 1:
        raise SimulationError(f"requests_per_day must be >= 1, got {requests_per_day}")


def iter_days(world: World, days: int, requests_per_day: int,
              policy: BootstrapPolicy | None = None) -> Iterator[DayEvents]:
    """Simulate ``days`` days in memory, one at a time (no files written)."""
    _check(days, requests_per_day)
    policy = policy or BootstrapPolicy()
    model = TrafficModel.for_world(world)
    clock = Clock.for_world(world, requests_per_day)
    eligibility = Eligibility.for_world(world)
    for day in range(days):
        rng = np.random.default_rng(np.random.SeedSequence([world.seed, TRAFFIC_STREAM, day]))
        ts = clock.day_times(rng, day, requests_per_day)
        batch = generate(model, rng, ts, request_ids("b", day, 0, requests_per_day))
        prng = np.random.default_rng(np.random.SeedSequence([world.seed, POLICY_STREAM, day]))
        dec = policy.decide(world, eligibility, batch, prng)
        yield DayEvents(day, batch, dec, settle(world, batch, dec.price, dec.creative))


@dataclass(frozen=True)
class SimulatedRun:
    """A batch run as ``world.json`` records it: enough to regenerate every day exactly."""

    world: World
    days: int
    requests_per_day: int

    def iter_days(self) -> Iterator[DayEvents]:
        """The run's days again, in memory, identical to what :func:`simulate` wrote."""
        return iter_days(self.world, self.days, self.requests_per_day)


def read_run(workspace: Workspace) -> SimulatedRun:
    """The run :func:`simulate` wrote to ``workspace`` (its world rebuilt from the seed)."""
    path = workspace.world / WORLD_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        config = WorldConfig.from_json(doc["config"])
        seed, days, rpd = int(doc["seed"]), int(doc["days"]), int(doc["requests_per_day"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SimulationError(f"{path}: cannot read the simulated world ({exc}); "
                              "run `adplatform simulate` first") from exc
    return SimulatedRun(build_world(config, seed), days, rpd)


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _clear(workspace: Workspace) -> None:
    """Remove the tables this run rewrites, so no file of an earlier run lingers."""
    for table in TABLES:
        if table != "truth":
            shutil.rmtree(workspace.events / table, ignore_errors=True)
    shutil.rmtree(workspace.truth / "truth", ignore_errors=True)


def simulate(days: int, seed: int, workspace: Workspace, config: WorldConfig | None = None,
             requests_per_day: int = DEFAULT_REQUESTS_PER_DAY, *,
             progress: Callable[[int, int], None] | None = None) -> SimulationSummary:
    """Simulate ``days`` days of bootstrap-policy traffic into ``workspace``.

    Replaces the workspace's event tables, truth table and world files. ``progress`` is
    called with (days done, days) after each day.
    """
    started = time.perf_counter()
    _check(days, requests_per_day)
    world = build_world(config, seed)
    summary = SimulationSummary(days=days, seed=seed, requests_per_day=requests_per_day)
    files: list[Path] = []
    _clear(workspace)
    _write_json(workspace.world / CAMPAIGNS_FILE, world.campaigns_document())
    _write_json(workspace.world / WORLD_FILE,
                world.world_document(days=days, requests_per_day=requests_per_day))
    for ev in iter_days(world, days, requests_per_day):
        tables = event_tables(world, ev.settlement)
        tables["decisions"] = decisions_frame(world, ev.batch, ev.decisions)
        for name, frame in tables.items():
            root = workspace.truth if name == "truth" else workspace.events
            files += write_events(root, name, frame, part=ev.day)
        _accumulate(summary, ev, tables)
        logger.info("simulated day %d/%d: %d requests", ev.day + 1, days, len(ev.batch))
        if progress is not None:
            progress(ev.day + 1, days)
    summary.files = sorted(str(p.relative_to(workspace.root)) for p in files)
    summary.seconds = time.perf_counter() - started
    return summary


def _accumulate(s: SimulationSummary, ev: DayEvents, tables: dict[str, pd.DataFrame]) -> None:
    b, st = ev.batch, ev.settlement
    s.requests += len(b)
    s.bot_requests += int((b.kind != HUMAN).sum())
    s.bids += int(ev.decisions.bid.sum())
    s.wins += int(st.auction.won.sum())
    s.impressions += len(tables["impressions"])
    s.clicks += len(tables["clicks"])
    s.conversions += len(tables["conversions"])
    s.spend += float(st.auction.paid.sum() / 1000.0)
    human = b.kind[st.won_rows] == HUMAN
    s.human_impressions += int(human.sum())
    s.human_clicks += int((st.outcomes.clicked & human).sum())


__all__ = ["DEFAULT_REQUESTS_PER_DAY", "DayEvents", "SimulatedRun", "SimulationSummary",
           "decisions_frame", "iter_days", "read_run", "simulate"]

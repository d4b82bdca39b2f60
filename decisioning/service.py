"""Assembling the decision service from settings: engine, notices, stores, sinks.

The caller brings what belongs to other packages (the featurizer, the model
backends); this module picks the state stores by profile:

==================  ==============================  ===================================
part                embedded                        services
==================  ==============================  ===================================
campaigns           FileCampaignStore (world/…)     PostgresCampaignStore (watched)
budgets             InMemoryBudgetLedger            RedisBudgetLedger
frequency caps      InMemoryFrequencyCounter        RedisFrequencyCounter
notice dedupe       InMemoryNoticeDedupe            RedisNoticeDedupe
decision log        ParquetDecisionSink             NatsDecisionSink (spills to parquet)
notice log          ParquetNoticeSink               ParquetNoticeSink
==================  ==============================  ===================================

Several worker processes (``adplatform serve --workers N``, :mod:`decisioning.workers`)
must share budgets, caps and notice dedupe: a notice reaches whichever worker the
exchange's connection landed on, not the one that bid. The services profile shares
them in Redis; the embedded one, given ``shared_state`` (a SQLite file), keeps them
there (:mod:`decisioning.sqlite_state`) instead of in process memory. Each worker
writes its own log parts (``worker=(i, n)``) into the one log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from adplatform.config import Settings
from decisioning.budget import BudgetLedger, InMemoryBudgetLedger
from decisioning.campaigns import CampaignStore, FileCampaignStore
from decisioning.clock import Clock, SystemClock, wall_ms_of
from decisioning.decision_log import DecisionSink, ParquetDecisionSink
from decisioning.engine import DecisionEngine, EngineConfig
from decisioning.experiments import Experiment
from decisioning.frequency import FrequencyCounter, InMemoryFrequencyCounter
from decisioning.notices import (
    InMemoryNoticeDedupe,
    NoticeDedupe,
    NoticeService,
    ParquetNoticeSink,
)
from decisioning.pacing import Pacer
from decisioning.pricing import BidPricer
from features.featurizer import AuctionFeaturizer
from serving.base import ModelBackend


@dataclass
class DecisionService:
    engine: DecisionEngine
    notices: NoticeService

    def close(self) -> None:
        try:
            self.engine.close()
        finally:
            self.notices.close()


def build_service(settings: Settings, *, featurizer: AuctionFeaturizer, models: ModelBackend,
                  config: EngineConfig | None = None,
                  backends: Mapping[str, ModelBackend] | None = None,
                  fallback_models: ModelBackend | None = None,
                  experiment: Experiment | None = None, pricer: BidPricer | None = None,
                  pacer: Pacer | None = None, clock: Clock | None = None,
                  log_root: Path | None = None, notice_base_url: str | None = None,
                  campaigns_path: Path | None = None,
                  shadow: bool = False, shared_state: Path | None = None,
                  worker: tuple[int, int] = (0, 1)) -> DecisionService:
    """The engine and notice service for ``settings.profile`` (see the module table).

    ``log_root`` holds ``decisions/``, ``notices/`` and ``shadow/decisions`` (default:
    the workspace's decision log folder). ``notice_base_url`` (e.g.
    ``http://bidder.example:8080/notice``) turns notice URLs on, and with them
    spend-on-billing. ``campaigns_path``: the campaign file of the embedded profile
    (default ``world/campaigns.json``). ``shared_state``: the embedded profile's
    budgets, caps and notice dedupe in this SQLite file, shared by every process that
    opens it (default: in this process's memory). ``worker``: this process is worker
    ``i`` of ``n`` writing the one log (part numbers ``≡ i (mod n)``).
    The services profile keeps its keys under ``settings.redis_prefix``, its campaigns in
    ``settings.postgres_schema`` and its decision log on ``settings.nats_stream``
    (subject ``settings.nats_subject``).
    """
    ws = settings.workspace.ensure()
    root = Path(log_root) if log_root is not None else ws.decisions
    cfg = config or EngineConfig(seed=settings.seed)
    if notice_base_url is not None:
        cfg = replace(cfg, notice_base_url=notice_base_url)
    ledger: BudgetLedger
    frequency: FrequencyCounter
    dedupe: NoticeDedupe
    campaigns: CampaignStore
    sink: DecisionSink
    # The shared stores' reservation expiries run on the engine's clock, its wall clock
    # (they are compared across processes), so a ManualClock moves them too.
    wall_ms = wall_ms_of(clock or SystemClock())
    if settings.profile == "services":
        from decisioning.campaign_repo import PostgresCampaignRepository, PostgresCampaignStore
        from decisioning.frequency import RedisFrequencyCounter
        from decisioning.nats_sink import NatsDecisionSink
        from decisioning.notices import RedisNoticeDedupe
        from decisioning.redis_budget import RedisBudgetLedger, redis_client

        prefix, schema = settings.redis_prefix, settings.postgres_schema
        client = redis_client(settings.redis_url)
        ledger = RedisBudgetLedger(client, prefix=prefix, wall_ms=wall_ms)
        frequency = RedisFrequencyCounter(client, prefix=prefix)
        dedupe = RedisNoticeDedupe(client, prefix=prefix)
        pg = PostgresCampaignStore(
            PostgresCampaignRepository(settings.postgres_dsn, schema=schema),
            ledger=ledger, pacer=pacer)
        pg.watch()
        campaigns = pg
        sink = NatsDecisionSink(settings.nats_url, stream=settings.nats_stream,
                                subject=settings.nats_subject,
                                spill=ParquetDecisionSink(root, worker=worker))
    else:
        if shared_state is not None:
            from decisioning.sqlite_state import REQUEST_BUSY_TIMEOUT_MS, open_state

            # the campaign store closes the ledger, and the ledger the other two
            ledger, frequency, dedupe = open_state(shared_state, wall_ms=wall_ms,
                                                   busy_timeout_ms=REQUEST_BUSY_TIMEOUT_MS)
        else:
            ledger = InMemoryBudgetLedger(clock=clock)
            frequency = InMemoryFrequencyCounter()
            dedupe = InMemoryNoticeDedupe()
        fcs = FileCampaignStore(campaigns_path or ws.world / "campaigns.json",
                                ledger=ledger, pacer=pacer)
        fcs.watch()
        campaigns = fcs
        sink = ParquetDecisionSink(root, worker=worker)
    engine = DecisionEngine(
        featurizer=featurizer, models=models, campaigns=campaigns, sink=sink, clock=clock,
        config=cfg, pricer=pricer, backends=backends, fallback_models=fallback_models,
        experiment=experiment, frequency=frequency,
        shadow_sink=ParquetDecisionSink(root / "shadow", worker=worker) if shadow else None)
    notices = NoticeService(ledger=ledger, dedupe=dedupe,
                            sink=ParquetNoticeSink(root, worker=worker),
                            frequency=frequency, clock=clock, currency=cfg.currency,
                            fx_rates=cfg.fx_rates)
    return DecisionService(engine, notices)


__all__ = ["DecisionService", "build_service"]

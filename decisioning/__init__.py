"""The decision service: OpenRTB models, the per-auction engine, campaigns, the decision
log and the HTTP app.

Wiring (the engine takes every dependency; the app is a thin shell)::

    engine = DecisionEngine(featurizer=..., models=..., sink=ParquetDecisionSink(root),
                            campaigns=FileCampaignStore(ws.world / "campaigns.json"),
                            config=EngineConfig(margin_ms=10))
    app = create_app(engine, api_keys=settings.api_keys)

Errors::

    AdPlatformError
    └── DecisionError          anything the decision service raises on purpose
        ├── InvalidRequest     a bid request that cannot be decided on (HTTP 400);
        │                      .problems = [(path like "imp[0].banner.w", message)]
        └── CampaignError      the campaign file is missing or invalid (names file, field)
"""

from decisioning.app import create_app
from decisioning.budget import BudgetLedger, InMemoryBudgetLedger
from decisioning.campaigns import (
    DEFAULT_CONVERSION_RATE,
    Blocklist,
    Campaign,
    CampaignFile,
    CampaignStore,
    Candidate,
    Creative,
    FileCampaignStore,
    IndexedCampaignStore,
    Targeting,
    load_campaigns,
)
from decisioning.clock import Clock, ManualClock, SystemClock
from decisioning.decision_log import (
    DECISION_COLUMNS,
    DecisionRecord,
    DecisionSink,
    MemorySink,
    ParquetDecisionSink,
)
from decisioning.engine import NO_BID_REASONS, DecisionEngine, EngineConfig
from decisioning.errors import CampaignError, DecisionError, InvalidRequest
from decisioning.openrtb import BidRequest, Imp, parse_request
from decisioning.openrtb_response import Bid, BidResponse, SeatBid
from decisioning.pricing import BidPricer, ShadeFactorPricer
from decisioning.privacy import is_personalised
from decisioning.request_context import device_key, to_context

__all__ = [
    "DECISION_COLUMNS", "DEFAULT_CONVERSION_RATE", "NO_BID_REASONS", "Bid", "BidPricer",
    "BidRequest", "BidResponse", "Blocklist", "BudgetLedger", "Campaign", "CampaignError",
    "CampaignFile", "CampaignStore", "Candidate", "Clock", "Creative", "DecisionEngine",
    "DecisionError", "DecisionRecord", "DecisionSink", "EngineConfig", "FileCampaignStore",
    "Imp", "InMemoryBudgetLedger", "IndexedCampaignStore", "InvalidRequest", "ManualClock",
    "MemorySink", "ParquetDecisionSink", "SeatBid", "ShadeFactorPricer", "SystemClock",
    "Targeting", "create_app", "device_key", "is_personalised", "load_campaigns",
    "parse_request", "to_context",
]

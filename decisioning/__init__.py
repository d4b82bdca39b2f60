"""The decision service: OpenRTB models, the per-auction engine, campaigns, budgets and
pacing, privacy, experiments, notices, the decision log and the HTTP app.

Wiring (the engine takes every dependency; the app is a thin shell)::

    svc = build_service(settings, featurizer=OnlineReader(...), models=backend,
                        notice_base_url="http://bidder:8080/notice")
    app = create_app(svc.engine, notices=svc.notices, api_keys=settings.api_keys)
    serve(app, host=..., port=...)          # decisioning.server: stamps arrival times

Errors::

    AdPlatformError
    └── DecisionError              anything the decision service raises on purpose
        ├── InvalidRequest         a bid request that cannot be decided on (HTTP 400);
        │                          .problems = [(path like "imp[0].banner.w", message)]
        ├── CampaignError          campaign file/table missing or invalid (names field)
        ├── InvalidNotice          a notice parameter missing or malformed (HTTP 400)
        ├── NoticeStoreUnavailable dedupe store / ledger down for a notice (HTTP 503)
        ├── BudgetUnavailable      the shared ledger cannot be reached (no-bid)
        ├── FrequencyUnavailable   the frequency counters cannot be reached
        ├── InvalidAmount          a money amount that is not a decimal >= 0
        └── TCFError               a consent string that is not TCF v2

Modules import their heavy dependencies (redis, psycopg, nats) inside functions, so
importing this package does no work and needs none of those servers.
"""

from decisioning.app import create_app
from decisioning.budget import (
    BudgetLedger,
    BudgetUnavailable,
    InMemoryBudgetLedger,
    InvalidAmount,
    cpm_to_micros,
    to_micros,
)
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
from decisioning.experiments import Experiment, Variant
from decisioning.frequency import (
    FrequencyCounter,
    FrequencyUnavailable,
    InMemoryFrequencyCounter,
)
from decisioning.notices import (
    InMemoryNoticeDedupe,
    InvalidNotice,
    MemoryNoticeSink,
    NoticeService,
    NoticeStoreUnavailable,
    ParquetNoticeSink,
)
from decisioning.openrtb import BidRequest, Imp, parse_request
from decisioning.openrtb_response import Bid, BidResponse, SeatBid
from decisioning.pacing import Pacer
from decisioning.pricing import BidPricer, ShadeFactorPricer
from decisioning.privacy import is_personalised, privacy_decision, pseudonymise
from decisioning.request_context import device_key, to_context
from decisioning.tcf import TCFError, decode_tc_string

__all__ = [
    "DECISION_COLUMNS", "DEFAULT_CONVERSION_RATE", "NO_BID_REASONS", "Bid", "BidPricer",
    "BidRequest", "BidResponse", "Blocklist", "BudgetLedger", "BudgetUnavailable",
    "Campaign", "CampaignError", "CampaignFile", "CampaignStore", "Candidate", "Clock",
    "Creative", "DecisionEngine", "DecisionError", "DecisionRecord", "DecisionSink",
    "EngineConfig", "Experiment", "FileCampaignStore", "FrequencyCounter",
    "FrequencyUnavailable", "Imp", "InMemoryBudgetLedger", "InMemoryFrequencyCounter",
    "InMemoryNoticeDedupe", "IndexedCampaignStore", "InvalidAmount", "InvalidNotice",
    "InvalidRequest", "ManualClock", "MemoryNoticeSink", "MemorySink", "NoticeService",
    "NoticeStoreUnavailable", "Pacer", "ParquetDecisionSink", "ParquetNoticeSink",
    "SeatBid", "ShadeFactorPricer", "SystemClock", "TCFError", "Targeting", "Variant",
    "cpm_to_micros", "create_app", "decode_tc_string", "device_key", "is_personalised",
    "load_campaigns", "parse_request", "privacy_decision", "pseudonymise", "to_context",
    "to_micros",
]

"""The simulated advertising world: users, publishers, bots, campaigns, an exchange.

Batch mode writes days of bootstrap-policy traffic to the event log
(:func:`simulate`); :class:`LiveExchange` sends OpenRTB requests to a running bidder
and settles its responses with the same generator, auction and outcome code.
Nothing here runs at import time.
"""

from simulator.batch import (
    DEFAULT_REQUESTS_PER_DAY,
    DayEvents,
    SimulatedRun,
    SimulationSummary,
    decisions_frame,
    iter_days,
    read_run,
    simulate,
)
from simulator.campaigns import TOPIC_IAB, TOPICS, Campaign, Creative, Targeting
from simulator.datacenters import CRAWLER_CIDRS, DATACENTER_CIDRS, in_ranges, is_datacenter_ip
from simulator.errors import InvalidBid, SimulationError
from simulator.exchange import AuctionResult, first_price_auction
from simulator.live import LiveExchange, notice_calls
from simulator.openrtb import bid_request, parse_bid
from simulator.policy import BootstrapPolicy
from simulator.population import KIND_NAMES
from simulator.world import CAMPAIGNS_FILE, WORLD_FILE, World, WorldConfig, build_world

__all__ = [
    "CAMPAIGNS_FILE", "CRAWLER_CIDRS", "DATACENTER_CIDRS", "DEFAULT_REQUESTS_PER_DAY",
    "KIND_NAMES", "TOPICS", "TOPIC_IAB", "WORLD_FILE", "AuctionResult", "BootstrapPolicy",
    "Campaign", "Creative", "DayEvents", "InvalidBid", "LiveExchange", "SimulationError",
    "SimulatedRun", "SimulationSummary", "Targeting", "World", "WorldConfig", "bid_request",
    "build_world", "decisions_frame", "first_price_auction", "in_ranges", "is_datacenter_ip",
    "iter_days", "notice_calls", "parse_bid", "read_run", "simulate",
]

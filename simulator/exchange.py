"""The exchange: first-price auctions, settlement of a batch of bids, and the event tables.

Rules (OpenRTB ``at: 1``, first price): a bid wins when ``bid >= max(competing, floor)``
and pays its own price. On a configurable share of losses the exchange reports
``min_bid_to_win = max(competing, floor) + 0.01``; otherwise, and on every win, it is
null. Batch simulation (:mod:`simulator.batch`) and the live exchange
(:mod:`simulator.live`) both settle through :func:`settle` and log through
:func:`event_tables`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from simulator.outcomes import Outcomes, realise
from simulator.population import KIND_NAMES
from simulator.traffic import RequestBatch, requests_frame, to_timestamps
from simulator.world import World

MIN_BID_INCREMENT = 0.01   # CPM added to the clearing price in min_bid_to_win


@dataclass(frozen=True)
class AuctionResult:
    won: np.ndarray              # bool
    paid: np.ndarray             # CPM; bid when won, else 0
    min_bid_to_win: np.ndarray   # CPM on reported losses; NaN otherwise


def first_price_auction(bid: np.ndarray, competing: np.ndarray, floor: np.ndarray,
                        u_report: np.ndarray, report_share: float) -> AuctionResult:
    """Vectorised first-price auction of our ``bid`` (CPM; NaN = no bid)."""
    bid = np.asarray(bid, dtype=np.float64)
    clearing = np.maximum(competing, floor)
    has_bid = ~np.isnan(bid)
    won = has_bid & (np.nan_to_num(bid, nan=-1.0) >= clearing)
    report = has_bid & ~won & (u_report < report_share)
    return AuctionResult(won=won, paid=np.where(won, bid, 0.0),
                         min_bid_to_win=np.where(report, clearing + MIN_BID_INCREMENT, np.nan))


@dataclass(frozen=True)
class Settlement:
    """Bids on a batch of requests, their auctions, and what the impressions led to."""

    batch: RequestBatch
    price: np.ndarray            # CPM; NaN = no bid
    creative: np.ndarray         # int64; -1 = no bid
    auction: AuctionResult
    won_rows: np.ndarray         # rows of batch that became impressions
    outcomes: Outcomes           # indexed by position in won_rows


def settle(world: World, batch: RequestBatch, price: np.ndarray, creative: np.ndarray
           ) -> Settlement:
    """Run the auctions for ``price``/``creative`` and realise the impressions' outcomes."""
    auction = first_price_auction(price, batch.competing, batch.floor, batch.u_report,
                                  world.config.report_min_bid_share)
    won_rows = np.flatnonzero(auction.won)
    outcomes = realise(world, batch.take(won_rows), creative[won_rows])
    return Settlement(batch, price, creative, auction, won_rows, outcomes)


def event_tables(world: World, s: Settlement) -> dict[str, pd.DataFrame]:
    """The exchange-side event-log tables (and truth) of a settlement.

    ``decisions`` are not among them: the bidding policy logs those.
    """
    b, cat, pubs = s.batch, world.catalog, world.publishers
    bids = np.flatnonzero(~np.isnan(s.price))
    w, o = s.won_rows, s.outcomes
    cr = s.creative[w]
    camp_id = np.asarray([c.campaign_id for c in cat.campaigns], dtype=object)
    one = "1"
    true_ctr = np.full(len(b), np.nan)
    true_ctr[w] = o.true_ctr
    tables = {
        "requests": requests_frame(world, b),
        "auctions": pd.DataFrame({
            "ts": to_timestamps(b.ts[bids]), "request_id": b.request_id[bids], "imp_id": one,
            "bid_price": s.price[bids], "won": s.auction.won[bids],
            "paid_price": s.auction.paid[bids], "min_bid_to_win": s.auction.min_bid_to_win[bids],
        }),
        "impressions": pd.DataFrame({
            "ts": to_timestamps(o.impression_ts), "request_id": b.request_id[w], "imp_id": one,
            "user_id": b.user_id[w], "campaign_id": camp_id[cat.campaign[cr]],
            "creative_id": cat.creative_id[cr], "publisher_id": pubs.publisher_id[b.publisher[w]],
            "cost": s.price[w] / 1000.0,
        }),
        "clicks": pd.DataFrame({
            "ts": to_timestamps(o.click_ts), "request_id": b.request_id[w][o.click_row], "imp_id": one,
            "user_id": b.user_id[w][o.click_row],
            "campaign_id": camp_id[cat.campaign[cr[o.click_row]]],
            "creative_id": cat.creative_id[cr[o.click_row]],
        }),
        "conversions": pd.DataFrame({
            "ts": to_timestamps(o.conv_ts), "request_id": b.request_id[w][o.conv_row], "imp_id": one,
            "campaign_id": camp_id[cat.campaign[cr[o.conv_row]]], "value": o.conv_value,
        }),
        "truth": pd.DataFrame({
            "ts": to_timestamps(b.ts), "request_id": b.request_id, "imp_id": one,
            "is_bot": b.kind != 0, "bot_kind": np.asarray(KIND_NAMES, dtype=object)[b.kind],
            "user_group": b.group.astype(np.int16), "true_ctr": true_ctr,
            "competing_bid": b.competing,
        }),
    }
    return tables


__all__ = ["MIN_BID_INCREMENT", "AuctionResult", "Settlement", "event_tables",
           "first_price_auction", "settle"]

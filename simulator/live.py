"""The live exchange: OpenRTB requests out, a bidder's responses in, events buffered.

The demo drives a running HTTP bidder with it::

    ex = LiveExchange.from_workspace(workspace)       # same world, clock after the batch days
    for request in ex.requests(1000):
        response = post_to_bidder(request)            # dict, or None for no-bid / timeout
        outcome = ex.resolve(request, response)
    ex.flush(workspace)                               # requests, auctions, impressions, ...

Generation (:func:`simulator.traffic.generate`), auctions and outcomes
(:func:`simulator.exchange.settle`) and event rows (:func:`simulator.exchange.event_tables`)
are the batch simulator's code; only the arrival times differ (a Poisson process that
continues the simulated clock). Decisions are logged by the bidder, not here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from adplatform.eventlog import write_events
from adplatform.workspace import Workspace
from simulator.batch import DEFAULT_REQUESTS_PER_DAY, read_run
from simulator.errors import InvalidBid, SimulationError
from simulator.exchange import event_tables, settle
from simulator.openrtb import bid_request, parse_bid
from simulator.outcomes import true_ctr
from simulator.traffic import Clock, RequestBatch, TrafficModel, generate, request_ids
from simulator.world import World

logger = logging.getLogger(__name__)

LIVE_STREAM = 3
_PART = re.compile(r"part-(\d+)\.parquet$")


@dataclass
class _Pending:
    batch: int
    row: int
    resolved: bool = False


class LiveExchange:
    """A stateful exchange session over one world (not thread-safe: one driver at a time)."""

    def __init__(self, world: World, *, start_day: int = 0,
                 requests_per_day: int = DEFAULT_REQUESTS_PER_DAY, session: int = 0) -> None:
        if requests_per_day < 1:
            raise SimulationError(f"requests_per_day must be >= 1, got {requests_per_day}")
        self.world = world
        self.session = session
        self._model = TrafficModel.for_world(world)
        self._clock = Clock.for_world(world, requests_per_day)
        self._rng = np.random.default_rng(np.random.SeedSequence([world.seed, LIVE_STREAM,
                                                                  session]))
        self._now = self._clock.day_start_us(start_day)
        self._start_day = start_day
        self._issued = 0
        self._batches: list[RequestBatch | None] = []
        self._open: list[int] = []              # unresolved rows per batch
        self._pending: dict[str, _Pending] = {}
        self._resolved: list[tuple[int, int, float, int]] = []   # batch, row, price, creative
        self._index = world.catalog.index()
        self.rejected = 0

    @classmethod
    def from_workspace(cls, workspace: Workspace, *, requests_per_day: int | None = None,
                       session: int = 0) -> LiveExchange:
        """The world a batch run wrote to ``workspace``, its clock after the batch days."""
        run = read_run(workspace)
        return cls(run.world, start_day=run.days,
                   requests_per_day=requests_per_day or run.requests_per_day, session=session)

    @property
    def now(self) -> int:
        """The simulated clock (µs since the epoch, UTC): the last request's time."""
        return self._now

    def requests(self, n: int) -> Iterator[dict[str, Any]]:
        """The next ``n`` bid requests (OpenRTB 2.6 dicts), in simulated time order."""
        if n < 0:
            raise SimulationError(f"n must be >= 0, got {n}")
        if n == 0:
            return iter(())
        ts = self._clock.arrivals(self._rng, self._now, n)
        ids = request_ids(f"live{self.session}-", self._start_day, self._issued, n)
        batch = generate(self._model, self._rng, ts, ids)
        self._now = int(ts[-1])
        self._issued += n
        k = len(self._batches)
        self._batches.append(batch)
        self._open.append(n)
        for i in range(n):
            self._pending[str(ids[i])] = _Pending(k, i)
        # Generated now (the clock moves on at once); the dicts are built as they are read.
        return (bid_request(self.world, batch, i) for i in range(n))

    def _lookup(self, request: Mapping[str, Any]) -> tuple[_Pending, RequestBatch]:
        rid = str(request.get("id", ""))
        pending = self._pending.get(rid)
        if pending is None:
            raise SimulationError(f"request {rid!r} was not issued by this exchange session "
                                  "(or was resolved and flushed already)")
        if pending.resolved:
            raise SimulationError(f"request {rid!r} was already resolved")
        batch = self._batches[pending.batch]
        if batch is None:          # cannot happen: a batch is dropped once fully resolved
            raise SimulationError(f"request {rid!r}: its batch was already flushed")
        return pending, batch

    def resolve(self, request: Mapping[str, Any], response: Mapping[str, Any] | None
                ) -> dict[str, Any]:
        """Run the first-price auction for the bidder's ``response`` and draw the outcome.

        ``response`` is the parsed OpenRTB bid response (``None`` or ``{}`` for a no-bid
        or a timeout). A bid a real exchange would reject (see
        :func:`simulator.openrtb.parse_bid`) counts as no bid and is reported in
        ``rejected``. Returns what happened to the request.
        """
        pending, batch = self._lookup(request)
        rejection: str | None = None
        try:
            parsed = parse_bid(self.world, self._index, request, response)
        except InvalidBid as exc:
            logger.warning("request %s: bid rejected: %s", request.get("id"), exc)
            self.rejected += 1
            parsed, rejection = None, str(exc)
        row = np.array([pending.row])
        one = batch.take(row)
        price = np.array([parsed.price if parsed else np.nan])
        creative = np.array([parsed.creative if parsed else -1], dtype=np.int64)
        s = settle(self.world, one, price, creative)
        pending.resolved = True
        self._resolved.append((pending.batch, pending.row, float(price[0]), int(creative[0])))
        won = bool(s.auction.won[0])
        cat = self.world.catalog
        mbtw = float(s.auction.min_bid_to_win[0])
        return {
            "request_id": str(request["id"]),
            "bid": parsed is not None,
            "rejected": rejection,
            "price": parsed.price if parsed else None,
            "creative_id": parsed.creative_id if parsed else None,
            "campaign_id": cat.campaigns[int(cat.campaign[parsed.creative])].campaign_id
            if parsed else None,
            "won": won,
            "paid_price": float(s.auction.paid[0]),
            "cost": float(s.auction.paid[0]) / 1000.0,
            "min_bid_to_win": None if np.isnan(mbtw) else mbtw,
            "impression": won,
            "clicks": len(s.outcomes.click_row),
            "conversions": len(s.outcomes.conv_row),
            "conversion_value": float(s.outcomes.conv_value.sum()),
        }

    def true_ctr(self, request: Mapping[str, Any], creative_id: str) -> float:
        """Ground-truth click probability of ``creative_id`` on an issued request (oracle)."""
        rid = str(request.get("id", ""))
        pending = self._pending.get(rid)
        batch = self._batches[pending.batch] if pending is not None else None
        if pending is None or batch is None:
            raise SimulationError(f"request {rid!r} is not pending in this session")
        if creative_id not in self._index:
            raise SimulationError(f"unknown creative {creative_id!r}")
        one = batch.take(np.array([pending.row]))
        return float(true_ctr(self.world, one, np.array([self._index[creative_id]]))[0])

    @property
    def buffered(self) -> int:
        """Resolved requests waiting for :meth:`flush`."""
        return len(self._resolved)

    def flush(self, workspace: Workspace) -> dict[str, int]:
        """Write the resolved requests' events (and truth); returns rows per table."""
        if not self._resolved:
            return {}
        groups: dict[int, list[tuple[int, float, int]]] = {}
        for b, row, price, cr in self._resolved:
            groups.setdefault(b, []).append((row, price, cr))
        parts: list[RequestBatch] = []
        prices: list[np.ndarray] = []
        creatives: list[np.ndarray] = []
        for b in sorted(groups):
            entries = groups[b]
            batch = self._batches[b]
            if batch is None:
                raise SimulationError("internal: a flushed batch still has resolved rows")
            parts.append(batch.take(np.array([e[0] for e in entries], dtype=np.int64)))
            prices.append(np.array([e[1] for e in entries]))
            creatives.append(np.array([e[2] for e in entries], dtype=np.int64))
        combined = RequestBatch.concat(parts)
        s = settle(self.world, combined, np.concatenate(prices), np.concatenate(creatives))
        tables = event_tables(self.world, s)
        part = _next_part(workspace)
        counts: dict[str, int] = {}
        for name, frame in tables.items():
            root = workspace.truth if name == "truth" else workspace.events
            write_events(root, name, frame, part=part)
            counts[name] = len(frame)
        # Forget what was written; drop batches with nothing left to resolve.
        for b, entries in groups.items():
            for row, _, _ in entries:
                batch = self._batches[b]
                if batch is not None:
                    del self._pending[str(batch.request_id[row])]
            self._open[b] -= len(entries)
            if self._open[b] == 0:
                self._batches[b] = None
        self._resolved.clear()
        return counts


def _next_part(workspace: Workspace) -> int:
    """One more than the highest part number in any event or truth partition."""
    top = -1
    for root in (workspace.events, workspace.truth):
        for f in root.glob("*/date=*/part-*.parquet"):
            m = _PART.search(f.name)
            if m:
                top = max(top, int(m.group(1)))
    return top + 1


# OpenRTB 2.x loss reason codes an exchange reports in ${AUCTION_LOSS}.
LOSS_INVALID_BID = 3
LOSS_BELOW_FLOOR = 100
LOSS_OUTBID = 102


def notice_calls(request: Mapping[str, Any], response: Mapping[str, Any] | None,
                 outcome: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The notices an exchange sends for a resolved auction (``outcome`` from
    :meth:`LiveExchange.resolve`), as ``(kind, url)`` with the OpenRTB auction macros
    substituted: for a won bid its ``nurl`` then ``burl`` (``${AUCTION_PRICE}``: the
    clearing price, CPM), for a lost one its ``lurl`` (``${AUCTION_LOSS}``: 3 rejected,
    100 below the floor, 102 outbid; ``${AUCTION_MIN_TO_WIN}`` where the exchange reports
    it, else empty). URLs the bid does not carry are not called."""
    bids = [b for sb in (response or {}).get("seatbid") or [] for b in sb.get("bid") or []]
    if not bids:
        return []
    bid = bids[0]
    imp: Mapping[str, Any] = next(
        (i for i in request.get("imp", []) if i.get("id") == bid.get("impid")), {})
    cur = str((response or {}).get("cur") or "USD")
    if outcome.get("won"):
        price = f"{float(outcome['paid_price']):.6f}"
        loss, calls = "0", [("win", bid.get("nurl")), ("billing", bid.get("burl"))]
    else:
        price = ""
        floor = float(imp.get("bidfloor") or 0.0)
        code = (LOSS_INVALID_BID if outcome.get("rejected")
                else LOSS_BELOW_FLOOR if float(bid.get("price", 0.0)) < floor else LOSS_OUTBID)
        loss, calls = str(code), [("loss", bid.get("lurl"))]
    mtw = outcome.get("min_bid_to_win")
    values = {"${AUCTION_ID}": str(request.get("id", "")), "${AUCTION_IMP_ID}": str(
        bid.get("impid", "")), "${AUCTION_PRICE}": price, "${AUCTION_CURRENCY}": cur,
        "${AUCTION_LOSS}": loss, "${AUCTION_MIN_TO_WIN}": "" if mtw is None else f"{mtw:.6f}",
        "${AUCTION_BID_ID}": str(bid.get("id", "")), "${AUCTION_SEAT_ID}": "",
        "${AUCTION_AD_ID}": str(bid.get("adid", ""))}
    out = []
    for kind, url in calls:
        if url:
            for macro, value in values.items():
                url = url.replace(macro, value)
            out.append((kind, url))
    return out


__all__ = ["LIVE_STREAM", "LOSS_BELOW_FLOOR", "LOSS_INVALID_BID", "LOSS_OUTBID", "LiveExchange",
           "notice_calls"]

"""OpenRTB 2.6 bid requests from generated traffic, and reading a bidder's response.

Requests are plain JSON-able dicts with one imp. Besides the standard fields, each
carries ``ext.sim_ts`` — the simulated time of the auction (ISO 8601, UTC) — so a
bidder driven by the simulator can use the simulated clock instead of the wall clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from simulator.campaigns import TOPIC_IAB, TOPICS
from simulator.errors import InvalidBid
from simulator.geo import COUNTRIES
from simulator.inventory import SIZES
from simulator.traffic import RequestBatch
from simulator.world import World

OPENRTB_VERSION = "2.6"
VIDEO_MIMES = ["video/mp4", "video/webm"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def bid_request(world: World, batch: RequestBatch, i: int) -> dict[str, Any]:
    """The OpenRTB 2.6 bid request of row ``i`` of ``batch``."""
    pubs, slots = world.publishers, world.slots
    p, s = int(batch.publisher[i]), int(batch.slot[i])
    size = SIZES[int(batch.size[i])]
    imp: dict[str, Any] = {"id": "1", "tagid": str(slots.slot_id[s]),
                           "bidfloor": float(batch.floor[i]), "bidfloorcur": "USD", "secure": 1}
    if size.format == "video":
        imp["video"] = {"w": size.w, "h": size.h, "mimes": list(VIDEO_MIMES), "minduration": 5,
                        "maxduration": 30, "protocols": [2, 3, 5, 6], "linearity": 1,
                        "plcmt": 1, "startdelay": 0}
    else:
        imp["banner"] = {"w": size.w, "h": size.h, "format": [{"w": size.w, "h": size.h}]}
    topic = int(pubs.topic[p])
    publisher = {"id": str(pubs.publisher_id[p])}
    geo: dict[str, Any] = {"country": COUNTRIES[int(batch.country[i])].code}
    if batch.region[i]:
        geo["region"] = str(batch.region[i])
    device: dict[str, Any] = {"ua": str(batch.ua[i]), "ip": str(batch.ip[i]),
                              "devicetype": int(batch.device_type[i]), "geo": geo}
    if batch.os[i]:
        device["os"] = str(batch.os[i])
    req: dict[str, Any] = {"id": str(batch.request_id[i]), "imp": [imp]}
    if batch.is_app[i]:
        req["app"] = {"id": str(pubs.site_id[p]), "name": str(pubs.name[p]),
                      "bundle": str(pubs.domain[p]), "cat": [TOPIC_IAB[topic]],
                      "publisher": publisher}
        if batch.ifa[i]:
            device["ifa"] = str(batch.ifa[i])
        else:
            device["lmt"] = 1
    else:
        domain = str(pubs.domain[p])
        req["site"] = {"id": str(pubs.site_id[p]), "domain": domain,
                       "page": f"https://{domain}/{TOPICS[topic]}/",
                       "cat": [TOPIC_IAB[topic]], "publisher": publisher}
    req["device"] = device
    if batch.user_id[i]:
        req["user"] = {"id": str(batch.user_id[i])}
    req.update({"tmax": world.config.tmax, "at": 1, "cur": ["USD"],
                "ext": {"sim_ts": (_EPOCH + timedelta(microseconds=int(batch.ts[i]))).isoformat()}})
    return req


@dataclass(frozen=True)
class ParsedBid:
    price: float                 # CPM
    creative: int                # creative index in world.catalog
    creative_id: str


def parse_bid(world: World, index: Mapping[str, int], request: Mapping[str, Any],
              response: Mapping[str, Any] | None) -> ParsedBid | None:
    """Our bid in ``response`` (``seatbid[0].bid[0]``), or None for a no-bid.

    Raises :class:`InvalidBid` for a bid a real exchange would discard: wrong response
    or imp id, a price that is not a finite non-negative number, an unknown creative, a
    ``cid`` that is not the creative's campaign, or a creative of the wrong size.
    """
    if not response:
        return None
    seatbid = response.get("seatbid") or []
    if not seatbid or not seatbid[0].get("bid"):
        return None
    if str(response.get("id", "")) != str(request["id"]):
        raise InvalidBid(f"response id {response.get('id')!r} is not request id {request['id']!r}")
    bid = seatbid[0]["bid"][0]
    if str(bid.get("impid", "")) != str(request["imp"][0]["id"]):
        raise InvalidBid(f"bid impid {bid.get('impid')!r} names no imp of the request")
    try:
        price = float(bid["price"])
    except (KeyError, TypeError, ValueError):
        raise InvalidBid(f"bid price {bid.get('price')!r} is not a number") from None
    if not math.isfinite(price) or price < 0:
        raise InvalidBid(f"bid price {price!r} is not a finite non-negative CPM")
    crid = str(bid.get("crid") or bid.get("adid") or "")
    if crid not in index:
        raise InvalidBid(f"unknown creative {crid!r} (crid/adid)")
    cr = index[crid]
    cat = world.catalog
    campaign_id = cat.campaigns[int(cat.campaign[cr])].campaign_id
    if bid.get("cid") is not None and str(bid["cid"]) != campaign_id:
        raise InvalidBid(f"cid {bid['cid']!r} is not creative {crid}'s campaign {campaign_id}")
    size = SIZES[int(cat.size[cr])]
    placement = request["imp"][0].get(size.format)
    if not placement or (placement.get("w"), placement.get("h")) != (size.w, size.h):
        raise InvalidBid(f"creative {crid} ({size.label}) does not fit the imp")
    return ParsedBid(price, cr, crid)


__all__ = ["OPENRTB_VERSION", "ParsedBid", "bid_request", "parse_bid"]

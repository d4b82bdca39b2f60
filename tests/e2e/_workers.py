"""What both multi-worker end-to-end tests send: auctions over new connections, the
win and billing notices of some bids twice each, and ``/metrics`` scrapes."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from adplatform.workspace import Workspace
from simulator import LiveExchange, notice_calls

BILLED_MICROS = 2500          # the exchange bills CPM 2.5: 2,500 micro-dollars per impression


def scraped_requests(url: str) -> int:
    text = httpx.get(f"{url}/metrics", timeout=10).text      # a new connection each time
    line = next(m for m in text.splitlines() if m.startswith("adplatform_bid_requests_total "))
    return int(float(line.split()[1]))


@dataclass
class Traffic:
    answered: list[str] = field(default_factory=list)            # request ids
    bids: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    notified: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    billed: Counter[str] = field(default_factory=Counter)        # campaign -> micros
    billed_users: Counter[tuple[str, str]] = field(default_factory=Counter)  # (user, cid)


def send_auctions_and_notices(url: str, workspace: Workspace, *, session: int,
                              auctions: int = 200, notify: int = 30) -> Traffic:
    """``auctions`` requests, each on a new connection (the kernel spreads them over the
    workers), all answered 200 or 204; then the win and billing notices of the first
    ``notify`` bids, each sent twice on fresh connections: ``recorded`` then
    ``duplicate``, whichever worker gets them. Then waits until every ``/metrics``
    scrape (ten, over fresh connections) counts all the requests."""
    out = Traffic()
    for req in LiveExchange.from_workspace(workspace, session=session).requests(auctions):
        r = httpx.post(f"{url}/openrtb/2.6/bid", content=json.dumps(req),
                       headers={"content-type": "application/json"}, timeout=10)
        assert r.status_code in (200, 204), r.text
        out.answered.append(req["id"])
        if r.status_code == 200:
            out.bids.append((req, r.json()))
    assert len(out.bids) >= 10, "too few bids to check notices"
    out.notified = out.bids[:notify]
    for req, resp in out.notified:
        calls = notice_calls(req, resp, {"won": True, "paid_price": BILLED_MICROS / 1000})
        assert [k for k, _ in calls] == ["win", "billing"]
        cid = resp["seatbid"][0]["bid"][0]["cid"]                 # the campaign that bid
        for kind, notice in calls:
            first = httpx.get(notice, timeout=10).json()["status"]
            again = httpx.get(notice, timeout=10).json()["status"]
            assert (first, again) == ("recorded", "duplicate"), (kind, notice)
            if kind == "billing":
                user = parse_qs(urlsplit(notice).query).get("u", [""])[0]
                if user:                           # personalised: one capped impression
                    out.billed_users[(user, cid)] += 1
        out.billed[cid] += BILLED_MICROS
    # every scrape, whichever worker answers it, counts both workers' requests (the
    # other worker's values are at most its 1 s publishing interval behind)
    deadline = time.monotonic() + 60
    while scraped_requests(url) != len(out.answered):
        assert time.monotonic() < deadline, "the workers' metrics never added up"
        time.sleep(0.5)
    assert {scraped_requests(url) for _ in range(10)} == {len(out.answered)}
    return out

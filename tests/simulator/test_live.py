"""The live exchange: OpenRTB requests out, fake bidder responses in, events written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from adplatform.eventlog import read_events
from adplatform.workspace import Workspace
from simulator import LiveExchange, SimulationError, SimulationSummary
from tests.simulator.conftest import SMALL_DAYS


@pytest.fixture
def live_ws(small_run: tuple[Workspace, SimulationSummary], tmp_path: Path) -> Workspace:
    """A private copy of the small batch workspace (live flushes write into it)."""
    src, _ = small_run
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(src.root, ws.root)
    return ws


def _creative_for(ws: Workspace, request: dict[str, Any]) -> tuple[str, str]:
    doc = json.loads((ws.world / "campaigns.json").read_text())
    imp = request["imp"][0]
    fmt = "video" if "video" in imp else "banner"
    w, h = imp[fmt]["w"], imp[fmt]["h"]
    for c in doc["campaigns"]:
        if c["status"] != "active" or any(c["targeting"].values()):
            continue
        for cr in c["creatives"]:
            if (cr["format"], cr["w"], cr["h"]) == (fmt, w, h):
                return c["campaign_id"], cr["creative_id"]
    raise AssertionError(f"no generic creative for {fmt} {w}x{h}")


def _response(request: dict[str, Any], cid: str, crid: str, price: float) -> dict[str, Any]:
    return {"id": request["id"], "cur": "USD", "seatbid": [{"seat": "adplatform", "bid": [
        {"id": "b1", "impid": request["imp"][0]["id"], "price": price, "crid": crid,
         "adid": crid, "cid": cid, "adm": "<a></a>"}]}]}


def test_requests_are_openrtb_26(live_ws: Workspace) -> None:
    ex = LiveExchange.from_workspace(live_ws)
    reqs = list(ex.requests(300))
    assert len({r["id"] for r in reqs}) == 300
    json.dumps(reqs)
    for r in reqs:
        assert r["at"] == 1 and r["cur"] == ["USD"] and r["tmax"] == 100
        assert len(r["imp"]) == 1
        imp = r["imp"][0]
        assert imp["id"] and imp["tagid"] and imp["bidfloorcur"] == "USD" and imp["bidfloor"] >= 0
        assert ("banner" in imp) != ("video" in imp)
        if "video" in imp:
            assert imp["video"]["mimes"] and (imp["video"]["w"], imp["video"]["h"]) == (640, 480)
        else:
            assert imp["banner"]["format"] == [{"w": imp["banner"]["w"], "h": imp["banner"]["h"]}]
        assert ("site" in r) != ("app" in r)
        place = r.get("site") or r["app"]
        assert place["publisher"]["id"].startswith("pub")
        assert place.get("domain") or place.get("bundle")
        dev = r["device"]
        assert dev["ua"] and dev["ip"] and dev["devicetype"] in (2, 4, 5)
        assert len(dev["geo"]["country"]) == 3
        if "site" in r:
            assert "ifa" not in dev
    # The simulated clock continues after the batch days.
    first = reqs[0]["ext"]["sim_ts"]
    assert first >= f"2026-01-0{1 + SMALL_DAYS}"
    assert [r["ext"]["sim_ts"] for r in reqs] == sorted(r["ext"]["sim_ts"] for r in reqs)
    assert any("app" in r for r in reqs) and any("video" in r["imp"][0] for r in reqs)


def test_round_trip_win_loss_and_flush(live_ws: Workspace) -> None:
    ex = LiveExchange.from_workspace(live_ws)
    reqs = list(ex.requests(60))
    outcomes = []
    for k, r in enumerate(reqs):
        cid, crid = _creative_for(live_ws, r)
        if k % 3 == 0:
            outcomes.append(ex.resolve(r, None))                           # no-bid
        elif k % 3 == 1:
            outcomes.append(ex.resolve(r, _response(r, cid, crid, 500.0)))  # sure win
        else:
            outcomes.append(ex.resolve(r, _response(r, cid, crid, 0.0)))    # loses
    nobid, win, lose = outcomes[0::3], outcomes[1::3], outcomes[2::3]
    assert all(not o["bid"] and not o["won"] for o in nobid)
    assert all(o["won"] and o["impression"] and o["paid_price"] == 500.0 for o in win)
    assert all(o["cost"] == 0.5 and o["min_bid_to_win"] is None for o in win)
    assert all(o["bid"] and not o["won"] and o["paid_price"] == 0 for o in lose)
    assert ex.buffered == 60

    counts = ex.flush(live_ws)
    assert ex.buffered == 0
    assert counts["requests"] == 60 and counts["truth"] == 60
    assert counts["auctions"] == 40 and counts["impressions"] == 20
    assert counts["clicks"] == sum(o["clicks"] for o in outcomes)
    assert counts["conversions"] == sum(o["conversions"] for o in outcomes)
    live_ids = {r["id"] for r in reqs}
    req = read_events(live_ws.events, "requests")
    assert live_ids <= set(req["request_id"])
    imp = read_events(live_ws.events, "impressions")
    assert set(imp.loc[imp["request_id"].isin(live_ids), "request_id"]) == \
        {o["request_id"] for o in win}
    truth = read_events(live_ws.truth, "truth")
    assert truth.loc[truth["request_id"].isin(live_ids), "true_ctr"].notna().sum() == 20
    # Earlier batch files were kept, live rows went to new part files.
    parts = {p.name for p in (live_ws.events / "requests").rglob("*.parquet")}
    assert "part-00000.parquet" in parts and len(parts) > SMALL_DAYS


def test_bad_bids_are_rejected_not_raised(live_ws: Workspace) -> None:
    ex = LiveExchange.from_workspace(live_ws)
    r = next(ex.requests(1))
    cid, crid = _creative_for(live_ws, r)
    bad = _response(r, cid, "nope", 100.0)
    out = ex.resolve(r, bad)
    assert out["rejected"] and not out["bid"] and ex.rejected == 1
    with pytest.raises(SimulationError, match="already resolved"):
        ex.resolve(r, _response(r, cid, crid, 100.0))
    with pytest.raises(SimulationError, match="not issued"):
        ex.resolve({"id": "elsewhere"}, None)
    wrong_size = "cr01d"          # generic campaign c01's fourth creative is 320x50
    variants = [
        lambda q, c, k: _response(q, "c99", k, 1.0),                       # cid of another
        lambda q, c, k: _response(q, c, k, -1.0),                          # negative price
        lambda q, c, k: {**_response(q, c, k, 1.0), "id": "other"},        # wrong response id
        lambda q, c, k: _response({**q, "imp": [{**q["imp"][0], "id": "9"}]}, c, k, 1.0),
    ]
    for make in variants:
        q = next(ex.requests(1))
        c, k = _creative_for(live_ws, q)
        assert ex.resolve(q, make(q, c, k))["rejected"]
    q = next(r for r in ex.requests(50) if "banner" in r["imp"][0]
             and r["imp"][0]["banner"]["w"] != 320)
    assert "does not fit" in ex.resolve(q, _response(q, "c01", wrong_size, 9.0))["rejected"]
    assert ex.rejected == 1 + len(variants) + 1


def test_live_is_deterministic_and_matches_truth(live_ws: Workspace) -> None:
    a = list(LiveExchange.from_workspace(live_ws).requests(50))
    b = list(LiveExchange.from_workspace(live_ws).requests(50))
    assert a == b
    c = list(LiveExchange.from_workspace(live_ws, session=1).requests(50))
    assert {r["id"] for r in a}.isdisjoint(r["id"] for r in c)
    ex = LiveExchange.from_workspace(live_ws)
    r = next(ex.requests(1))
    _, crid = _creative_for(live_ws, r)
    assert 0.0 < ex.true_ctr(r, crid) < 1.0


def test_from_workspace_without_world_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SimulationError, match="simulate"):
        LiveExchange.from_workspace(Workspace(tmp_path))


def test_requests_parse_with_the_decision_service(live_ws: Workspace) -> None:
    """The decision service's parser accepts the requests and derives the same device_id."""
    openrtb = pytest.importorskip("decisioning.openrtb")
    context = pytest.importorskip("decisioning.request_context")
    ex = LiveExchange.from_workspace(live_ws)
    reqs = list(ex.requests(200))
    for r in reqs:
        ex.resolve(r, None)
    ex.flush(live_ws)
    logged = read_events(live_ws.events, "requests").set_index("request_id")
    for r in reqs:
        parsed = openrtb.parse_request(json.dumps(r).encode())
        facts = context.request_facts(parsed)
        row = logged.loc[r["id"]]
        assert facts.device_id == row["device_id"]
        assert (facts.user_id, facts.domain, facts.is_app) == \
            (row["user_id"], row["domain"], bool(row["is_app"]))
        assert (facts.country, facts.region, facts.os) == (row["country"], row["region"], row["os"])


def test_the_exchange_sends_notices_with_its_macros_filled(live_ws: Workspace) -> None:
    from simulator import notice_calls

    ex = LiveExchange.from_workspace(live_ws)
    r_win, r_lose, r_none = list(ex.requests(3))
    base = "http://bidder/notice"
    q = "?id=${AUCTION_ID}&imp=${AUCTION_IMP_ID}"

    def with_urls(resp: dict[str, Any]) -> dict[str, Any]:
        bid = resp["seatbid"][0]["bid"][0]
        bid.update(nurl=f"{base}/win{q}&price=${{AUCTION_PRICE}}&cur=${{AUCTION_CURRENCY}}",
                   burl=f"{base}/bill{q}&price=${{AUCTION_PRICE}}",
                   lurl=f"{base}/loss{q}&loss=${{AUCTION_LOSS}}&mtw=${{AUCTION_MIN_TO_WIN}}")
        return resp

    cid, crid = _creative_for(live_ws, r_win)
    win = with_urls(_response(r_win, cid, crid, 500.0))
    out = ex.resolve(r_win, win)
    imp = r_win["imp"][0]["id"]
    assert notice_calls(r_win, win, out) == [
        ("win", f"{base}/win?id={r_win['id']}&imp={imp}&price=500.000000&cur=USD"),
        ("billing", f"{base}/bill?id={r_win['id']}&imp={imp}&price=500.000000")]

    cid, crid = _creative_for(live_ws, r_lose)
    lose = with_urls(_response(r_lose, cid, crid, 0.0))
    out = ex.resolve(r_lose, lose)
    [(kind, url)] = notice_calls(r_lose, lose, out)
    floor = float(r_lose["imp"][0].get("bidfloor") or 0.0)
    code = 3 if out["rejected"] else 100 if floor > 0 else 102
    mtw = "" if out["min_bid_to_win"] is None else f"{out['min_bid_to_win']:.6f}"
    assert kind == "loss" and url.endswith(f"&loss={code}&mtw={mtw}") and "${" not in url

    assert notice_calls(r_none, None, ex.resolve(r_none, None)) == []
    bare = _response(r_lose, cid, crid, 0.0)                  # a bid without notice URLs
    assert notice_calls(r_lose, bare, {"won": False}) == []

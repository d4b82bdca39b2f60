"""OpenRTB request parsing: real examples, 2.5/2.6 locations, readable errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from decisioning import BidResponse, InvalidRequest, parse_request
from decisioning.openrtb import error_path

from .conftest import load

MINIMAL = {"id": "r1", "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}]}


def _is_request(data: object) -> bool:
    return isinstance(data, dict) and "imp" in data


@pytest.mark.realdata
def test_every_example_parses_or_gives_a_clean_error(spec_examples: Path) -> None:
    files = sorted(spec_examples.rglob("*.json"))
    assert len(files) > 50
    parsed = 0
    for path in files:
        body = path.read_bytes()
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if _is_request(data):
            req = parse_request(body)           # every real request must parse
            assert req.id and req.imp
            parsed += 1
        else:
            with pytest.raises(InvalidRequest) as info:
                parse_request(body)
            assert info.value.problems, path
    assert parsed >= 18


@pytest.mark.realdata
def test_example_responses_validate_as_bid_responses(spec_examples: Path) -> None:
    paths = sorted(spec_examples.glob("iab_openrtb2.6/response_*.json")) + sorted(
        (spec_examples / "mxmCherry_openrtb_testdata/openrtb2/testdata/bid-response").rglob(
            "*.json"))
    assert len(paths) == 12
    for path in paths:
        resp = BidResponse.model_validate_json(path.read_bytes())
        assert resp.bids(), path


@pytest.mark.realdata
def test_spec_fields_are_read(iab26: Path, spec_examples: Path) -> None:
    app = parse_request((iab26 / "request_3_mobile_app.json").read_bytes())
    assert app.app is not None and app.app.bundle == "12345"
    assert app.device is not None and app.device.ifa and app.device.devicetype == 1
    assert app.bcat and "IAB25" in app.bcat and app.badv == ["apple.com", "go-text.me",
                                                            "heywire.com"]
    pmp = parse_request((iab26 / "request_5_pmp_direct_deal.json").read_bytes())
    deals = pmp.imp[0].pmp
    assert deals is not None and deals.private_auction == 1
    assert [d.bidfloor for d in deals.deals] == [2.5, 2.0]
    video = parse_request((iab26 / "request_4_video.json").read_bytes())
    v = video.imp[0].video
    assert v is not None and (v.w, v.h) == (640, 480) and video.tmax == 120
    assert v.companionad is not None and v.companionad[1].w == 728
    dooh = parse_request((spec_examples / "iab_openrtb2.6_implementation_guide"
                          / "13_request_7_9_6_1_DOOH_Banner_Bid_Request.json").read_bytes())
    assert dooh.dooh is not None and dooh.dooh.domain == "global.com"
    banner = dooh.imp[0].banner
    assert banner is not None and banner.sizes() == [(1080, 1920), (720, 1366)]
    assert dooh.imp[0].bidfloorcur == "GBP"
    native = parse_request((spec_examples / "mxmCherry_openrtb_testdata/openrtb2/testdata"
                            "/bid-request/2.5/native-ad.json").read_bytes())
    assert native.imp[0].native is not None and native.imp[0].native.request.startswith("{")


def test_25_ext_locations_are_copied_to_26_places() -> None:
    body = {**MINIMAL,
            "regs": {"ext": {"gdpr": 1, "us_privacy": "1YNN"}},
            "user": {"id": "u", "ext": {"consent": "CO-tcf", "eids": [
                {"source": "id5-sync.com", "uids": [{"id": "x", "atype": 1}]}]}},
            "source": {"ext": {"schain": {"complete": 1, "ver": "1.0", "nodes": [
                {"asi": "exchange.example", "sid": "42", "hp": 1}]}}}}
    req = parse_request(json.dumps(body))
    assert req.regs is not None and req.regs.gdpr == 1 and req.regs.us_privacy == "1YNN"
    assert req.user is not None and req.user.consent == "CO-tcf"
    assert req.user.eids is not None and req.user.eids[0].source == "id5-sync.com"
    assert req.source is not None and req.source.schain is not None
    assert req.source.schain.nodes[0].asi == "exchange.example"


def test_26_places_win_over_25_ext() -> None:
    body = {**MINIMAL, "regs": {"gdpr": 0, "gpp": "DBABMA~", "gpp_sid": [2], "coppa": 1,
                                "ext": {"gdpr": 1}},
            "user": {"consent": "new", "ext": {"consent": "old"}}}
    req = parse_request(json.dumps(body))
    assert req.regs is not None and req.regs.gdpr == 0 and req.regs.gpp_sid == [2]
    assert req.regs.coppa == 1
    assert req.user is not None and req.user.consent == "new"


def test_unknown_fields_are_ignored_and_numbers_coerced() -> None:
    body = {"id": 123, "imp": [{"id": 1, "banner": {"w": "300", "h": 250.0, "shiny": True}}],
            "brand_new_26_field": {"x": 1}, "device": {"sua": {"browsers": [
                {"brand": "Chromium", "version": ["120", "0"]}], "mobile": 0, "source": 2}}}
    req = parse_request(json.dumps(body))
    assert req.id == "123" and req.imp[0].id == "1"
    banner = req.imp[0].banner
    assert banner is not None and (banner.w, banner.h) == (300, 250)


@pytest.mark.parametrize(("body", "path", "words"), [
    (b"{not json", "", "malformed JSON"),
    (b"", "", "malformed JSON"),
    (b"[1, 2]", "", "JSON object"),
    (b'{"imp": [{"id": "1"}]}', "id", "required"),
    (b'{"id": "", "imp": [{"id": "1"}]}', "id", "at least 1 character"),
    (b'{"id": "r"}', "imp", "required"),
    (b'{"id": "r", "imp": []}', "imp", "must not be empty"),
    (b'{"id": "r", "imp": {"id": "1"}}', "imp", "valid list"),
    (b'{"id": "r", "imp": [{"banner": {}}]}', "imp[0].id", "required"),
    (b'{"id": "r", "imp": [{"id": "1", "banner": {"w": "wide"}}]}', "imp[0].banner.w",
     "valid integer"),
    (b'{"id": "r", "imp": [{"id": "1", "bidfloor": -1}]}', "imp[0].bidfloor", "greater"),
    (b'{"id": "r", "imp": [{"id": "1", "bidfloor": 1e999}]}', "", "infinity"),
    (b'{"id": "r", "imp": [{"id": "1"}], "device": {"geo": {"lat": "north"}}}',
     "device.geo.lat", "valid number"),
    (b'{"id": "r", "imp": [{"id": "1"}, {"id": "1"}]}', "imp[1].id", "duplicate"),
])
def test_bad_requests_name_the_problem(body: bytes, path: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_request(body)
    paths = [p for p, _ in info.value.problems]
    assert path in paths, info.value.problems
    assert words in str(info.value), str(info.value)
    if path:
        assert f"{path}:" in str(info.value)


def test_error_path() -> None:
    assert error_path(("imp", 0, "banner", "format", 2, "w")) == "imp[0].banner.format[2].w"
    assert error_path(()) == ""


def test_many_errors_are_summarised() -> None:
    body = {"id": "r", "imp": [{"id": "1", "banner": {"w": "a", "h": "b", "pos": "c",
                                                      "btype": "d", "api": "e", "vcm": "f"}}]}
    with pytest.raises(InvalidRequest) as info:
        parse_request(json.dumps(body))
    assert "more)" in str(info.value)
    assert len(info.value.problems) == 5


@pytest.mark.realdata
def test_parse_accepts_str_and_bytes(iab26: Path) -> None:
    text = (iab26 / "request_1_simple_banner.json").read_text()
    assert parse_request(text) == parse_request(text.encode())
    assert load(iab26 / "request_1_simple_banner.json")["id"] == parse_request(text).id


def test_construct_equals_model_construct() -> None:
    """The engine's response builder is pydantic's model_construct, minus its cost."""
    from decisioning.openrtb_response import Bid, SeatBid, construct

    kw = {"id": "b1", "impid": "1", "price": 1.25, "adid": "cr1", "crid": "cr1",
          "adomain": ["a.example"], "w": 300, "h": 250, "mtype": 1}
    ours = construct(BidResponse, id="r1", cur="USD",
                     seatbid=[construct(SeatBid, bid=[construct(Bid, **kw)], seat="s")])
    theirs = BidResponse.model_construct(
        id="r1", cur="USD",
        seatbid=[SeatBid.model_construct(bid=[Bid.model_construct(**kw)], seat="s")])
    assert ours == theirs
    assert ours.to_json() == theirs.to_json()
    assert ours.model_fields_set == theirs.model_fields_set == {"id", "cur", "seatbid"}
    assert BidResponse.model_validate_json(ours.to_json()) == ours
    # default factories run per instance: no list shared between two responses
    a, b = construct(BidResponse, id="a"), construct(BidResponse, id="b")
    assert a.seatbid == [] and a.seatbid is not b.seatbid

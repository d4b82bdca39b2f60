"""RequestContext from OpenRTB, the device key and privacy flags."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from decisioning import device_key, is_personalised, parse_request, to_context
from decisioning.request_context import domain_keys, normalise_domain
from decisioning.tcf import encode_tc_string

NOW = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)


def _req(**extra: Any) -> Any:
    body = {"id": "r1", "imp": [{"id": "7", "tagid": "slot-a", "bidfloor": 0.4,
                                 "banner": {"format": [{"w": 320, "h": 50},
                                                       {"w": 300, "h": 250}]}}],
            "tmax": 80, **extra}
    return parse_request(json.dumps(body))


@pytest.mark.realdata
def test_context_of_the_mobile_app_example(iab26: Path) -> None:
    req = parse_request((iab26 / "request_3_mobile_app.json").read_bytes())
    ctx = to_context(req, req.imp[0], NOW)
    assert (ctx.request_id, ctx.imp_id, ctx.ts) == ("IxexyLDIIk", "1", NOW)
    assert ctx.device_id == "AA000DFE74168477C70D291f574D344790E0BB11"
    assert ctx.user_id == "ffffffd5135596709273b3a1a07e466ea2bf4fff"
    assert ctx.domain == "12345" and ctx.is_app
    assert ctx.publisher_id == "agltb3B1Yi1pbmNyDAsSA0FwcBiJkfTUCV"
    assert (ctx.format, ctx.w, ctx.h, ctx.bidfloor) == ("banner", 728, 90, 0.5)
    assert (ctx.device_type, ctx.os, ctx.slot_id) == (1, "iOS", "agltb3B1Yi1pbmNyDQsSBFNpdGUY7fD0FAw")
    assert ctx.personalised


@pytest.mark.realdata
def test_context_of_site_and_video_examples(iab26: Path) -> None:
    req = parse_request((iab26 / "request_4_video.json").read_bytes())
    ctx = to_context(req, req.imp[0], NOW)
    assert (ctx.format, ctx.w, ctx.h, ctx.tmax) == ("video", 640, 480, 120)
    assert ctx.domain == "siteabcd.com" and not ctx.is_app and ctx.publisher_id == "pub12345"
    # No ifa and no ip: the device key hashes the user agent alone.
    assert ctx.device_id == device_key(None, None, ctx.ua) and len(ctx.device_id) == 16


def test_banner_format_list_and_geo() -> None:
    req = _req(device={"ip": "1.2.3.4", "ua": "UA", "geo": {"country": "GBR", "region": "ENG"},
                       "devicetype": 2})
    ctx = to_context(req, req.imp[0], NOW)
    assert (ctx.w, ctx.h, ctx.slot_id, ctx.tmax) == (320, 50, "slot-a", 80)
    assert (ctx.country, ctx.region, ctx.ip, ctx.device_type) == ("GBR", "ENG", "1.2.3.4", 2)
    assert ctx.device_id == device_key("", "1.2.3.4", "UA")


def test_domain_falls_back_to_page_host_and_user_geo() -> None:
    req = _req(site={"page": "https://news.example.org/a?b=1"}, user={"geo": {"country": "FRA"}})
    ctx = to_context(req, req.imp[0], NOW)
    assert ctx.domain == "news.example.org" and ctx.country == "FRA"


def test_device_key() -> None:
    assert device_key("ifa-1", "1.1.1.1", "ua") == "ifa-1"
    zeroed = "00000000-0000-0000-0000-000000000000"
    assert device_key(zeroed, "1.1.1.1", "ua") == device_key(None, "1.1.1.1", "ua")
    assert device_key(None, "1.1.1.1", "ua") != device_key(None, "1.1.1.2", "ua")
    assert device_key(None, None, None) == ""


@pytest.mark.parametrize(("regs", "user", "personalised"), [
    (None, None, True),
    ({"coppa": 1}, {"consent": "CPX"}, False),
    ({"gdpr": 1}, None, False),
    ({"gdpr": 1}, {"consent": ""}, False),
    # A real TCF v2 string whose PurposesConsent field is empty: no personalisation.
    ({"gdpr": 1}, {"consent": "CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA"}, False),
    ({"gdpr": 1}, {"consent": encode_tc_string(purposes={1, 2, 3, 4})}, True),
    ({"ext": {"gdpr": 1}}, {"ext": {"consent": encode_tc_string(purposes={1, 3, 4})}},
     True),                                                           # 2.5 places
    ({"ext": {"gdpr": 1}}, {"ext": {"consent": "CPX"}}, False),       # not a TCF string
    ({"ext": {"gdpr": 1}}, {"id": "u"}, False),
    ({"gdpr": 0}, None, True),
])
def test_personalisation(regs: Any, user: Any, personalised: bool) -> None:
    extra: dict[str, Any] = {}
    if regs is not None:
        extra["regs"] = regs
    if user is not None:
        extra["user"] = user
    req = _req(**extra)
    assert is_personalised(req) is personalised
    assert to_context(req, req.imp[0], NOW).personalised is personalised


def test_imp_without_media_has_no_format() -> None:
    req = parse_request(b'{"id": "r", "imp": [{"id": "1"}]}')
    ctx = to_context(req, req.imp[0], NOW)
    assert (ctx.format, ctx.w, ctx.h) == ("", 0, 0)


def test_domains_normalise() -> None:
    assert normalise_domain("HTTP://www.Foo.com:8080/x") == "foo.com"
    assert domain_keys("a.b.foo.com") == {"a.b.foo.com", "b.foo.com", "foo.com"}
    assert domain_keys("") == frozenset()

"""Code tests for the request-time IVT signals."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path

import pytest

from features.ivt import (
    _WARM_AGENTS,
    CrawlerMatcher,
    _ipv4,
    crawler_patterns,
    is_crawler,
    is_datacenter,
    ivt_values,
)

ADDRESSES = ["1.2.3.4", "0.0.0.0", "255.255.255.255", "256.1.1.1", "01.2.3.4", "1.2.3",
             "1.2.3.4.5", "1.2.3.04", " 1.2.3.4", "1.2.3.4 ", "", "::1", "1.2.3.a",
             "1..2.3", "1.2.3.4\x00", "\u0661.2.3.4", "0x1.2.3.4", "1.2.3.-1", "+1.2.3.4",
             "1.2.3.4/32", "192.168.001.1", "52.1.2.3", "2001:db8::1"]


def _reference(ip: str) -> int:
    try:
        return int(ipaddress.IPv4Address(ip))
    except ValueError:
        return -1


@pytest.mark.parametrize("ip", ADDRESSES)
def test_ipv4_parses_as_ipaddress_does(ip: str) -> None:
    assert _ipv4(ip) == _reference(ip)


def test_datacenter_and_values() -> None:
    assert is_datacenter(["52.1.2.3", "73.1.2.3", "not an ip"]).tolist() == [True, False,
                                                                              False]
    assert ivt_values("52.1.2.3", "Googlebot/2.1") == (1.0, 1.0, 13.0)
    assert ivt_values("", "") == (0.0, 0.0, 0.0)


BROWSERS = [
    *_WARM_AGENTS,                # Chrome on Windows, Safari on iPhone, Chrome on Android
    "Mozilla/5.0 (X11; Linux x86_64; rv:135.0) Gecko/20100101 Firefox/135.0",
    "", "\u0661\u0662 robot \u00e9t\u00e9", "Dalvik/2.1.0 (Linux; U; Android 14)",
]


def _agree(patterns: tuple[str, ...], uas: list[str]) -> list[str]:
    reference = re.compile("|".join(f"(?:{p})" for p in patterns))
    matcher = CrawlerMatcher(patterns)
    return [ua for ua in uas if matcher.search(ua) != (reference.search(ua) is not None)]


def test_crawler_matcher_agrees_with_re_on_the_builtin_list() -> None:
    patterns = crawler_patterns(None)
    uas = [*BROWSERS, "Googlebot/2.1", "curl/8.5", "Mozilla/5.0 (compatible; bingbot/2.0)",
           "abot/1", "Abot/1", "my crawler", "python-requests/2.32"]
    assert _agree(patterns, uas) == []
    assert [CrawlerMatcher(patterns).search(u) for u in uas[-7:]] == [
        True, True, True, True, False, True, True]


def test_crawler_matcher_keeps_patterns_re2_rejects() -> None:
    # A lookahead and a backreference: RE2 has neither, so they stay on Python's re.
    patterns = ("Googlebot", r"foo(?=bar)", r"(ab)\1")
    matcher = CrawlerMatcher(patterns)
    assert (matcher.re2_patterns, matcher.re_patterns) == (1, 2)
    assert [matcher.search(u) for u in ("x Googlebot", "foobar", "foobaz", "abab", "ab")] == [
        True, True, False, True, False]


@pytest.mark.realdata
def test_crawler_matcher_agrees_with_re_on_the_shared_list(shared_data: Path) -> None:
    path = shared_data / "crawler_user_agents" / "crawler-user-agents.json"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    entries = json.loads(path.read_text())
    patterns = crawler_patterns(shared_data)
    examples = [str(i) for e in entries for i in e.get("instances", [])]
    assert len(patterns) > 1000 and len(examples) > 1000
    assert CrawlerMatcher(patterns).re_patterns == 0      # all of it runs on RE2
    assert _agree(patterns, [*examples, *BROWSERS]) == []
    assert all(is_crawler(examples[:200], shared_data))

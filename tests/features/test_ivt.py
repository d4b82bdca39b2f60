"""Code tests for the request-time IVT signals."""

from __future__ import annotations

import ipaddress

import pytest

from features.ivt import _ipv4, is_datacenter, ivt_values

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

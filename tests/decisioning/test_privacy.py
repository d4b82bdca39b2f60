"""TCF v2 decoding and the privacy rules; nothing personal reaches logs or features."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest

from decisioning import (
    MemorySink,
    TCFError,
    decode_tc_string,
    parse_request,
    privacy_decision,
    pseudonymise,
)
from decisioning.privacy import us_privacy_opt_out
from decisioning.tcf import encode_tc_string

from .conftest import EngineFactory, ZeroFeaturizer


def test_decodes_a_real_tc_string() -> None:
    # The example string of the existing tests: a real CMP output, no purposes given.
    tc = decode_tc_string("CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA")
    assert (tc.version, tc.cmp_id, tc.vendor_list_version, tc.policy_version) == (2, 31, 126, 2)
    assert tc.created == datetime(2022, 4, 20, 22, 0, tzinfo=UTC)   # midnight CEST
    assert tc.publisher_cc == "DE"
    assert tc.consent_language == "EN" and tc.purposes_consent == frozenset()
    assert tc.vendor_consents == frozenset()


def test_round_trip_purposes_and_vendors() -> None:
    s = encode_tc_string(purposes={1, 3, 4, 10}, vendors={7, 755}, cmp_id=300,
                         language="FR", publisher_cc="IT")
    tc = decode_tc_string(s)
    assert tc.purposes_consent == {1, 3, 4, 10} and tc.has_purposes((1, 3, 4))
    assert tc.vendor_consent(755) and not tc.vendor_consent(8) and tc.max_vendor_id == 755
    assert (tc.cmp_id, tc.consent_language, tc.publisher_cc) == (300, "FR", "IT")
    assert decode_tc_string(s + ".YAAAAAAAAAAA").purposes_consent == tc.purposes_consent


@pytest.mark.parametrize(("value", "words"), [
    ("", "empty"), ("!!!!", "base64url"), ("CPX", "too short"),
    ("BOEFEAyOEFEAyAHABDENAI4AAAB9vABAASA", "version 1"),
])
def test_bad_strings(value: str, words: str) -> None:
    with pytest.raises(TCFError, match=words):
        decode_tc_string(value)


def _decide_privacy(regs: dict[str, Any] | None, consent: str | None = None,
                    vendor_id: int | None = None) -> tuple[bool, str]:
    body: dict[str, Any] = {"id": "r", "imp": [{"id": "1"}], "user": {"id": "u1"}}
    if regs is not None:
        body["regs"] = regs
    if consent is not None:
        body["user"]["ext"] = {"consent": consent}           # the 2.5 place
    d = privacy_decision(parse_request(json.dumps(body)), vendor_id=vendor_id)
    return d.personalised, d.reason


OK = encode_tc_string(purposes={1, 3, 4}, vendors={42})


@pytest.mark.parametrize(("regs", "consent", "vendor", "expected"), [
    (None, None, None, (True, "ok")),
    ({"coppa": 1, "gdpr": 0}, OK, None, (False, "coppa")),
    ({"gdpr": 1}, OK, None, (True, "ok")),
    ({"ext": {"gdpr": 1}}, OK, 42, (True, "ok")),                       # 2.5 flag
    ({"gdpr": 1}, OK, 43, (False, "gdpr_vendor")),
    ({"gdpr": 1}, encode_tc_string(purposes={1, 3}), None, (False, "gdpr_purposes")),
    ({"gdpr": 1}, None, None, (False, "gdpr_no_consent")),
    ({"gdpr": 1}, "not-a-tc-string", None, (False, "gdpr_bad_consent")),
    ({"gdpr": 0}, None, None, (True, "ok")),
    ({"gpp": "DBABMA~x", "gpp_sid": [2]}, None, None, (False, "gdpr_no_consent")),
    ({"gpp": "DBABMA~x", "gpp_sid": [2]}, OK, None, (True, "ok")),
    ({"gpp": "DBABzw~x", "gpp_sid": [7]}, None, None, (True, "ok")),  # noted, not decoded
    ({"us_privacy": "1YY-"}, None, None, (False, "us_privacy_opt_out")),
    ({"ext": {"us_privacy": "1YYN"}}, None, None, (False, "us_privacy_opt_out")),
    ({"us_privacy": "1YN-"}, None, None, (True, "ok")),
    ({"us_privacy": "1---"}, None, None, (True, "ok")),
    ({"us_privacy": "garbage"}, None, None, (True, "ok")),
    ({"gdpr": 1, "us_privacy": "1YY-"}, OK, None, (False, "us_privacy_opt_out")),
])
def test_privacy_rules(regs: Any, consent: Any, vendor: Any, expected: Any) -> None:
    assert _decide_privacy(regs, consent, vendor) == expected


def test_us_privacy_parser() -> None:
    assert us_privacy_opt_out("1YY-") and us_privacy_opt_out("1nyN")
    assert not us_privacy_opt_out("1YN-") and not us_privacy_opt_out(None)
    assert not us_privacy_opt_out("2YY-") and not us_privacy_opt_out("1YY")


def test_pseudonymise() -> None:
    a = pseudonymise("user-1", "salt")
    assert len(a) == 16 and a != pseudonymise("user-1", "other") and "user-1" not in a
    assert a == pseudonymise("user-1", "salt") and pseudonymise("", "salt") == ""


def test_unpersonalised_requests_send_no_user_to_features_and_are_counted(
        make_engine: EngineFactory, sink: MemorySink,
        caplog: pytest.LogCaptureFixture) -> None:
    featurizer = ZeroFeaturizer()
    engine = make_engine(featurizer=featurizer)
    body = {"id": "p", "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}],
            "user": {"id": "alice", "data": [{"segment": [{"id": "s1"}]}]},
            "device": {"ip": "203.0.113.7", "ua": "UA"},
            "regs": {"gdpr": 1}}
    with caplog.at_level(logging.DEBUG):
        engine.decide(parse_request(json.dumps(body)), engine.clock.monotonic())
    ctx = featurizer.calls[-1][0]
    assert not ctx.personalised              # the reader drops the user key when False
    assert engine.stats()["privacy.gdpr_no_consent"] == 1
    text = json.dumps([r.__dict__ if hasattr(r, "__dict__") else
                       {f: getattr(r, f) for f in r.__slots__} for r in sink.records],
                      default=str)
    assert "alice" not in text and "203.0.113.7" not in text
    assert "alice" not in caplog.text and "203.0.113.7" not in caplog.text

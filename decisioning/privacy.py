"""Privacy signals: may this request be personalised?

Rules, first match wins (:func:`privacy_decision`):

* COPPA (``regs.coppa == 1``): never personalised (``"coppa"``).
* GDPR applies when ``regs.gdpr == 1`` (2.6 place, or 2.5 ``regs.ext.gdpr``, copied by
  the parser), or when ``regs.gdpr`` is absent and ``regs.gpp_sid`` lists section 2
  (EU TCF v2). Then the TCF v2 consent string (``user.consent`` or 2.5
  ``user.ext.consent``) is decoded (:mod:`decisioning.tcf`): personalised only when
  purposes 1 (store/access a device), 3 (create a personalised ads profile) and 4
  (select personalised ads) are all consented, and, when a vendor id is configured, our
  vendor has consent. Reasons: ``"gdpr_no_consent"`` (no string), ``"gdpr_bad_consent"``
  (not a TCF v2 string), ``"gdpr_purposes"``, ``"gdpr_vendor"``.
* CCPA US Privacy string (``regs.us_privacy``, 2.5 ``regs.ext.us_privacy``): its third
  character ``Y`` ("1YY-") is an opt-out of sale: not personalised
  (``"us_privacy_opt_out"``). Malformed strings are ignored.
* GPP (``regs.gpp``/``regs.gpp_sid``): the section ids are noted in the decision; only
  section 2 (EU TCF) changes the outcome today (see above). The US state sections are
  not decoded; ``us_privacy`` is read when the exchange sends it alongside.
* Otherwise personalised (``"ok"``). ``device.lmt`` is honoured where it matters: a
  zeroed advertising id is never used as a device id (``request_context.device_key``).

Not personalised means: no user id reaches the feature store, no user segments reach
targeting, no frequency counting by user, and the experiment unit is the request.

Nothing logged carries a raw user id or IP: :func:`pseudonymise` is the keyed hash used
wherever a user must be referred to (notice URLs, frequency counters).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from decisioning.openrtb import BidRequest
from decisioning.tcf import TCFError, decode_tc_string

#: TCF purposes needed for personalised advertising.
REQUIRED_PURPOSES = (1, 3, 4)
_TCF_EU_SECTION = 2

PRIVACY_REASONS = ("ok", "coppa", "gdpr_no_consent", "gdpr_bad_consent", "gdpr_purposes",
                   "gdpr_vendor", "us_privacy_opt_out")


@dataclass(frozen=True, slots=True)
class PrivacyDecision:
    personalised: bool
    reason: str                         # one of PRIVACY_REASONS
    gdpr: bool                          # whether GDPR applies to the request
    gpp_sections: tuple[int, ...] = ()


_OK = PrivacyDecision(True, "ok", False)


def _gdpr_decision(consent: str | None, vendor_id: int | None,
                   gpp: tuple[int, ...]) -> PrivacyDecision:
    if not consent:
        return PrivacyDecision(False, "gdpr_no_consent", True, gpp)
    try:
        tc = decode_tc_string(consent)
    except TCFError:
        return PrivacyDecision(False, "gdpr_bad_consent", True, gpp)
    if not tc.has_purposes(REQUIRED_PURPOSES):
        return PrivacyDecision(False, "gdpr_purposes", True, gpp)
    if vendor_id is not None and not tc.vendor_consent(vendor_id):
        return PrivacyDecision(False, "gdpr_vendor", True, gpp)
    return PrivacyDecision(True, "ok", True, gpp)


def us_privacy_opt_out(value: str | None) -> bool:
    """Whether a CCPA US Privacy string ("1YY-") says the user opted out of sale."""
    return bool(value) and len(value or "") == 4 and (value or "")[0] == "1" \
        and (value or "")[2] in "Yy"


def privacy_decision(req: BidRequest, *, vendor_id: int | None = None) -> PrivacyDecision:
    """What the request's privacy signals allow (see the module docstring)."""
    regs = req.regs
    if regs is None:
        return _OK
    if regs.coppa == 1:
        return PrivacyDecision(False, "coppa", False)
    gpp = tuple(regs.gpp_sid or ())
    gdpr = regs.gdpr == 1 or (regs.gdpr is None and _TCF_EU_SECTION in gpp)
    if gdpr:
        consent = req.user.consent if req.user is not None else None
        decision = _gdpr_decision(consent, vendor_id, gpp)
        if not decision.personalised:
            return decision
    if us_privacy_opt_out(regs.us_privacy):
        return PrivacyDecision(False, "us_privacy_opt_out", gdpr, gpp)
    if gdpr or gpp:
        return PrivacyDecision(True, "ok", gdpr, gpp)
    return _OK


def is_personalised(req: BidRequest, *, vendor_id: int | None = None) -> bool:
    """Whether user-level data (ids, segments, user features) may be used."""
    return privacy_decision(req, vendor_id=vendor_id).personalised


def pseudonymise(value: str, salt: str = "") -> str:
    """A keyed 64-bit hash (hex) of an identifier; "" for "" (nothing to refer to)."""
    if not value:
        return ""
    return hashlib.blake2b(value.encode(), digest_size=8,
                           key=salt.encode()[:64]).hexdigest()


__all__ = ["PRIVACY_REASONS", "REQUIRED_PURPOSES", "PrivacyDecision", "is_personalised",
           "privacy_decision", "pseudonymise", "us_privacy_opt_out"]

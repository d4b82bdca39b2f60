"""Privacy signals: may this request be personalised?

Today this reads the flags only:

* COPPA (``regs.coppa == 1``): never personalised.
* GDPR (``regs.gdpr == 1``, 2.6 place or 2.5 ``regs.ext``): personalised only with a
  consent string (``user.consent`` or 2.5 ``user.ext.consent``).

Later: decode the TCF v2 string (purposes 1/3/4 and vendor consent for our vendor id),
the US Privacy string's opt-out-of-sale flag, GPP sections, and ``device.lmt``.
"""

from __future__ import annotations

from decisioning.openrtb import BidRequest


def is_personalised(req: BidRequest) -> bool:
    """Whether user-level data (ids, segments, user features) may be used."""
    regs = req.regs
    if regs is None:
        return True
    if regs.coppa == 1:
        return False
    if regs.gdpr == 1:
        consent = req.user.consent if req.user is not None else None
        return bool(consent)
    return True


__all__ = ["is_personalised"]

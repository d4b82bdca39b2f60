"""The request context: what the decision engine knows about one impression opportunity.

Its fields are the ``requests`` event-log columns, so training (which reads the event
log) and serving (which parses OpenRTB) build model inputs from the same structure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(slots=True)
class RequestContext:
    ts: datetime                # UTC
    request_id: str
    imp_id: str
    user_id: str = ""           # "" when the request has none
    device_id: str = ""         # ifa, or hash(ip + ua)
    ip: str = ""
    ua: str = ""
    device_type: int = 0        # OpenRTB devicetype; 0 unknown
    os: str = ""
    country: str = ""
    region: str = ""
    publisher_id: str = ""
    domain: str = ""            # site domain or app bundle
    is_app: bool = False
    slot_id: str = ""
    format: str = "banner"      # banner | video | native | audio
    w: int = 0
    h: int = 0
    bidfloor: float = 0.0       # CPM, in the bid currency
    tmax: int = 0
    personalised: bool = True   # False under GDPR-without-consent or COPPA
    extra: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AdRef:
    """A candidate ad as the feature reader and models see it."""

    campaign_id: str
    creative_id: str
    topic: int = -1             # the creative's visible topic; -1 unknown

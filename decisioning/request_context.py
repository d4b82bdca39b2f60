"""From an OpenRTB request to the :class:`~features.context.RequestContext` of one imp.

The request-level part (device, user, publisher, privacy) is read once per request
(:func:`request_facts`); :func:`imp_context` adds one imp's slot. :func:`to_context` does
both for callers that handle a single imp.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from decisioning.openrtb import BidRequest, Imp, Publisher
from decisioning.privacy import privacy_decision
from features.context import RequestContext

_ZERO_IFA = frozenset({"", "00000000-0000-0000-0000-000000000000"})


def normalise_domain(value: str) -> str:
    """``"http://WWW.Foo.com/x"`` → ``"foo.com"``: no scheme, path, port or ``www.``."""
    d = value.strip().lower()
    if "://" in d:
        d = d.split("://", 1)[1]
    d = d.split("/", 1)[0].split(":", 1)[0]
    return d.removeprefix("www.")


def domain_keys(value: str) -> frozenset[str]:
    """A domain and its parents down to two labels: ``a.b.com`` → {a.b.com, b.com}."""
    d = normalise_domain(value)
    if not d:
        return frozenset()
    labels = d.split(".")
    return frozenset(".".join(labels[i:]) for i in range(max(1, len(labels) - 1)))


def device_key(ifa: str | None, ip: str | None, ua: str | None) -> str:
    """The device id: the advertising id, else a 64-bit hash of ip + ua; "" when neither.

    Zeroed advertising ids (limit-ad-tracking devices) count as absent. The event log's
    ``device_id`` column uses the same rule, so training and serving agree.
    """
    if ifa and ifa not in _ZERO_IFA:
        return ifa
    if not ip and not ua:
        return ""
    raw = f"{ip or ''}\x00{ua or ''}".encode()
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """Everything in a :class:`RequestContext` that does not depend on the imp."""

    user_id: str
    device_id: str
    ip: str
    ua: str
    device_type: int
    os: str
    country: str
    region: str
    publisher_id: str
    domain: str
    is_app: bool
    tmax: int
    personalised: bool
    segments: frozenset[str]        # user segment ids; empty when not personalised
    domain_keys: frozenset[str]     # the domain and its parents, for targeting
    privacy: str = "ok"             # the privacy decision's reason (PRIVACY_REASONS)


def _host(url: str | None) -> str:
    if not url:
        return ""
    try:
        return urlsplit(url).hostname or ""
    except ValueError:          # a malformed URL in site.page is the publisher's problem
        return ""


def request_facts(req: BidRequest, *, vendor_id: int | None = None) -> RequestFacts:
    """The imp-independent facts; ``vendor_id`` is our TCF vendor id (None: not checked)."""
    device, user = req.device, req.user
    geo = (device.geo if device is not None else None) or (user.geo if user is not None else None)
    publisher: Publisher | None = None
    domain = ""
    if req.site is not None:
        publisher = req.site.publisher
        domain = req.site.domain or _host(req.site.page)
    elif req.app is not None:
        publisher = req.app.publisher
        domain = req.app.bundle or req.app.domain or ""
    elif req.dooh is not None:
        publisher = req.dooh.publisher
        domain = req.dooh.domain or ""
    ip = ua = ""
    device_id = ""
    device_type = 0
    os_name = ""
    if device is not None:
        ip = device.ip or device.ipv6 or ""
        ua = device.ua or ""
        device_id = device_key(device.ifa, ip, ua)
        device_type = device.devicetype or 0
        os_name = device.os or ""
    privacy = privacy_decision(req, vendor_id=vendor_id)
    personalised = privacy.personalised
    return RequestFacts(
        user_id=(user.id or "") if user is not None else "",
        device_id=device_id,
        ip=ip,
        ua=ua,
        device_type=device_type,
        os=os_name,
        country=(geo.country or "") if geo is not None else "",
        region=(geo.region or "") if geo is not None else "",
        publisher_id=(publisher.id or "") if publisher is not None else "",
        domain=domain,
        is_app=req.app is not None,
        tmax=req.tmax or 0,
        personalised=personalised,
        segments=user.segment_ids() if user is not None and personalised else frozenset(),
        domain_keys=domain_keys(domain),
        privacy=privacy.reason,
    )


def imp_slot(imp: Imp) -> tuple[str, int, int]:
    """(format, w, h) of an imp's primary placement; format "" when it has none."""
    if imp.banner is not None:
        sizes = imp.banner.sizes()
        w, h = sizes[0] if sizes else (0, 0)
        return "banner", w, h
    if imp.video is not None:
        return "video", imp.video.w or 0, imp.video.h or 0
    if imp.native is not None:
        return "native", 0, 0
    if imp.audio is not None:
        return "audio", 0, 0
    return "", 0, 0


def imp_context(facts: RequestFacts, request_id: str, imp: Imp, now: datetime,
                *, bidfloor: float | None = None) -> RequestContext:
    """The context of one imp; ``bidfloor`` overrides ``imp.bidfloor`` (e.g. converted)."""
    fmt, w, h = imp_slot(imp)
    return RequestContext(
        ts=now, request_id=request_id, imp_id=imp.id,
        user_id=facts.user_id, device_id=facts.device_id, ip=facts.ip, ua=facts.ua,
        device_type=facts.device_type, os=facts.os, country=facts.country,
        region=facts.region, publisher_id=facts.publisher_id, domain=facts.domain,
        is_app=facts.is_app, slot_id=imp.tagid or "", format=fmt, w=w, h=h,
        bidfloor=imp.bidfloor if bidfloor is None else bidfloor, tmax=facts.tmax,
        personalised=facts.personalised,
    )


def to_context(req: BidRequest, imp: Imp, now: datetime) -> RequestContext:
    """The :class:`RequestContext` of ``imp`` in ``req`` at ``now`` (UTC)."""
    return imp_context(request_facts(req), req.id, imp, now)


__all__ = ["RequestFacts", "device_key", "domain_keys", "imp_context", "imp_slot",
           "normalise_domain", "request_facts", "to_context"]

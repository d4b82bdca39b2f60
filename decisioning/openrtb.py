"""OpenRTB 2.5 / 2.6 bid request models and :func:`parse_request`.

One model tree reads both versions. Fields that moved from ``ext`` in 2.5 to a
first-class place in 2.6 are copied to the 2.6 place after validation, so the rest of
the service reads one location:

=====================  ===========================  ==================
2.6                    2.5                          copied when
=====================  ===========================  ==================
``regs.gdpr``          ``regs.ext.gdpr``            2.6 field absent
``regs.us_privacy``    ``regs.ext.us_privacy``      2.6 field absent
``user.consent``       ``user.ext.consent``         2.6 field absent
``user.eids``          ``user.ext.eids``            2.6 field absent
``source.schain``      ``source.ext.schain``        2.6 field absent
=====================  ===========================  ==================

Unknown fields are ignored; a known field of the wrong type is an error naming its
path (``imp[0].banner.w: ...``). Numbers are accepted where the spec says string
(exchanges send numeric ids), and numeric strings where it says integer.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from decisioning.errors import InvalidRequest

Ext = dict[str, Any]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True, allow_inf_nan=False)


# --------------------------------------------------------------------------- placement


class Format(_Model):
    w: int | None = Field(default=None, ge=0)
    h: int | None = Field(default=None, ge=0)
    wratio: int | None = None
    hratio: int | None = None
    wmin: int | None = None
    ext: Ext | None = None


class Banner(_Model):
    format: list[Format] | None = None
    w: int | None = Field(default=None, ge=0)
    h: int | None = Field(default=None, ge=0)
    btype: list[int] | None = None
    battr: list[int] | None = None
    pos: int | None = None
    mimes: list[str] | None = None
    topframe: int | None = None
    expdir: list[int] | None = None
    api: list[int] | None = None
    id: str | None = None
    vcm: int | None = None
    ext: Ext | None = None

    def sizes(self) -> list[tuple[int, int]]:
        """Every acceptable (w, h): ``w``/``h`` first, then each ``format`` entry."""
        out: list[tuple[int, int]] = []
        if self.w and self.h:
            out.append((self.w, self.h))
        for f in self.format or ():
            if f.w and f.h and (f.w, f.h) not in out:
                out.append((f.w, f.h))
        return out


class Video(_Model):
    mimes: list[str] | None = None
    minduration: int | None = None
    maxduration: int | None = None
    startdelay: int | None = None
    protocols: list[int] | None = None
    w: int | None = Field(default=None, ge=0)
    h: int | None = Field(default=None, ge=0)
    placement: int | None = None
    plcmt: int | None = None
    linearity: int | None = None
    skip: int | None = None
    sequence: int | None = None
    battr: list[int] | None = None
    maxextended: int | None = None
    minbitrate: int | None = None
    maxbitrate: int | None = None
    boxingallowed: int | None = None
    playbackmethod: list[int] | None = None
    delivery: list[int] | None = None
    pos: int | None = None
    companionad: list[Banner] | None = None
    api: list[int] | None = None
    companiontype: list[int] | None = None
    podid: str | None = None
    ext: Ext | None = None


class Audio(_Model):
    mimes: list[str] | None = None
    minduration: int | None = None
    maxduration: int | None = None
    startdelay: int | None = None
    protocols: list[int] | None = None
    battr: list[int] | None = None
    delivery: list[int] | None = None
    companionad: list[Banner] | None = None
    api: list[int] | None = None
    feed: int | None = None
    ext: Ext | None = None


class Native(_Model):
    request: str = ""            # the Native Ads request, itself JSON-encoded
    ver: str | None = None
    api: list[int] | None = None
    battr: list[int] | None = None
    ext: Ext | None = None


class Deal(_Model):
    id: str
    bidfloor: float = Field(default=0.0, ge=0)
    bidfloorcur: str = "USD"
    at: int | None = None
    wseat: list[str] | None = None
    wadomain: list[str] | None = None
    ext: Ext | None = None


class Pmp(_Model):
    private_auction: int = 0
    deals: list[Deal] = Field(default_factory=list)
    ext: Ext | None = None


class Imp(_Model):
    id: str = Field(min_length=1)
    banner: Banner | None = None
    video: Video | None = None
    audio: Audio | None = None
    native: Native | None = None
    pmp: Pmp | None = None
    displaymanager: str | None = None
    displaymanagerver: str | None = None
    instl: int = 0
    tagid: str | None = None
    bidfloor: float = Field(default=0.0, ge=0)
    bidfloorcur: str = "USD"
    clickbrowser: int | None = None
    secure: int | None = None
    iframebuster: list[str] | None = None
    rwdd: int | None = None
    exp: int | None = None
    dt: float | None = None
    ext: Ext | None = None


# --------------------------------------------------------------------------- context


class Publisher(_Model):
    id: str | None = None
    name: str | None = None
    cat: list[str] | None = None
    domain: str | None = None
    ext: Ext | None = None


class Content(_Model):
    id: str | None = None
    episode: int | None = None
    title: str | None = None
    series: str | None = None
    season: str | None = None
    cat: list[str] | None = None
    keywords: str | None = None
    language: str | None = None
    livestream: int | None = None
    len: int | None = None
    ext: Ext | None = None


class Site(_Model):
    id: str | None = None
    name: str | None = None
    domain: str | None = None
    cat: list[str] | None = None
    sectioncat: list[str] | None = None
    pagecat: list[str] | None = None
    page: str | None = None
    ref: str | None = None
    mobile: int | None = None
    privacypolicy: int | None = None
    publisher: Publisher | None = None
    content: Content | None = None
    keywords: str | None = None
    ext: Ext | None = None


class App(_Model):
    id: str | None = None
    name: str | None = None
    bundle: str | None = None
    domain: str | None = None
    storeurl: str | None = None
    cat: list[str] | None = None
    ver: str | None = None
    paid: int | None = None
    publisher: Publisher | None = None
    content: Content | None = None
    keywords: str | None = None
    ext: Ext | None = None


class Dooh(_Model):
    """Digital out-of-home placement (2.6)."""

    id: str | None = None
    name: str | None = None
    venuetype: list[str] | None = None
    venuetypetax: int | None = None
    publisher: Publisher | None = None
    domain: str | None = None
    keywords: str | None = None
    content: Content | None = None
    ext: Ext | None = None


class Geo(_Model):
    lat: float | None = None
    lon: float | None = None
    type: int | None = None
    country: str | None = None      # ISO-3166-1 alpha-3
    region: str | None = None
    metro: str | None = None
    city: str | None = None
    zip: str | None = None
    utcoffset: int | None = None
    ext: Ext | None = None


class BrandVersion(_Model):
    brand: str
    version: list[str] | None = None


class UserAgent(_Model):
    """Structured user agent (``device.sua``, 2.6), from client hints."""

    browsers: list[BrandVersion] | None = None
    platform: BrandVersion | None = None
    mobile: int | None = None
    architecture: str | None = None
    bitness: str | None = None
    model: str | None = None
    source: int | None = None


class Device(_Model):
    ua: str | None = None
    sua: UserAgent | None = None
    geo: Geo | None = None
    dnt: int | None = None
    lmt: int | None = None
    ip: str | None = None
    ipv6: str | None = None
    devicetype: int | None = None
    make: str | None = None
    model: str | None = None
    os: str | None = None
    osv: str | None = None
    h: int | None = None
    w: int | None = None
    js: int | None = None
    language: str | None = None
    carrier: str | None = None
    connectiontype: int | None = None
    ifa: str | None = None
    ext: Ext | None = None


class Segment(_Model):
    id: str | None = None
    name: str | None = None
    value: str | None = None


class Data(_Model):
    id: str | None = None
    name: str | None = None
    segment: list[Segment] | None = None


class Uid(_Model):
    id: str
    atype: int | None = None


class Eid(_Model):
    source: str
    uids: list[Uid] = Field(default_factory=list)
    inserter: str | None = None
    matcher: str | None = None
    mm: int | None = None


class UserExt(_Model):
    """2.5 locations of the consent string and extended ids."""

    consent: str | None = None
    eids: list[Eid] | None = None


class User(_Model):
    id: str | None = None
    buyeruid: str | None = None
    yob: int | None = None
    gender: str | None = None
    keywords: str | None = None
    geo: Geo | None = None
    data: list[Data] | None = None
    consent: str | None = None
    eids: list[Eid] | None = None
    ext: UserExt | None = None

    @model_validator(mode="after")
    def _from_25_ext(self) -> User:
        if self.ext is not None:
            if self.consent is None:
                self.consent = self.ext.consent
            if self.eids is None:
                self.eids = self.ext.eids
        return self

    def segment_ids(self) -> frozenset[str]:
        return frozenset(s.id for d in self.data or () for s in d.segment or () if s.id)


class RegsExt(_Model):
    gdpr: int | None = None
    us_privacy: str | None = None


class Regs(_Model):
    coppa: int = 0
    gdpr: int | None = None
    us_privacy: str | None = None
    gpp: str | None = None
    gpp_sid: list[int] | None = None
    ext: RegsExt | None = None

    @model_validator(mode="after")
    def _from_25_ext(self) -> Regs:
        if self.ext is not None:
            if self.gdpr is None:
                self.gdpr = self.ext.gdpr
            if self.us_privacy is None:
                self.us_privacy = self.ext.us_privacy
        return self


class SupplyChainNode(_Model):
    asi: str
    sid: str
    hp: int = 1
    rid: str | None = None
    name: str | None = None
    domain: str | None = None


class SupplyChain(_Model):
    complete: int
    nodes: list[SupplyChainNode]
    ver: str = "1.0"


class SourceExt(_Model):
    schain: SupplyChain | None = None


class Source(_Model):
    fd: int | None = None
    tid: str | None = None
    pchain: str | None = None
    schain: SupplyChain | None = None
    ext: SourceExt | None = None

    @model_validator(mode="after")
    def _from_25_ext(self) -> Source:
        if self.schain is None and self.ext is not None:
            self.schain = self.ext.schain
        return self


class BidRequest(_Model):
    id: str = Field(min_length=1)
    imp: list[Imp] = Field(min_length=1)
    site: Site | None = None
    app: App | None = None
    dooh: Dooh | None = None
    device: Device | None = None
    user: User | None = None
    test: int = 0
    at: int = 2                     # 1 first price, 2 second price plus
    tmax: int | None = Field(default=None, ge=0)
    wseat: list[str] | None = None
    bseat: list[str] | None = None
    allimps: int = 0
    cur: list[str] | None = None
    wlang: list[str] | None = None
    bcat: list[str] | None = None
    cattax: int | None = None
    badv: list[str] | None = None
    bapp: list[str] | None = None
    source: Source | None = None
    regs: Regs | None = None
    ext: Ext | None = None


# --------------------------------------------------------------------------- parsing


def error_path(loc: tuple[int | str, ...]) -> str:
    """``('imp', 0, 'banner', 'w')`` → ``imp[0].banner.w``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_MESSAGES = {
    "missing": "required field is missing",
    "too_short": "must not be empty",
}


def _problems(exc: ValidationError, limit: int = 5) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False, include_context=False)[:limit]:
        msg = _MESSAGES.get(err["type"], err["msg"])
        if err["type"] not in _MESSAGES and "input" in err:
            shown = repr(err["input"])
            msg += f" (got {shown[:40] + '...' if len(shown) > 43 else shown})"
        out.append((error_path(err["loc"]), msg))
    return out


def parse_request(body: bytes | str) -> BidRequest:
    """Parse and validate a bid request body (2.5 or 2.6).

    Raises :class:`InvalidRequest` naming the problem: malformed JSON, not an object,
    a missing ``id``, a missing or empty ``imp``, duplicate imp ids, a mistyped field.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"malformed JSON: {exc}", [("", f"malformed JSON: {exc}")]) from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"a bid request is a JSON object, got {type(data).__name__}")
    try:
        req = BidRequest.model_validate(data)
    except ValidationError as exc:
        problems = _problems(exc)
        first = "; ".join(f"{p}: {m}" for p, m in problems[:3])
        more = exc.error_count() - min(3, len(problems))
        suffix = f" (and {more} more)" if more > 0 else ""
        raise InvalidRequest(f"invalid bid request: {first}{suffix}", problems) from None
    if len(req.imp) > 1:
        seen: set[str] = set()
        for i, imp in enumerate(req.imp):
            if imp.id in seen:
                msg = f"duplicate imp id {imp.id!r}"
                raise InvalidRequest(f"invalid bid request: imp[{i}].id: {msg}",
                                     [(f"imp[{i}].id", msg)])
            seen.add(imp.id)
    return req


__all__ = [
    "App", "Audio", "Banner", "BidRequest", "Content", "Data", "Deal", "Device", "Dooh", "Eid",
    "Format", "Geo", "Imp", "Native", "Pmp", "Publisher", "Regs", "Segment", "Site", "Source",
    "SupplyChain", "SupplyChainNode", "Uid", "User", "UserAgent", "Video", "error_path",
    "parse_request",
]

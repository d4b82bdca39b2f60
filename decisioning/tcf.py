"""IAB TCF v2 consent strings: decode the core segment.

A TC string is dot-separated base64url segments; the first is the core segment, a bit
string (most significant bit first)::

    bits      field
    6         Version (2)
    36        Created (deciseconds since the epoch)
    36        LastUpdated
    12        CmpId
    12        CmpVersion
    6         ConsentScreen
    12        ConsentLanguage (two letters, 6 bits each, A = 0)
    12        VendorListVersion
    6         TcfPolicyVersion
    1         IsServiceSpecific
    1         UseNonStandardTexts
    12        SpecialFeatureOptIns
    24        PurposesConsent            purpose i is bit i (1-based)
    24        PurposesLITransparency
    1         PurposeOneTreatment
    12        PublisherCC
    ...       vendor consent section: MaxVendorId (16), IsRangeEncoding (1), then a
              bit field of MaxVendorId bits, or NumEntries (12) and entries of
              IsARange (1), StartOrOnlyVendorId (16)[, EndVendorId (16)]

Decoding is pure and cached per string (a publisher sends the same string for every
page view of a user): :func:`decode_tc_string` raises :class:`TCFError` for anything
that is not a version-2 core segment.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

from decisioning.errors import DecisionError

_CORE_BITS = 213            # fixed-width fields before the vendor consent section
_URLSAFE = str.maketrans("-_", "+/")


class TCFError(DecisionError):
    """The consent string is not a decodable TCF v2 core segment."""


class _Bits:
    __slots__ = ("_n", "_pos", "_v")

    def __init__(self, data: bytes) -> None:
        self._v = int.from_bytes(data, "big")
        self._n = len(data) * 8
        self._pos = 0

    def read(self, width: int) -> int:
        if self._pos + width > self._n:
            raise TCFError(f"consent string ends at bit {self._n}, field needs "
                           f"{self._pos + width}")
        self._pos += width
        return (self._v >> (self._n - self._pos)) & ((1 << width) - 1)


@dataclass(frozen=True, slots=True)
class TCString:
    version: int
    created: datetime
    last_updated: datetime
    cmp_id: int
    cmp_version: int
    consent_language: str
    vendor_list_version: int
    policy_version: int
    is_service_specific: bool
    special_features: frozenset[int]
    purposes_consent: frozenset[int]
    purposes_li: frozenset[int]
    purpose_one_treatment: bool
    publisher_cc: str
    vendor_consents: frozenset[int] | None   # None when the vendor section is absent/bad
    max_vendor_id: int

    def has_purposes(self, purposes: tuple[int, ...]) -> bool:
        return all(p in self.purposes_consent for p in purposes)

    def vendor_consent(self, vendor_id: int) -> bool:
        return self.vendor_consents is not None and vendor_id in self.vendor_consents


def _flags(value: int, width: int) -> frozenset[int]:
    return frozenset(i + 1 for i in range(width) if value >> (width - 1 - i) & 1)


def _letters(value: int) -> str:
    return chr(ord("A") + (value >> 6)) + chr(ord("A") + (value & 0x3F))


def _time(deciseconds: int) -> datetime:
    return datetime.fromtimestamp(deciseconds / 10, UTC)


def _vendors(bits: _Bits) -> tuple[int, frozenset[int]]:
    max_id = bits.read(16)
    if bits.read(1) == 0:
        field = bits.read(max_id) if max_id else 0
        return max_id, _flags(field, max_id)
    out: set[int] = set()
    for _ in range(bits.read(12)):
        if bits.read(1):
            start, end = bits.read(16), bits.read(16)
            if end < start or end - start > 65535:
                raise TCFError(f"bad vendor range {start}-{end}")
            out.update(range(start, end + 1))
        else:
            out.add(bits.read(16))
    return max_id, frozenset(out)


@lru_cache(maxsize=8192)
def decode_tc_string(value: str) -> TCString:
    """The core segment of a TCF v2 consent string; raises :class:`TCFError`."""
    core = value.strip().split(".", 1)[0]
    if not core:
        raise TCFError("empty consent string")
    try:
        data = base64.b64decode(core.translate(_URLSAFE) + "=" * (-len(core) % 4),
                                validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TCFError(f"consent string is not base64url: {exc}") from None
    version = data[0] >> 2 if data else 0
    if version != 2:
        raise TCFError(f"TCF version {version}, expected 2")
    if len(data) * 8 < _CORE_BITS:
        raise TCFError(f"consent string too short for a TCF v2 core segment "
                       f"({len(data) * 8} bits)")
    bits = _Bits(data)
    bits.read(6)
    created, updated = bits.read(36), bits.read(36)
    cmp_id, cmp_version = bits.read(12), bits.read(12)
    bits.read(6)                                    # consent screen
    language = _letters(bits.read(12))
    vlv, policy = bits.read(12), bits.read(6)
    service_specific = bool(bits.read(1))
    bits.read(1)                                    # non-standard texts
    special = _flags(bits.read(12), 12)
    purposes = _flags(bits.read(24), 24)
    li = _flags(bits.read(24), 24)
    p1_treatment = bool(bits.read(1))
    publisher_cc = _letters(bits.read(12))
    try:
        max_vendor, vendors = _vendors(bits)
        vendor_set: frozenset[int] | None = vendors
    except TCFError:
        max_vendor, vendor_set = 0, None
    return TCString(
        version=version, created=_time(created), last_updated=_time(updated),
        cmp_id=cmp_id, cmp_version=cmp_version, consent_language=language,
        vendor_list_version=vlv, policy_version=policy,
        is_service_specific=service_specific, special_features=special,
        purposes_consent=purposes, purposes_li=li, purpose_one_treatment=p1_treatment,
        publisher_cc=publisher_cc, vendor_consents=vendor_set, max_vendor_id=max_vendor)


class _Writer:
    def __init__(self) -> None:
        self.value = 0
        self.n = 0

    def write(self, v: int, width: int) -> None:
        self.value = (self.value << width) | (v & ((1 << width) - 1))
        self.n += width


def encode_tc_string(*, purposes: set[int] | frozenset[int], vendors: set[int] | frozenset[int] = frozenset(),
                     created: datetime | None = None, cmp_id: int = 7,
                     language: str = "EN", publisher_cc: str = "DE",
                     vendor_list_version: int = 100) -> str:
    """A TCF v2 core segment (bit-field vendor encoding) — for tests and tooling."""
    t = int((created or datetime(2024, 1, 1, tzinfo=UTC)).timestamp() * 10)

    def letters(s: str) -> int:
        return ((ord(s[0]) - 65) << 6) | (ord(s[1]) - 65)

    def field(items: set[int] | frozenset[int], width: int) -> int:
        return sum(1 << (width - i) for i in items if 1 <= i <= width)

    w = _Writer()
    for v, width in ((2, 6), (t, 36), (t, 36), (cmp_id, 12), (1, 12), (1, 6),
                     (letters(language), 12), (vendor_list_version, 12), (2, 6), (1, 1),
                     (0, 1), (0, 12), (field(purposes, 24), 24), (0, 24), (0, 1),
                     (letters(publisher_cc), 12)):
        w.write(v, width)
    max_vendor = max(vendors, default=0)
    w.write(max_vendor, 16)
    w.write(0, 1)
    if max_vendor:
        w.write(field(vendors, max_vendor), max_vendor)
    w.write(0, 16)                                   # empty legitimate-interest section
    w.write(0, 1)
    w.write(0, 12)                                   # no publisher restrictions
    pad = -w.n % 8
    w.write(0, pad)
    data = w.value.to_bytes(w.n // 8, "big")
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


__all__ = ["TCFError", "TCString", "decode_tc_string", "encode_tc_string"]

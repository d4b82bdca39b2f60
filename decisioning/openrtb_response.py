"""OpenRTB 2.5 / 2.6 bid response models.

The engine builds responses with :func:`construct`, pydantic's ``model_construct``
without its per-field loop (its values are already typed, so validation would be a
second pass); :meth:`BidResponse.to_json` writes them without ``null`` fields. Callers
that receive a response from elsewhere validate it with ``BidResponse.model_validate_json``.
"""

from __future__ import annotations

from functools import cache
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

#: Substitution macros an exchange replaces in nurl / burl / lurl / adm.
AUCTION_MACROS = (
    "${AUCTION_ID}", "${AUCTION_BID_ID}", "${AUCTION_IMP_ID}", "${AUCTION_SEAT_ID}",
    "${AUCTION_AD_ID}", "${AUCTION_PRICE}", "${AUCTION_CURRENCY}", "${AUCTION_MBR}",
    "${AUCTION_LOSS}", "${AUCTION_MIN_TO_WIN}",
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True, allow_inf_nan=False)


class Bid(_Model):
    id: str
    impid: str
    price: float = Field(ge=0)
    nurl: str | None = None
    burl: str | None = None
    lurl: str | None = None
    adm: str | None = None
    adid: str | None = None
    adomain: list[str] | None = None
    bundle: str | None = None
    iurl: str | None = None
    cid: str | None = None
    crid: str | None = None
    cat: list[str] | None = None
    attr: list[int] | None = None
    mtype: int | None = None        # 1 banner, 2 video, 3 audio, 4 native (2.6)
    dealid: str | None = None
    w: int | None = None
    h: int | None = None
    exp: int | None = None
    ext: dict[str, Any] | None = None


class SeatBid(_Model):
    bid: list[Bid] = Field(min_length=1)
    seat: str | None = None
    group: int = 0
    ext: dict[str, Any] | None = None


class BidResponse(_Model):
    id: str
    seatbid: list[SeatBid] = Field(default_factory=list)
    bidid: str | None = None
    cur: str = "USD"
    customdata: str | None = None
    nbr: int | None = None          # no-bid reason code
    ext: dict[str, Any] | None = None

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    def bids(self) -> list[Bid]:
        return [b for sb in self.seatbid for b in sb.bid]


_M = TypeVar("_M", bound=BaseModel)


@cache
def _defaults(cls: type[BaseModel]) -> tuple[dict[str, Any], tuple[tuple[str, Any], ...]]:
    """Every field of a model in declaration order with its plain default (None for
    required and factory fields), and the (name, default_factory) pairs."""
    template: dict[str, Any] = {}
    factories: list[tuple[str, Any]] = []
    for name, field in cls.model_fields.items():
        template[name] = None if field.is_required() else field.default
        if field.default_factory is not None:
            factories.append((name, field.default_factory))
    return template, tuple(factories)


def construct(cls: type[_M], **values: Any) -> _M:
    """``cls.model_construct(**values)`` for ``extra="ignore"`` models without private
    attributes, without its per-field loop: the defaults are looked up once per class.
    Values are trusted as they are (no validation), exactly as with ``model_construct``."""
    template, factories = _defaults(cls)
    data = dict(template)
    data.update(values)                     # keys keep the declaration order
    for name, factory in factories:
        if name not in values:
            data[name] = factory()
    model = cls.__new__(cls)
    object.__setattr__(model, "__dict__", data)
    object.__setattr__(model, "__pydantic_fields_set__", set(values))
    object.__setattr__(model, "__pydantic_extra__", None)
    object.__setattr__(model, "__pydantic_private__", None)
    return model


__all__ = ["AUCTION_MACROS", "Bid", "BidResponse", "SeatBid", "construct"]

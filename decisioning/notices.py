"""Win, billing and loss notices: parsed, deduplicated, applied to budgets, logged.

The engine puts three URLs on every bid (:class:`NoticeUrls`); the exchange replaces
the macros and calls them::

    <base>/win?id=${AUCTION_ID}&imp=${AUCTION_IMP_ID}&cid=..&crid=..&bid=<bid id>
              &price=${AUCTION_PRICE}&cur=${AUCTION_CURRENCY}
    <base>/bill?...same...&u=<pseudonymous user key, personalised requests only>
    <base>/loss?id=..&imp=..&cid=..&crid=..&bid=..&loss=${AUCTION_LOSS}&mtw=${AUCTION_MIN_TO_WIN}

:meth:`NoticeService.handle` then:

1. parses and validates the parameters (:class:`InvalidNotice` names the parameter: a
   missing id, a macro left unsubstituted, a price that is not a decimal);
2. deduplicates on ``kind:request:imp:bid`` (:class:`NoticeDedupe`: Redis ``SET NX EX``
   shared by all processes, or an in-memory TTL set) — a repeated notice counts once;
3. applies it: **billing** settles the bid's reservation into spend, in integer
   micro-dollars from the decimal price text (CPM / 1000, exact) and counts a
   frequency-cap impression for the user key; **loss** releases the reservation;
   **win** changes no budget (spend comes from billing);
4. appends a :class:`NoticeRecord` to the notice sink (``<root>/notices/date=…/part-N``
   parquet, written with pyarrow: :data:`NOTICE_SCHEMA`).

When the dedupe store or the ledger is unreachable the notice is not recorded and
:class:`NoticeStoreUnavailable` is raised (HTTP 503: the exchange retries); the dedupe
mark is removed again when applying fails, so the retry counts. A SIGKILL loses the
buffered log rows (at most ``flush_every`` rows or ``flush_interval_s`` seconds), never
settled spend, which is in the ledger at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc

from adplatform.eventlog import write_parquet
from adplatform.partwriter import encode_row, rows_table, timestamp_us
from decisioning.budget import BudgetLedger, BudgetUnavailable, InvalidAmount, cpm_to_micros
from decisioning.buffered import EncodedPartWriter
from decisioning.clock import Clock, SystemClock
from decisioning.decision_log import StartableSink
from decisioning.errors import DecisionError
from decisioning.frequency import FrequencyCounter, FrequencyUnavailable

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

NoticeKind = Literal["win", "billing", "loss"]
NOTICE_KINDS: tuple[NoticeKind, ...] = ("win", "billing", "loss")


class InvalidNotice(DecisionError):
    """A notice whose parameters cannot be used; the message names the parameter."""


class NoticeStoreUnavailable(DecisionError):
    """The dedupe store or the budget ledger cannot be reached (HTTP 503, retry)."""


# --------------------------------------------------------------------------- URLs


class NoticeUrls:
    """nurl / burl / lurl for a bid; the per-creative part is built once and cached."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self._heads: dict[tuple[str, str], tuple[str, str, str]] = {}

    def for_bid(self, campaign_id: str, creative_id: str, bid_id: str,
                user_key: str = "") -> tuple[str, str, str]:
        heads = self._heads.get((campaign_id, creative_id))
        if heads is None:
            q = (f"?id=${{AUCTION_ID}}&imp=${{AUCTION_IMP_ID}}"
                 f"&cid={quote(campaign_id, safe='')}&crid={quote(creative_id, safe='')}")
            heads = (f"{self.base}/win{q}", f"{self.base}/bill{q}", f"{self.base}/loss{q}")
            self._heads[(campaign_id, creative_id)] = heads
        win, bill, loss = heads
        tail = f"&bid={bid_id}&price=${{AUCTION_PRICE}}&cur=${{AUCTION_CURRENCY}}"
        user = f"&u={user_key}" if user_key else ""
        return (f"{win}{tail}", f"{bill}{tail}{user}",
                f"{loss}&bid={bid_id}&loss=${{AUCTION_LOSS}}&mtw=${{AUCTION_MIN_TO_WIN}}")


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class Notice:
    kind: NoticeKind
    request_id: str
    imp_id: str
    bid_id: str
    campaign_id: str
    creative_id: str
    price: Decimal | None           # CPM in ``currency``
    currency: str
    cost_micros: int                # one impression in our currency, micro-dollars
    loss_code: int | None
    min_to_win: Decimal | None
    user_key: str

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.request_id}:{self.imp_id}:{self.bid_id}"


def _value(params: Mapping[str, str], name: str) -> str:
    v = params.get(name, "").strip()
    return "" if v.startswith("${") else v


def _required(params: Mapping[str, str], name: str, kind: str) -> str:
    raw = params.get(name, "").strip()
    if raw.startswith("${"):
        raise InvalidNotice(f"{kind} notice: parameter {name!r} still holds the macro "
                            f"{raw!r} (the exchange did not substitute it)")
    if not raw:
        raise InvalidNotice(f"{kind} notice: parameter {name!r} is missing")
    return raw


def parse_notice(kind: NoticeKind, params: Mapping[str, str], *, currency: str = "USD",
                 fx_rates: Mapping[str, float] | None = None) -> Notice:
    """Validate a notice's query parameters; :class:`InvalidNotice` names the problem."""
    if kind not in NOTICE_KINDS:
        raise InvalidNotice(f"unknown notice kind {kind!r}; known: {', '.join(NOTICE_KINDS)}")
    rid, imp = _required(params, "id", kind), _required(params, "imp", kind)
    bid, cid = _required(params, "bid", kind), _required(params, "cid", kind)
    crid = _value(params, "crid")
    cur = (_value(params, "cur") or currency).upper()
    price: Decimal | None = None
    cost = 0
    if kind != "loss":
        text = _required(params, "price", kind)
        try:
            cost = cpm_to_micros(text)
            price = Decimal(text)
        except InvalidAmount:
            raise InvalidNotice(f"{kind} notice: parameter 'price' must be a decimal CPM "
                                f">= 0, got {text[:40]!r}") from None
        if cur != currency.upper():
            rate = (fx_rates or {}).get(cur)
            if rate is None:
                raise InvalidNotice(f"{kind} notice: currency {cur!r} has no exchange rate "
                                    f"to {currency}")
            cost = cpm_to_micros(price * Decimal(str(rate)))
    loss_text, mtw_text = _value(params, "loss"), _value(params, "mtw")
    try:
        loss = int(loss_text) if loss_text else None
        mtw = Decimal(mtw_text) if mtw_text else None
    except (ValueError, ArithmeticError):
        raise InvalidNotice(f"{kind} notice: 'loss' must be an integer and 'mtw' a decimal, "
                            f"got {loss_text[:20]!r}, {mtw_text[:20]!r}") from None
    if mtw is not None and not mtw.is_finite():
        raise InvalidNotice(f"{kind} notice: 'mtw' must be finite")
    return Notice(kind=kind, request_id=rid, imp_id=imp, bid_id=bid, campaign_id=cid,
                  creative_id=crid, price=price, currency=cur, cost_micros=cost,
                  loss_code=loss, min_to_win=mtw, user_key=_value(params, "u")[:32])


# --------------------------------------------------------------------------- dedupe


@runtime_checkable
class NoticeDedupe(Protocol):
    def first(self, key: str) -> bool:
        """True the first time ``key`` is seen (within the TTL); marks it seen."""
        ...

    def forget(self, key: str) -> None: ...


class InMemoryNoticeDedupe:
    """A TTL set bounded to ``max_keys`` (oldest dropped first); one process."""

    def __init__(self, *, ttl_s: float = 3 * 86400, max_keys: int = 2_000_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._ttl, self._max, self._clock = ttl_s, max_keys, clock
        self._lock = threading.Lock()

    def first(self, key: str) -> bool:
        now = self._clock()
        with self._lock:
            seen = self._seen
            while seen:
                k, exp = next(iter(seen.items()))
                if exp > now and len(seen) < self._max:
                    break
                seen.popitem(last=False)
            if key in seen and seen[key] > now:
                return False
            seen[key] = now + self._ttl
            seen.move_to_end(key)
            return True

    def forget(self, key: str) -> None:
        with self._lock:
            self._seen.pop(key, None)


class RedisNoticeDedupe:
    """``SET <prefix>:notice:<key> 1 NX EX ttl``: shared by every process."""

    def __init__(self, client: redis.Redis, *, prefix: str = "adp",
                 ttl_s: int = 3 * 86400) -> None:
        self._r, self._prefix, self._ttl = client, prefix, ttl_s

    def first(self, key: str) -> bool:
        import redis as redis_lib

        try:
            return bool(self._r.set(f"{self._prefix}:notice:{key}", 1, nx=True, ex=self._ttl))
        except (redis_lib.ConnectionError, redis_lib.TimeoutError) as exc:
            raise NoticeStoreUnavailable(f"notice dedupe store unreachable: {exc}") from exc

    def forget(self, key: str) -> None:
        import redis as redis_lib

        try:
            self._r.delete(f"{self._prefix}:notice:{key}")
        except (redis_lib.ConnectionError, redis_lib.TimeoutError) as exc:
            raise NoticeStoreUnavailable(f"notice dedupe store unreachable: {exc}") from exc


# --------------------------------------------------------------------------- log

_TS = pa.timestamp("us", tz="UTC")

#: Proposed event-log table ``notices`` (for :data:`adplatform.eventlog.SCHEMAS`).
NOTICE_SCHEMA = pa.schema([
    ("ts", _TS), ("kind", pa.string()),            # win | billing | loss
    ("request_id", pa.string()), ("imp_id", pa.string()), ("bid_id", pa.string()),
    ("campaign_id", pa.string()), ("creative_id", pa.string()),
    ("price", pa.float64()),                       # CPM as sent, in `currency`; null: loss
    ("currency", pa.string()),
    ("cost_micros", pa.int64()),                   # billing: paid, our currency, µ$; else 0
    ("loss_code", pa.int32()), ("min_to_win", pa.float64()),
])


@dataclass(slots=True)
class NoticeRecord:
    ts: datetime
    kind: str
    request_id: str
    imp_id: str
    bid_id: str
    campaign_id: str
    creative_id: str
    price: float | None
    currency: str
    cost_micros: int
    loss_code: int | None
    min_to_win: float | None


NOTICE_COLUMNS = tuple(f.name for f in fields(NoticeRecord))


def notices_table(rows: Sequence[NoticeRecord]) -> pa.Table:
    return pa.table({c: pa.array([getattr(r, c) for r in rows],
                                 type=NOTICE_SCHEMA.field(c).type)
                     for c in NOTICE_COLUMNS}, schema=NOTICE_SCHEMA)


def encode_notice(r: NoticeRecord) -> bytes:
    """One notice as the part writer's row encoding (:mod:`adplatform.partwriter`)."""
    return encode_row((timestamp_us(r.ts), r.kind, r.request_id, r.imp_id, r.bid_id,
                       r.campaign_id, r.creative_id, r.price, r.currency, r.cost_micros,
                       r.loss_code, r.min_to_win))


def write_encoded_notices(root: Path, table: str, blob: bytes, part: int) -> list[Path]:
    """Encoded notices (joined with ``b","``) as part ``part`` (the part writer calls
    this in its child process; ``table`` is ``"notices"``)."""
    return _write_table(root, rows_table(NOTICE_SCHEMA, blob), part)


def _write_table(root: Path, tbl: pa.Table, part: int) -> list[Path]:
    """``<root>/notices/date=YYYY-MM-DD/part-NNNNN.parquet``, sorted, one file per day."""
    if tbl.num_rows == 0:
        return []
    tbl = tbl.sort_by([("ts", "ascending"), ("request_id", "ascending"),
                       ("imp_id", "ascending"), ("kind", "ascending")])
    days = pc.strftime(tbl.column("ts"), format="%Y-%m-%d")
    out: list[Path] = []
    for day in sorted(pc.unique(days).to_pylist()):
        path = root / "notices" / f"date={day}" / f"part-{part:05d}.parquet"
        write_parquet(tbl.filter(pc.equal(days, day)), path, compression="zstd")
        out.append(path)
    return out


class NoticeSink(Protocol):
    def extend(self, rows: Sequence[NoticeRecord]) -> None: ...

    def close(self) -> None: ...


class MemoryNoticeSink:
    def __init__(self) -> None:
        self.records: list[NoticeRecord] = []
        self._lock = threading.Lock()

    def extend(self, rows: Sequence[NoticeRecord]) -> None:
        with self._lock:
            self.records.extend(rows)

    def close(self) -> None:
        """Nothing buffered."""


class ParquetNoticeSink(EncodedPartWriter[NoticeRecord]):
    """Notices to parquet, buffered and written by a child process by default (see
    :class:`decisioning.buffered.EncodedPartWriter`)."""

    table = "notices"
    what = "notice"
    encoded_writer = "decisioning.notices:write_encoded_notices"

    def _encode_row(self, row: NoticeRecord) -> bytes:
        return encode_notice(row)


# --------------------------------------------------------------------------- service


@dataclass(frozen=True, slots=True)
class NoticeResult:
    status: Literal["recorded", "duplicate"]
    notice: Notice


class NoticeService:
    """Applies notices to the budget ledger and frequency counters; logs them once."""

    def __init__(self, *, ledger: BudgetLedger, dedupe: NoticeDedupe, sink: NoticeSink,
                 frequency: FrequencyCounter | None = None, clock: Clock | None = None,
                 currency: str = "USD", fx_rates: Mapping[str, float] | None = None) -> None:
        self.ledger, self.dedupe, self.sink, self.frequency = ledger, dedupe, sink, frequency
        self.clock: Clock = clock or SystemClock()
        self.currency, self.fx_rates = currency, dict(fx_rates or {})
        self._lock = threading.Lock()
        self._stats: dict[str, int] = {}
        self.spend_micros: dict[str, int] = {}     # settled by this process, per campaign

    def _count(self, key: str) -> None:
        with self._lock:
            self._stats[key] = self._stats.get(key, 0) + 1

    def stats(self) -> dict[str, int]:
        """``<kind>.recorded``, ``<kind>.duplicate``, ``invalid``, ``unavailable``,
        ``frequency_unavailable``."""
        with self._lock:
            return dict(self._stats)

    def handle(self, kind: NoticeKind, params: Mapping[str, str]) -> NoticeResult:
        try:
            n = parse_notice(kind, params, currency=self.currency, fx_rates=self.fx_rates)
        except InvalidNotice:
            self._count("invalid")
            raise
        try:
            if not self.dedupe.first(n.key):
                self._count(f"{kind}.duplicate")
                return NoticeResult("duplicate", n)
        except NoticeStoreUnavailable:
            self._count("unavailable")
            raise
        now = self.clock.now()
        try:
            if kind == "billing":
                self.ledger.settle(n.campaign_id, n.bid_id, n.cost_micros, now.date())
            elif kind == "loss":
                self.ledger.release(n.campaign_id, n.bid_id)
        except BudgetUnavailable as exc:
            self._count("unavailable")
            self.dedupe.forget(n.key)           # the exchange's retry must count
            raise NoticeStoreUnavailable(str(exc)) from exc
        if kind == "billing":
            with self._lock:
                self.spend_micros[n.campaign_id] = \
                    self.spend_micros.get(n.campaign_id, 0) + n.cost_micros
            if self.frequency is not None and n.user_key:
                try:
                    self.frequency.increment(n.user_key, n.campaign_id, now.date())
                except FrequencyUnavailable:
                    self._count("frequency_unavailable")
                    log.warning("frequency counter unavailable; impression not counted")
        self.sink.extend([NoticeRecord(
            ts=now, kind=kind, request_id=n.request_id, imp_id=n.imp_id, bid_id=n.bid_id,
            campaign_id=n.campaign_id, creative_id=n.creative_id,
            price=float(n.price) if n.price is not None else None, currency=n.currency,
            cost_micros=n.cost_micros if kind == "billing" else 0, loss_code=n.loss_code,
            min_to_win=float(n.min_to_win) if n.min_to_win is not None else None)])
        self._count(f"{kind}.recorded")
        return NoticeResult("recorded", n)

    def start(self) -> None:
        """Start the notice log's writer process (see :meth:`DecisionEngine.start`)."""
        if isinstance(self.sink, StartableSink):
            self.sink.start()

    def close(self) -> None:
        self.sink.close()


__all__ = [
    "NOTICE_COLUMNS", "NOTICE_KINDS", "NOTICE_SCHEMA", "InMemoryNoticeDedupe",
    "InvalidNotice", "MemoryNoticeSink", "Notice", "NoticeDedupe", "NoticeRecord",
    "NoticeResult", "NoticeService", "NoticeSink", "NoticeStoreUnavailable", "NoticeUrls",
    "ParquetNoticeSink", "RedisNoticeDedupe", "encode_notice", "notices_table", "parse_notice",
    "write_encoded_notices",
]

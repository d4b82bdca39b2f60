"""Daily spend per campaign, in integer micro-dollars, behind :class:`BudgetLedger`.

Money never travels as a float sum: prices arrive as decimal text (``${AUCTION_PRICE}``,
a CPM) and become integer micro-dollars per impression with :func:`cpm_to_micros`
(exact: CPM × 1000, rounded half-up to the micro); ledgers add integers.

The budget life of a bid::

    bid      reserve(campaign, bid id, bid price)   atomic: refused past the budget
    billing  settle(campaign, bid id, paid price)   reservation → spend (paid ≤ bid)
    loss     release(campaign, bid id)              reservation dropped
    silence  the reservation expires after ``reservation_ttl_s``

``committed_micros`` (spend today + live reservations) is what candidate selection
compares with the daily budget; the hard check is inside :meth:`BudgetLedger.reserve`:
a reservation is refused once commitments reached the budget, so a day's spend passes
its budget by at most one impression's price (the reservation that crossed it).
When no notices are configured the engine spends at bid time instead
(``reserve(..., spend=True)``: the bid price is charged at once, pessimistic).

:class:`InMemoryBudgetLedger` is one process's view (embedded profile);
:class:`decisioning.redis_budget.RedisBudgetLedger` shares it between processes.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable
from datetime import date
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Protocol, runtime_checkable

from decisioning.clock import Clock, SystemClock
from decisioning.errors import DecisionError

MICROS_PER_DOLLAR = 1_000_000
DEFAULT_RESERVATION_TTL_S = 120.0


class BudgetUnavailable(DecisionError):
    """The shared ledger cannot be reached; budgeted bids are refused (fail closed)."""


class InvalidAmount(DecisionError):
    """A price or amount that is not a finite, non-negative decimal number."""


def _decimal(amount: Decimal | str | int | float) -> Decimal:
    try:
        # str() of a float is its shortest repr: 0.1 stays 0.1, not 0.1000000000000000055.
        d = amount if isinstance(amount, Decimal) else Decimal(str(amount).strip())
    except InvalidOperation:
        raise InvalidAmount(f"not a decimal amount: {amount!r}") from None
    if not d.is_finite() or d < 0:
        raise InvalidAmount(f"amount must be finite and >= 0, got {amount!r}")
    return d


def to_micros(dollars: Decimal | str | int | float) -> int:
    """Dollars → integer micro-dollars, half-up."""
    return int((_decimal(dollars) * MICROS_PER_DOLLAR).to_integral_value(ROUND_HALF_UP))


def cpm_to_micros(cpm: Decimal | str | int | float) -> int:
    """A CPM price → the cost of one impression in micro-dollars (CPM / 1000 dollars)."""
    return int((_decimal(cpm) * 1000).to_integral_value(ROUND_HALF_UP))


def micros_to_dollars(micros: int) -> Decimal:
    return Decimal(micros) / MICROS_PER_DOLLAR


@runtime_checkable
class BudgetLedger(Protocol):
    """Spend per (campaign, UTC day) and live reservations, in micro-dollars."""

    def spent(self, campaign_id: str, day: date) -> float:
        """Settled spend in dollars (a float view for reports; sums use micros)."""
        ...

    def charge(self, campaign_id: str, amount: float, day: date) -> None:
        """Add ``amount`` dollars of spend without a reservation."""
        ...

    def spent_micros(self, campaign_id: str, day: date) -> int: ...

    def committed_micros(self, campaign_id: str, day: date) -> int:
        """Spend plus live reservations; cheap (may be a recent snapshot)."""
        ...

    def reserve(self, campaign_id: str, key: str, amount_micros: int, day: date, *,
                budget_micros: int | None, spend: bool = False) -> bool:
        """Reserve (or, with ``spend``, charge) unless that passes ``budget_micros``.

        Idempotent per ``key``. Raises :class:`BudgetUnavailable` when unreachable.
        """
        ...

    def settle(self, campaign_id: str, key: str, amount_micros: int, day: date) -> int:
        """Drop ``key``'s reservation (if live) and add the paid amount; returns spend."""
        ...

    def release(self, campaign_id: str, key: str) -> None: ...

    def close(self) -> None: ...


class CommittedSnapshot:
    """A shared ledger's commitments (spend + live reservations, µ$) per campaign-day as
    last read from its store: what candidate selection compares with budgets without
    waiting on the store. The ledger's background thread re-reads :meth:`tracked` and
    stores the result with :meth:`replace`; the first ask for a campaign-day returns 0
    and starts tracking it (``on_track`` is called then: e.g. start that thread); only
    the newest day asked about stays tracked; a reservation this process made counts at
    once (:meth:`add`), before the next refresh."""

    def __init__(self, on_track: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, date], int] = {}
        self._tracked: set[tuple[str, date]] = set()
        self._on_track = on_track

    def committed(self, campaign_id: str, day: date) -> int:
        key = (campaign_id, day)
        value = self._values.get(key)
        if value is None:
            with self._lock:
                self._tracked.add(key)
                self._values.setdefault(key, 0)
                if self._on_track is not None:
                    self._on_track()
            return 0
        return value

    def tracked(self) -> list[tuple[str, date]]:
        """The campaign-days to re-read (those of the newest day asked about), sorted."""
        with self._lock:
            today = max((d for _, d in self._tracked), default=None)
            self._tracked = {k for k in self._tracked if k[1] == today}
            return sorted(self._tracked)

    def replace(self, values: dict[tuple[str, date], int]) -> None:
        self._values = values

    def add(self, campaign_id: str, day: date, micros: int) -> None:
        """Count this process's new reservation now (if the campaign-day is tracked)."""
        values, key = self._values, (campaign_id, day)
        if key in values:
            values[key] = values[key] + micros


class InMemoryBudgetLedger:
    """Thread-safe in-process ledger; keeps spend for the most recent day charged."""

    def __init__(self, *, clock: Clock | None = None,
                 reservation_ttl_s: float = DEFAULT_RESERVATION_TTL_S) -> None:
        if reservation_ttl_s <= 0:
            raise ValueError("reservation_ttl_s must be > 0")
        self._clock = clock or SystemClock()
        self._ttl = reservation_ttl_s
        self._lock = threading.Lock()
        self._day: date | None = None
        self._spent: dict[str, int] = {}
        self._resv: dict[str, dict[str, tuple[int, float]]] = {}   # cid -> key -> (µ$, exp)
        self._heap: dict[str, list[tuple[float, str]]] = {}
        self._reserved: dict[str, int] = {}

    # -- reads
    def spent_micros(self, campaign_id: str, day: date) -> int:
        return self._spent.get(campaign_id, 0) if day == self._day else 0

    def spent(self, campaign_id: str, day: date) -> float:
        return self.spent_micros(campaign_id, day) / MICROS_PER_DOLLAR

    def committed_micros(self, campaign_id: str, day: date) -> int:
        heap = self._heap.get(campaign_id)
        if heap and heap[0][0] <= self._clock.monotonic():
            with self._lock:
                self._purge(campaign_id)
        return self.spent_micros(campaign_id, day) + self._reserved.get(campaign_id, 0)

    def reserved_micros(self, campaign_id: str) -> int:
        with self._lock:
            self._purge(campaign_id)
            return self._reserved.get(campaign_id, 0)

    # -- writes (under the lock)
    def _purge(self, campaign_id: str) -> None:
        heap = self._heap.get(campaign_id)
        now = self._clock.monotonic()
        resv = self._resv.get(campaign_id, {})
        while heap and heap[0][0] <= now:
            exp, key = heapq.heappop(heap)
            item = resv.get(key)
            if item is not None and item[1] == exp:
                del resv[key]
                self._reserved[campaign_id] -= item[0]

    def _roll(self, day: date) -> bool:
        """Move to ``day``; False for a day before the current one (closed)."""
        if day == self._day:
            return True
        if self._day is not None and day < self._day:
            return False
        self._day, self._spent = day, {}
        return True

    def _drop(self, campaign_id: str, key: str) -> None:
        item = self._resv.get(campaign_id, {}).pop(key, None)
        if item is not None:
            self._reserved[campaign_id] -= item[0]

    def charge(self, campaign_id: str, amount: float, day: date) -> None:
        micros = to_micros(amount)
        with self._lock:
            if self._roll(day):
                self._spent[campaign_id] = self._spent.get(campaign_id, 0) + micros

    def reserve(self, campaign_id: str, key: str, amount_micros: int, day: date, *,
                budget_micros: int | None, spend: bool = False) -> bool:
        if amount_micros < 0:
            raise InvalidAmount(f"reservation must be >= 0, got {amount_micros}")
        with self._lock:
            if not self._roll(day):
                return False
            self._purge(campaign_id)
            resv = self._resv.setdefault(campaign_id, {})
            if key in resv:
                return True
            committed = self._spent.get(campaign_id, 0) + self._reserved.get(campaign_id, 0)
            if budget_micros is not None and committed >= budget_micros:
                return False
            if spend:
                self._spent[campaign_id] = self._spent.get(campaign_id, 0) + amount_micros
                return True
            exp = self._clock.monotonic() + self._ttl
            resv[key] = (amount_micros, exp)
            heapq.heappush(self._heap.setdefault(campaign_id, []), (exp, key))
            self._reserved[campaign_id] = self._reserved.get(campaign_id, 0) + amount_micros
            return True

    def settle(self, campaign_id: str, key: str, amount_micros: int, day: date) -> int:
        if amount_micros < 0:
            raise InvalidAmount(f"spend must be >= 0, got {amount_micros}")
        with self._lock:
            self._drop(campaign_id, key)
            if not self._roll(day):
                return 0
            total = self._spent.get(campaign_id, 0) + amount_micros
            self._spent[campaign_id] = total
            return total

    def release(self, campaign_id: str, key: str) -> None:
        with self._lock:
            self._drop(campaign_id, key)

    def close(self) -> None:
        """Nothing to release."""


__all__ = ["DEFAULT_RESERVATION_TTL_S", "MICROS_PER_DOLLAR", "BudgetLedger",
           "BudgetUnavailable", "CommittedSnapshot", "InMemoryBudgetLedger", "InvalidAmount",
           "cpm_to_micros", "micros_to_dollars", "to_micros"]

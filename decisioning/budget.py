"""Daily spend per campaign, behind :class:`BudgetLedger`.

:class:`InMemoryBudgetLedger` is one process's view. With N decision processes a
shared ledger (Redis ``INCRBYFLOAT`` per campaign-day, or a PostgreSQL table) takes its
place behind the same two methods.
"""

from __future__ import annotations

import threading
from datetime import date
from typing import Protocol, runtime_checkable


@runtime_checkable
class BudgetLedger(Protocol):
    """Spend per (campaign, UTC day), in the bid currency (not CPM: price / 1000)."""

    def spent(self, campaign_id: str, day: date) -> float: ...

    def charge(self, campaign_id: str, amount: float, day: date) -> None: ...


class InMemoryBudgetLedger:
    """Thread-safe in-process ledger; keeps only the most recent day it was charged for."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._day: date | None = None
        self._spent: dict[str, float] = {}

    def spent(self, campaign_id: str, day: date) -> float:
        # A dict read is atomic under the GIL; writers swap the day under the lock.
        if day != self._day:
            return 0.0
        return self._spent.get(campaign_id, 0.0)

    def charge(self, campaign_id: str, amount: float, day: date) -> None:
        with self._lock:
            if day != self._day:
                if self._day is not None and day < self._day:
                    return      # a late charge for a closed day changes nothing today
                self._day = day
                self._spent = {}
            self._spent[campaign_id] = self._spent.get(campaign_id, 0.0) + amount


__all__ = ["BudgetLedger", "InMemoryBudgetLedger"]

"""Daily pacing: spread a campaign's budget over the UTC day.

By time ``t`` a campaign should have committed about ``budget × F(t)``, where ``F`` is
the share of the day's expected traffic that has arrived by ``t`` (from 24 hourly
weights; uniform by default, linear inside an hour). A campaign ahead of that curve is
throttled: it takes part in an auction with probability

    p = clip((budget × F(t) + allowance − committed) / allowance, 0, 1),
    allowance = slack × budget

so on or behind the curve it always bids, and ``allowance`` ahead of it it stops until
the curve catches up. Stateless: every process computes the same ``p`` from the shared
committed spend (see :mod:`decisioning.budget`), with its own random draw.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import datetime

from adplatform.errors import ConfigError


class Pacer:
    """Throttle probability from committed spend against the expected-traffic curve."""

    def __init__(self, hourly_shares: Sequence[float] | None = None, *, slack: float = 0.05,
                 seed: int | None = None) -> None:
        shares = list(hourly_shares) if hourly_shares is not None else [1.0] * 24
        if len(shares) != 24 or any(s < 0 for s in shares) or sum(shares) <= 0:
            raise ConfigError("Pacer: hourly_shares needs 24 non-negative weights, sum > 0")
        if not 0.0 < slack <= 1.0:
            raise ConfigError(f"Pacer: slack must be in (0, 1], got {slack}")
        total = sum(shares)
        self._share = [s / total for s in shares]
        self._cum = [sum(self._share[:h]) for h in range(24)]
        self.slack = slack
        self._rng = random.Random(seed)

    def expected_fraction(self, now: datetime) -> float:
        """F(now): the share of the UTC day's expected traffic before ``now``."""
        h = now.hour
        within = (now.minute * 60 + now.second + now.microsecond / 1e6) / 3600.0
        return min(1.0, self._cum[h] + self._share[h] * within)

    def pass_probability(self, committed_micros: int, budget_micros: int,
                         now: datetime) -> float:
        if budget_micros <= 0:
            return 0.0
        allowance = self.slack * budget_micros
        target = budget_micros * self.expected_fraction(now)
        return min(1.0, max(0.0, (target + allowance - committed_micros) / allowance))

    def allow(self, committed_micros: int, budget_micros: int, now: datetime) -> bool:
        p = self.pass_probability(committed_micros, budget_micros, now)
        return p >= 1.0 or (p > 0.0 and self._rng.random() < p)


__all__ = ["Pacer"]

"""Errors raised on purpose by the simulator."""

from __future__ import annotations

from adplatform.errors import AdPlatformError


class SimulationError(AdPlatformError):
    """Bad simulator configuration or misuse of the simulated exchange."""


class InvalidBid(SimulationError):
    """A bid the simulated exchange rejects; the exchange then treats it as no bid."""


__all__ = ["InvalidBid", "SimulationError"]

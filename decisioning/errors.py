"""Decisioning errors: one root, :class:`DecisionError`, under :class:`AdPlatformError`."""

from __future__ import annotations

from collections.abc import Sequence

from adplatform.errors import AdPlatformError


class DecisionError(AdPlatformError):
    """Root of every error the decision service raises on purpose."""


class InvalidRequest(DecisionError):
    """A bid request that cannot be decided on; the HTTP app answers 400.

    ``problems`` lists ``(path, message)`` pairs, ``path`` like ``imp[0].banner.w``.
    """

    def __init__(self, message: str, problems: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.problems: tuple[tuple[str, str], ...] = tuple(problems) or (("", message),)


class CampaignError(DecisionError):
    """The campaign file is missing or invalid; the message names the file and field."""


__all__ = ["CampaignError", "DecisionError", "InvalidRequest"]

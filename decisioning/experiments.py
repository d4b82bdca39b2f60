"""Experiments: variants choosing model alias sets and bidding policies, and shadows.

A unit (the user id when the request may be personalised, otherwise the request id)
is hashed with the experiment's salt into [0, 1); cumulative variant weights pick the
variant, so a user stays in one variant for the life of the salt and a new salt
re-randomises everyone. The variant names:

* ``models``: the key of the engine's backend for an alias set (``"champion"``,
  ``"challenger"``; ``"default"`` is the engine's ``models``);
* ``policy``: a :class:`~decisioning.pricing.BidPricer` (None: the engine's);
* ``shadow``: an alias set scored on the same inputs *after* the answer, in a
  background thread, and logged to the shadow sink (what it would have bid), never
  used for the bid.

The variant's name is written to every decision record (``variant``); shadow records
carry ``<variant>:shadow:<alias set>``.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from adplatform.errors import ConfigError
from decisioning.pricing import BidPricer

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Variant:
    name: str
    weight: float = 1.0
    models: str = "default"
    policy: BidPricer | None = None
    shadow: str | None = None


class Experiment:
    """Deterministic salted assignment of units to weighted variants."""

    def __init__(self, name: str, variants: Sequence[Variant], *, salt: str | None = None
                 ) -> None:
        if not variants:
            raise ConfigError(f"experiment {name!r} needs at least one variant")
        names = [v.name for v in variants]
        if len(set(names)) != len(names) or not all(names):
            raise ConfigError(f"experiment {name!r}: variant names must be unique and set")
        if any(v.weight < 0 for v in variants) or sum(v.weight for v in variants) <= 0:
            raise ConfigError(f"experiment {name!r}: weights must be >= 0 and sum > 0")
        self.name = name
        self.salt = salt if salt is not None else name
        self.variants = tuple(variants)
        total = sum(v.weight for v in variants)
        acc, cuts = 0.0, []
        for v in variants:
            acc += v.weight / total
            cuts.append(acc)
        cuts[-1] = 1.0
        self._cuts = tuple(cuts)
        self._key = self.salt.encode()[:64]

    def bucket(self, unit: str) -> float:
        """The unit's position in [0, 1) for this salt."""
        h = hashlib.blake2b(unit.encode(), digest_size=8, key=self._key).digest()
        return int.from_bytes(h, "big") / 2.0**64

    def assign(self, unit: str) -> Variant:
        b = self.bucket(unit)
        for v, cut in zip(self.variants, self._cuts, strict=True):
            if b < cut:
                return v
        return self.variants[-1]


class ShadowRunner(Generic[T]):
    """One background thread running ``work`` on submitted jobs; a full queue drops.

    ``submit`` never blocks the request path. :meth:`drain` waits until every submitted
    job ran (tests, shutdown); :meth:`close` drains and stops the thread.
    """

    def __init__(self, work: Callable[[T], None], *, maxsize: int = 10_000) -> None:
        self._work = work
        self._q: queue.Queue[T | None] = queue.Queue(maxsize)
        self.dropped = 0
        self.failed = 0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, job: T) -> bool:
        if self._closed:
            return False
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="shadow-scoring",
                                                    daemon=True)
                    self._thread.start()
        try:
            self._q.put_nowait(job)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def _run(self) -> None:
        while True:
            job = self._q.get()
            try:
                if job is None:
                    return
                self._work(job)
            except Exception:  # noqa: BLE001 - a shadow failure never touches real bids
                self.failed += 1
                log.warning("shadow scoring failed", exc_info=True)
            finally:
                self._q.task_done()

    def drain(self) -> None:
        if self._thread is not None:
            self._q.join()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(timeout=30)


__all__ = ["Experiment", "ShadowRunner", "Variant"]

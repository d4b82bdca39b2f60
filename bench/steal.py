"""CPU time the hypervisor took from this machine while a benchmark measured (steal).

On a virtual machine the host may run something else on the physical CPU behind a
vCPU while the guest has work for it. The guest's kernel counts that time as *steal*:
the 8th number of the ``cpu`` lines of ``/proc/stat``, in ticks of ``USER_HZ`` (1/100
s), which KVM reports through its steal-time interface. To a benchmark it looks like a
server that stopped: its answers wait, the load generator's requests pile up behind
them and the backlog drains afterwards, so a few hundred milliseconds of steal decide a
10 s run's p99. Steal is the host's doing, not the code's, and the guest cannot prevent
it; it can only be measured beside every result.

:class:`StealMonitor` samples the kernel's counters in a thread of the benchmark's own
process (not the load generator's, not the server's) every ``interval_s``.
:meth:`StealMonitor.between` gives a run's share of steal (from its start to its end on
``time.perf_counter``, which is ``CLOCK_MONOTONIC``: the same clock in the generator's
process) and the highest share over any ``window_s`` inside it. Shares are of all the
machine's CPU time (every CPU's ticks), so 50% on a 2-vCPU machine is a whole vCPU.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

PROC_STAT = Path("/proc/stat")
# The ``cpu`` line's first 8 numbers: user nice system idle iowait irq softirq steal.
# guest and guest_nice (9th and 10th) are already inside user and nice.
_FIELDS = 8
_STEAL = 7

Ticks = tuple[int, ...]


def read_ticks(path: Path = PROC_STAT) -> Ticks | None:
    """The machine's CPU time so far (all CPUs), in ticks: the first 8 numbers of the
    ``cpu`` line of ``/proc/stat``; None where there is no such file (not Linux)."""
    try:
        with path.open() as f:
            line = f.readline()
    except OSError:
        return None
    parts = line.split()
    if len(parts) < _FIELDS + 1 or parts[0] != "cpu":
        raise ValueError(f"{path}: unexpected first line {line.strip()!r}")
    return tuple(int(x) for x in parts[1:_FIELDS + 1])


def steal_share(before: Ticks, after: Ticks) -> float | None:
    """Steal as a share (0-1) of all CPU time between two readings; None when no tick
    passed."""
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(delta)
    return delta[_STEAL] / total if total > 0 else None


def steal_pct(before: Ticks | None, after: Ticks | None) -> float | None:
    """:func:`steal_share` in %, from two :func:`read_ticks` readings; None when either
    is missing (not Linux) or no tick passed."""
    if before is None or after is None:
        return None
    share = steal_share(before, after)
    return None if share is None else 100.0 * share


@dataclass(frozen=True)
class Steal:
    """Steal over one run, in % of all the machine's CPU time."""

    pct: float          # over the whole run
    peak_pct: float     # over its worst window of ``window_s``
    window_s: float


class StealMonitor:
    """Samples ``/proc/stat`` every ``interval_s`` in a daemon thread between
    :meth:`start` and :meth:`stop` (or for a ``with`` block)."""

    def __init__(self, *, interval_s: float = 0.1, window_s: float = 0.5,
                 path: Path = PROC_STAT,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if interval_s <= 0 or window_s < interval_s:
            raise ValueError(f"need 0 < interval_s <= window_s, got {interval_s}, {window_s}")
        self.interval_s = interval_s
        self.window_s = window_s
        self._path = path
        self._clock = clock
        self._samples: list[tuple[float, Ticks]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def samples(self) -> list[tuple[float, Ticks]]:
        """(clock, ticks) readings so far, oldest first (a copy)."""
        return list(self._samples)

    def sample(self) -> None:
        """Take one reading now (the thread calls this; tests may too)."""
        ticks = read_ticks(self._path)
        if ticks is not None:
            self._samples.append((self._clock(), ticks))

    def start(self) -> None:
        if self._thread is not None:
            return
        taken = len(self._samples)
        self.sample()
        if len(self._samples) == taken:
            logger.info("no %s: steal is not measured", self._path)
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="steal-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> StealMonitor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def between(self, start: float, end: float) -> Steal | None:
        """Steal from ``start`` to ``end`` (the monitor's clock): from the last reading
        at or before ``start`` to the first at or after ``end``, so the run is covered
        (plus up to ``interval_s`` each side); None without such readings."""
        samples = self._samples
        first = max((i for i, (t, _) in enumerate(samples) if t <= start), default=None)
        last = min((i for i, (t, _) in enumerate(samples) if t >= end), default=None)
        if first is None or last is None or last <= first:
            return None
        whole = steal_share(samples[first][1], samples[last][1])
        if whole is None:
            return None
        peak = 0.0
        j = first
        for i in range(first, last):
            # The first reading at least window_s after reading i (or the run's last).
            j = max(j, i + 1)
            while j < last and samples[j][0] - samples[i][0] < self.window_s:
                j += 1
            share = steal_share(samples[i][1], samples[j][1])
            if share is not None:
                peak = max(peak, share)
            if j == last:
                break
        return Steal(pct=100.0 * whole, peak_pct=100.0 * max(peak, whole),
                     window_s=self.window_s)


__all__ = ["PROC_STAT", "Steal", "StealMonitor", "Ticks", "read_ticks", "steal_pct",
           "steal_share"]

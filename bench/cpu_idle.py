"""The CPUs' idle policy while a benchmark measures, and a request to keep them awake.

An idle CPU that halts takes time to wake up. The load generator sleeps until each
request's due time and until each reply; the server sleeps between requests. Every
wake-up of a halted CPU is charged to the server's latency: the generator's send lag
is inside each latency (measured from the due time), and so is the server's wake-up.
On a virtual machine that halts its vCPUs the moment they idle (the project's 2-vCPU
bench VM: KVM, cpuidle driver ``haltpoll`` with ``guest_halt_poll_ns=0``), such a
wake-up goes through the hypervisor (what it cost the decision suite's rows: README,
Benchmarks).

:class:`CpuLatencyRequest` holds a CPU latency request through the kernel's PM QoS
interface: a 32-bit number of microseconds written to ``/dev/cpu_dma_latency``. The
request lasts while the file stays open; the kernel drops it when the file is closed
or the process exits. With 0 µs the idle loop polls instead of halting. Latency-tuned
hosts hold a request of this kind (tuned's ``latency-performance`` profile, its
``force_latency``); cyclictest holds 0 µs while it measures. The idle loop gives way
to any runnable task, but a polling CPU keeps the host's CPU busy, so the request is
held only while a benchmark measures.

It needs write access to the device (root). Without it the request is not held, and
:attr:`CpuLatencyRequest.status` says why.
"""

from __future__ import annotations

import argparse
import logging
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

QOS_DEVICE = Path("/dev/cpu_dma_latency")
_CPUIDLE = Path("/sys/devices/system/cpu/cpuidle")
_HALT_POLL = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")


class CpuLatencyRequest:
    """A PM QoS CPU latency request of ``max_latency_us``, held between :meth:`hold`
    and :meth:`release` (or for a ``with`` block)."""

    def __init__(self, max_latency_us: int = 0, device: Path = QOS_DEVICE) -> None:
        if max_latency_us < 0:
            raise ValueError(f"max_latency_us must be >= 0, got {max_latency_us}")
        self.max_latency_us = max_latency_us
        self.device = device
        self._fd: int | None = None
        self._error = ""

    @property
    def held(self) -> bool:
        return self._fd is not None

    @property
    def status(self) -> str:
        """``"held: 0 us"``, ``"not held"`` or ``"unavailable: <reason>"``."""
        if self._fd is not None:
            return f"held: {self.max_latency_us} us"
        return f"unavailable: {self._error}" if self._error else "not held"

    def hold(self) -> bool:
        """Open the device and write the request; False (logged) when it cannot."""
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.device, os.O_WRONLY)
        except OSError as exc:
            self._error = f"{self.device}: {exc.strerror or exc}"
            logger.warning("CPU latency request not held (%s): benchmarks measure with the "
                           "machine's own idle policy", self._error)
            return False
        try:
            os.write(fd, struct.pack("=i", self.max_latency_us))
        except OSError as exc:
            os.close(fd)
            self._error = f"{self.device}: {exc.strerror or exc}"
            logger.warning("CPU latency request not held (%s)", self._error)
            return False
        self._fd, self._error = fd, ""
        return True

    def release(self) -> None:
        """Close the device: the kernel drops the request."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The machine's own idle policy for a block, then the request again (if it
        was held)."""
        was_held = self.held
        self.release()
        try:
            yield
        finally:
            if was_held:
                self.hold()

    def __enter__(self) -> CpuLatencyRequest:
        self.hold()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def add_argument(parser: argparse.ArgumentParser) -> None:
    """``--cpu-qos`` / ``--no-cpu-qos`` (default: hold the request while measuring)."""
    parser.add_argument("--cpu-qos", action=argparse.BooleanOptionalAction, default=True,
                        help="hold a 0 us CPU latency request while measuring (idle CPUs "
                             "poll instead of halting; needs root, else not held)")


@contextmanager
def measuring(hold: bool, device: Path = QOS_DEVICE) -> Iterator[CpuLatencyRequest]:
    """A request held for the block when ``hold`` (else never held), released after."""
    qos = CpuLatencyRequest(device=device)
    if hold:
        qos.hold()
    try:
        yield qos
    finally:
        qos.release()


def machine_record(qos: CpuLatencyRequest) -> dict[str, object]:
    """What a bench JSON file records of the idle policy: ``{"cpu_idle": {...}}``."""
    return {"cpu_idle": {**idle_policy(), "cpu_latency_request": qos.status}}


def idle_policy() -> dict[str, str]:
    """The machine's cpuidle driver and governor and, under ``haltpoll``, how long an
    idle vCPU polls before it halts (``""`` where the file is absent)."""
    def read(path: Path) -> str:
        try:
            return path.read_text().strip()
        except OSError:
            return ""

    return {"cpuidle_driver": read(_CPUIDLE / "current_driver"),
            "cpuidle_governor": read(_CPUIDLE / "current_governor"),
            "guest_halt_poll_ns": read(_HALT_POLL)}


__all__ = ["QOS_DEVICE", "CpuLatencyRequest", "add_argument", "idle_policy",
           "machine_record", "measuring"]

"""The CPU latency request the benchmarks hold, and the decision bench's rows without it.

The request is written to a stand-in file here: the tests check what is written and
when the file is open, not the kernel's PM QoS (which needs root and changes the
machine)."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import pytest

import bench.decision as decision
from bench.cpu_idle import CpuLatencyRequest, idle_policy, machine_record, measuring
from bench.harness import Row
from bench.loadgen import LoadResult


def _opened(path: Path) -> int:
    """How many of this process's file descriptors are open on ``path``."""
    fds = Path("/proc/self/fd")
    n = 0
    for fd in os.listdir(fds):
        try:
            n += os.readlink(fds / fd) == str(path)
        except OSError:
            continue                  # closed since the listing (the listing's own fd)
    return n


def test_hold_writes_the_request_and_keeps_the_device_open(tmp_path: Path) -> None:
    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    qos = CpuLatencyRequest(0, device=device)
    assert qos.status == "not held" and _opened(device) == 0
    assert qos.hold() and qos.held and qos.status == "held: 0 us"
    assert device.read_bytes() == struct.pack("=i", 0)       # a binary s32, as the kernel reads
    assert _opened(device) == 1                              # the request lasts while open
    assert qos.hold()                                        # idempotent: no second file
    assert _opened(device) == 1
    qos.release()
    assert not qos.held and _opened(device) == 0


def test_a_device_that_cannot_be_opened_is_reported_not_raised(tmp_path: Path) -> None:
    qos = CpuLatencyRequest(0, device=tmp_path / "missing")
    assert not qos.hold()
    assert not qos.held and qos.status.startswith("unavailable: ")
    with qos.paused():                                        # nothing to pause or take back
        assert not qos.held
    assert not qos.held


def test_paused_releases_for_the_block_then_holds_again(tmp_path: Path) -> None:
    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    with CpuLatencyRequest(5, device=device) as qos:
        assert device.read_bytes() == struct.pack("=i", 5)
        with qos.paused():
            assert not qos.held
        assert qos.held
    assert not qos.held


def test_negative_latency_is_refused() -> None:
    with pytest.raises(ValueError, match="max_latency_us"):
        CpuLatencyRequest(-1)


def test_measuring_holds_for_the_block_only_when_asked(tmp_path: Path) -> None:
    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    with pytest.raises(RuntimeError), measuring(True, device=device) as qos:
        assert qos.held and _opened(device) == 1
        assert machine_record(qos)["cpu_idle"]["cpu_latency_request"] == "held: 0 us"  # type: ignore[index]
        raise RuntimeError("a suite failed")
    assert not qos.held and _opened(device) == 0        # released on the way out
    with measuring(False, device=device) as qos:
        assert not qos.held and _opened(device) == 0
        assert machine_record(qos)["cpu_idle"]["cpu_latency_request"] == "not held"  # type: ignore[index]


def test_idle_policy_names_its_fields() -> None:
    assert set(idle_policy()) == {"cpuidle_driver", "cpuidle_governor", "guest_halt_poll_ns"}


class _Server:
    def settle(self) -> float:
        return 0.0


def _result(p50_ms: float) -> LoadResult:
    res = LoadResult(rate=1000.0, duration_s=0.1, sent=100)
    res.latencies_ms = [p50_ms] * 100
    res.status_each = [200] * 100
    res.due_s = [i / res.rate for i in range(100)]
    res.from_send_ms = list(res.latencies_ms)          # sent on time
    return res


def test_idle_policy_rows_run_with_the_request_released(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    qos = CpuLatencyRequest(0, device=device)
    qos.hold()
    held_during: list[bool] = []
    results = iter([_result(0.6), _result(1.2)])

    def fake_run_load(host: str, port: int, path: str, bodies: list[bytes], **kw: Any
                      ) -> LoadResult:
        held_during.append(qos.held)
        return next(results)

    monkeypatch.setattr(decision, "run_load", fake_run_load)

    def level(name: str, p50: float) -> Row:
        return Row(suite="decision", target=name, baseline="-", rate=1000.0, p50_ms=p50,
                   p99_ms=p50, throughput=1000.0, extra={"server_cpu_ms_per_answer": 0.5})

    servers = {"trivial": (1, "trivial", _Server(), level("trivial", 0.3)),
               "decision": (2, "decision", _Server(), level("decision", 0.8))}
    rows = decision._idle_policy_runs(qos, servers, [b"{}"],  # type: ignore[arg-type]
                                      decision.DecisionBenchConfig())
    assert held_during == [False, False] and qos.held
    assert [(r.target, r.baseline) for r in rows] == [
        ("trivial: level run, CPUs halting when idle", "-"),
        ("decision: level run, CPUs halting when idle", "-"),
        ("trivial", "trivial: level run, CPUs halting when idle"),
        ("decision", "decision: level run, CPUs halting when idle")]
    assert rows[2].ratio_p50 == pytest.approx(0.6 / 0.3)     # idle-policy p50 / held p50
    assert rows[3].ratio_p50 == pytest.approx(1.2 / 0.8)
    assert rows[3].extra == {"server_cpu_ms_per_answer": 0.5, "cpu_latency_request": "held"}
    assert servers["decision"][3].extra == {"server_cpu_ms_per_answer": 0.5}  # not mutated
    qos.release()

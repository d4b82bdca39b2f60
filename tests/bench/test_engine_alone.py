"""The decision suite's in-process loop: back to back, and paced (each decide started
no earlier than its due time), through the requests from an offset. A stand-in engine
records what it was asked; only lower bounds on the spacing are checked (the loop sleeps
until each due time, so a decide can start late but never early)."""

from __future__ import annotations

import time

import numpy as np

from bench.engine_alone import _decide_loop


class _Engine:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def decide(self, req: str, received: float) -> None:
        self.calls.append((req, time.perf_counter()))


def test_back_to_back_goes_through_the_requests_in_a_cycle() -> None:
    engine = _Engine()
    lat, cpu_s, wall_s, steal = _decide_loop(engine, ["a", "b", "c"], 5, 0.0, offset=1)
    assert [r for r, _ in engine.calls] == ["b", "c", "a", "b", "c"]
    assert lat.shape == (5,) and np.all(lat >= 0)
    assert cpu_s >= 0 and wall_s > 0
    assert steal == "n/a" or 0.0 <= float(steal) <= 100.0


def test_paced_decides_start_no_earlier_than_their_due_times() -> None:
    engine = _Engine()
    gap = 0.003
    _, _, wall_s, _ = _decide_loop(engine, ["a"], 6, gap)
    starts = [t for _, t in engine.calls]
    first = starts[0]
    assert all(t - first >= i * gap - 1e-4 for i, t in enumerate(starts))
    assert wall_s >= 5 * gap

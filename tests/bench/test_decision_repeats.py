"""The decision bench's repeated level runs (one row per extra run and the median row)
and its rate ladder (a missed step tried once more)."""

from __future__ import annotations

from typing import Any

import pytest

import bench.decision as decision
from bench.harness import Row
from bench.loadgen import LoadResult


class _Server:
    def __init__(self) -> None:
        self.settled = 0

    def settle(self) -> float:
        self.settled += 1
        return 0.0


def _result(p99_ms: float, steal_pct: float | None = None) -> LoadResult:
    # 100 answers: 98 at 1 ms and two at p99_ms, so the 99th percentile is p99_ms.
    res = LoadResult(rate=1000.0, duration_s=0.1, sent=100)
    res.latencies_ms = [1.0] * 98 + [p99_ms] * 2
    res.status_each = [200] * 99 + [204]            # the slowest answer: a no-bid
    res.due_s = [i / res.rate for i in range(100)]
    res.from_send_ms = list(res.latencies_ms)          # sent on time
    res.steal_pct = steal_pct
    return res


def test_repeats_add_one_row_per_run_and_their_median(monkeypatch: pytest.MonkeyPatch) -> None:
    results = iter([_result(5.0, 12.0), _result(2.0)])
    calls: list[dict[str, Any]] = []

    def fake_run_load(host: str, port: int, path: str, bodies: list[bytes], **kw: Any
                      ) -> LoadResult:
        calls.append({"port": port, **kw})
        return next(results)

    monkeypatch.setattr(decision, "run_load", fake_run_load)
    cfg = decision.DecisionBenchConfig(level_repeats=3)
    first = Row(suite="decision", target="decision service", baseline="-", rate=1000.0,
                p50_ms=1.0, p99_ms=3.5, throughput=1000.0,
                extra={"steal_pct": 0.5, "over_3ms": 7, "episodes_over_3ms": 3})
    server = _Server()
    rows = decision._repeats(8080, "decision service", [b"{}"], cfg, server,  # type: ignore[arg-type]
                             first)
    assert [r.target for r in rows] == ["decision service: level run 2 of 3",
                                        "decision service: level run 3 of 3",
                                        "decision service: median of 3 level runs"]
    assert [c["rate"] for c in calls] == [1000.0, 1000.0] and server.settled == 2
    assert rows[0].p99_ms == pytest.approx(5.0) and rows[1].p99_ms == pytest.approx(2.0)
    assert rows[2].p99_ms == pytest.approx(3.5)             # median of 3.5, 5.0, 2.0
    assert rows[2].extra["p99_ms_each"] == "3.50 / 5.00 / 2.00"
    assert rows[2].extra["steal_pct_each"] == "0.5 / 12.0 / n/a"   # each run's machine
    # The second run's two slow answers (5 ms, due 98 and 99 ms) are one episode.
    assert rows[2].extra["over_3ms_in_episodes_each"] == "7 in 3 / 2 in 1 / 0 in 0"


def test_rows_count_the_answers_after_tmax() -> None:
    cfg = decision.DecisionBenchConfig(tmax_ms=100.0)
    row = decision.decision_row("d", "-", _result(150.0), cfg)    # two answers at 150 ms, one a bid
    assert row.extra["bids_after_tmax"] == 1 and row.extra["answers_after_tmax"] == 2
    row = decision.decision_row("d", "-", _result(100.0), cfg)    # at tmax: in time
    assert row.extra["bids_after_tmax"] == 0 == row.extra["answers_after_tmax"]


def test_one_level_run_adds_nothing() -> None:
    first = Row(suite="decision", target="d", baseline="-", rate=1000.0, p50_ms=1.0,
                p99_ms=3.0, throughput=1000.0)
    assert decision._repeats(1, "d", [], decision.DecisionBenchConfig.quick(),
                             _Server(), first) == []  # type: ignore[arg-type]


def test_ladder_tries_a_missed_step_once_more_before_it_stops(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 250/s: a stall (p99 30 ms), then within budget; 500/s within; 750/s misses twice.
    p99s = iter([30.0, 2.0, 2.0, 12.0, 11.0])
    rates: list[float] = []

    def fake_run_load(host: str, port: int, path: str, bodies: list[bytes], **kw: Any
                      ) -> LoadResult:
        rates.append(kw["rate"])
        return _result(next(p99s))

    monkeypatch.setattr(decision, "run_load", fake_run_load)
    cfg = decision.DecisionBenchConfig(ladder=(250.0, 500.0, 750.0, 1000.0))
    rows, best = decision._ladder(8080, "d", [b"{}"], cfg, _Server())  # type: ignore[arg-type]
    assert best == 500.0
    assert rates == [250.0, 250.0, 500.0, 750.0, 750.0]       # 1,000/s never runs
    assert [(r.target, r.extra["within_budget"]) for r in rows] == [
        ("d: ladder step", "False"), ("d: ladder step, try 2", "True"),
        ("d: ladder step", "True"), ("d: ladder step", "False"),
        ("d: ladder step, try 2", "False")]


def test_ladder_without_retries_stops_at_the_first_miss(monkeypatch: pytest.MonkeyPatch) -> None:
    p99s = iter([30.0])
    monkeypatch.setattr(decision, "run_load",
                        lambda *a, **kw: _result(next(p99s)))
    cfg = decision.DecisionBenchConfig(ladder=(250.0, 500.0), ladder_retries=0)
    rows, best = decision._ladder(8080, "d", [b"{}"], cfg, _Server())  # type: ignore[arg-type]
    assert best == 0.0 and len(rows) == 1


def test_a_decision_row_counts_slow_answers_and_their_episodes() -> None:
    cfg = decision.DecisionBenchConfig(tmax_ms=100.0)
    res = _result(5.0)                       # answers 98 and 99 (due 98 and 99 ms) slow
    res.latencies_ms[10] = res.from_send_ms[10] = 150.0   # a third, alone at 10 ms, past tmax
    row = decision.decision_row("decision service", "-", res, cfg)
    assert row.extra["over_3ms"] == 3 and row.extra["episodes_over_3ms"] == 2
    assert row.extra["largest_episode"] == "2 answers due 0.10-0.10 s, up to 5.0 ms"
    assert row.extra["answers_after_tmax"] == 1 and row.extra["bids_after_tmax"] == 1
    assert row.extra["bids_after_tmax_from_send"] == 1       # the server took 150 ms
    quiet = decision.decision_row("decision service", "-", _result(2.0), cfg)
    assert quiet.extra["over_3ms"] == 0 and quiet.extra["episodes_over_3ms"] == 0
    assert quiet.extra["largest_episode"] == "-"


def test_a_bid_the_generator_sent_late_is_late_only_from_its_due_time() -> None:
    cfg = decision.DecisionBenchConfig(tmax_ms=100.0)
    res = _result(2.0)
    res.latencies_ms[5], res.from_send_ms[5] = 150.0, 20.0    # left 130 ms after its due time
    row = decision.decision_row("decision service", "-", res, cfg)
    assert row.extra["bids_after_tmax"] == 1 and row.extra["bids_after_tmax_from_send"] == 0

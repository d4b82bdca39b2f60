"""Steal (CPU time the hypervisor took) beside every load row: reading the kernel's
counters, a run's share and its worst window. A stand-in ``/proc/stat`` and a fake clock
drive the monitor, so no figure depends on this machine's host."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.harness import Row, load_row, print_table
from bench.loadgen import LoadResult
from bench.steal import StealMonitor, read_ticks, steal_pct, steal_share

_REST = "cpu0 1 2 3 4 5 6 7 8 0 0\nintr 12345\n"


def _write(path: Path, user: int, idle: int, steal: int) -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice
    path.write_text(f"cpu  {user} 0 0 {idle} 0 0 0 {steal} 0 0\n{_REST}")


def test_read_ticks_takes_the_first_eight_numbers_of_the_cpu_line(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text(f"cpu  10 1 2 30 4 5 6 7 99 98\n{_REST}")
    assert read_ticks(stat) == (10, 1, 2, 30, 4, 5, 6, 7)       # guest time is inside user
    assert read_ticks(tmp_path / "missing") is None              # not Linux: not measured
    stat.write_text("intr 1 2 3\n")
    with pytest.raises(ValueError, match="unexpected first line"):
        read_ticks(stat)


def test_steal_share_is_of_all_cpu_time_between_two_readings() -> None:
    before = (100, 0, 0, 100, 0, 0, 0, 0)
    assert steal_share(before, (130, 0, 0, 160, 0, 0, 0, 10)) == pytest.approx(0.1)
    assert steal_share(before, before) is None                   # no tick passed
    assert steal_pct(before, (130, 0, 0, 160, 0, 0, 0, 10)) == pytest.approx(10.0)
    assert steal_pct(None, before) is None and steal_pct(before, before) is None


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _monitor(tmp_path: Path, steal_per_tick: list[int]) -> StealMonitor:
    """A monitor with one reading every 0.1 s; each 0.1 s adds 20 ticks (2 CPUs at 100
    Hz), ``steal_per_tick[k]`` of them steal."""
    stat, clock = tmp_path / "stat", _Clock()
    monitor = StealMonitor(interval_s=0.1, window_s=0.2, path=stat, clock=clock)
    user = idle = steal = 0
    _write(stat, user, idle, steal)
    monitor.sample()
    for k, s in enumerate(steal_per_tick, start=1):
        user, idle, steal = user + 10, idle + 10 - s, steal + s
        _write(stat, user, idle, steal)
        clock.now = round(0.1 * k, 6)
        monitor.sample()
    return monitor


def test_a_run_gets_its_share_and_its_worst_window(tmp_path: Path) -> None:
    # Ten intervals; the host takes 8 of 20 ticks in two of them, back to back.
    monitor = _monitor(tmp_path, [0, 0, 0, 8, 8, 0, 0, 0, 0, 0])
    steal = monitor.between(0.0, 1.0)
    assert steal is not None
    assert steal.pct == pytest.approx(100 * 16 / 200)            # 8% over the run
    assert steal.peak_pct == pytest.approx(100 * 16 / 40)        # 40% over the worst 0.2 s
    assert steal.window_s == 0.2
    # A run inside the quiet part: the readings around it show none.
    quiet = monitor.between(0.6, 0.9)
    assert quiet is not None and quiet.pct == 0.0 and quiet.peak_pct == 0.0


def test_a_run_the_readings_do_not_cover_is_not_measured(tmp_path: Path) -> None:
    monitor = _monitor(tmp_path, [1, 1, 1])
    assert monitor.between(-1.0, 0.2) is None                    # started before any reading
    assert monitor.between(0.1, 5.0) is None                     # ended after the last
    assert monitor.between(float("nan"), float("nan")) is None   # the run never started


def test_a_run_shorter_than_the_window_peaks_at_its_own_share(tmp_path: Path) -> None:
    monitor = _monitor(tmp_path, [0, 4, 0])
    steal = monitor.between(0.1, 0.2)
    assert steal is not None and steal.pct == pytest.approx(20.0) == steal.peak_pct


def test_without_proc_stat_the_monitor_starts_no_thread(tmp_path: Path) -> None:
    with StealMonitor(path=tmp_path / "missing") as monitor:
        assert monitor.samples == []
    assert monitor.between(0.0, 1.0) is None


def test_the_monitor_samples_until_stopped(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    _write(stat, 1, 1, 0)
    monitor = StealMonitor(interval_s=0.01, window_s=0.01, path=stat)
    monitor.start()
    monitor.stop()
    n = len(monitor.samples)
    assert n >= 2                                  # one at start, one at stop
    monitor.stop()                                 # stopping twice is harmless
    assert len(monitor.samples) == n
    with pytest.raises(ValueError, match="interval_s"):
        StealMonitor(interval_s=0.5, window_s=0.1)


def test_load_rows_carry_steal_and_the_table_shows_it() -> None:
    res = LoadResult(rate=100.0, duration_s=1.0, sent=2, latencies_ms=[1.0, 2.0])
    res.steal_pct, res.steal_peak_pct = 3.14159, 12.5
    row = load_row("decision", "t", "-", res)
    assert row.extra["steal_pct"] == 3.1 and row.extra["steal_peak_pct"] == 12.5
    unmeasured = load_row("decision", "u", "-", LoadResult(rate=1.0, duration_s=1.0))
    assert unmeasured.extra["steal_pct"] == "n/a"
    plain = Row(suite="s", target="v", baseline="-", rate=None, p50_ms=1.0, p99_ms=1.0,
                throughput=1.0)
    from rich.console import Console

    console = Console(record=True, width=250)
    print_table(console, [row, unmeasured, plain], "t")
    text = console.export_text()
    assert "steal % (peak)" in text and "3.1 (12.5)" in text and "n/a" in text

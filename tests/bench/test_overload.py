"""The decision bench's overload rows: uvloop's accept as the baseline, started first,
the service's own listener as the target with its ratios, and the service's shed
counter read from /metrics around each run."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import bench.overload as overload
from bench.decision import DecisionBenchConfig
from bench.loadgen import LoadResult


class _Server:
    started: list[str] = []

    def __init__(self, code: str, env: dict[str, str], log: Path) -> None:
        _Server.started.append(code)

    def __enter__(self) -> _Server:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def settle(self) -> float:
        return 0.0


def _result(slowest_ms: float, errors: int) -> LoadResult:
    res = LoadResult(rate=2000.0, duration_s=0.1, sent=100, errors=errors)
    res.latencies_ms = [1.0] * 98 + [slowest_ms] * 2
    res.status_each = [200] * 98 + [204, 204]
    res.due_s = [i / res.rate for i in range(100)]
    res.from_send_ms = list(res.latencies_ms)          # sent on time
    return res


def test_baseline_first_then_the_target_with_ratios(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    _Server.started = []
    loads = iter([_result(1.0, 0), _result(4000.0, 50), _result(1.0, 0), _result(200.0, 0)])
    sheds = iter([10.0, 30.0, 0.0, 90.0])
    rates: list[float] = []

    def fake_run_load(*args: Any, rate: float, **kw: Any) -> LoadResult:
        rates.append(rate)
        return next(loads)

    monkeypatch.setattr(overload, "Server", _Server)
    monkeypatch.setattr(overload, "wait_until_healthy", lambda *a, **k: None)
    monkeypatch.setattr(overload, "run_load", fake_run_load)
    monkeypatch.setattr(overload, "shed_total", lambda port: next(sheds))
    cfg = DecisionBenchConfig.quick()
    rows = overload.overload("/home", tmp_path / "c.json", [b"{}"], cfg, tmp_path, {})
    assert ["accept_all=False" in c for c in _Server.started] == [True, False]
    assert ["accept_all=True" in c for c in _Server.started] == [False, True]
    assert rates == [200.0, cfg.overload_rate, 200.0, cfg.overload_rate]   # warm-up, run
    base, target = rows
    assert (base.target, base.baseline) == (overload.BASELINE, "-")
    assert (target.target, target.baseline) == (overload.TARGET, overload.BASELINE)
    assert (base.errors, target.errors) == (50, 0)
    assert (base.extra["shed"], target.extra["shed"]) == (20.0, 90.0)
    assert (base.extra["max_ms"], target.extra["max_ms"]) == (4000.0, 200.0)
    assert base.extra["answers_after_tmax"] == 2 and base.extra["bids_after_tmax"] == 0
    assert target.ratio_p99 == pytest.approx(base.p99_ms / target.p99_ms)


class _Metrics(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize(("body", "expected"), [
    (b"# HELP adplatform_shed_total x\nadplatform_shed_total_created 1.7e9\n"
     b"adplatform_shed_total 883.0\n", 883.0),
    (b"adplatform_requests_total 5.0\n", None),
])
def test_shed_total_reads_the_counter(body: bytes, expected: float | None) -> None:
    _Metrics.body = body
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        if expected is None:
            with pytest.raises(LookupError):
                overload.shed_total(srv.server_address[1])
        else:
            assert overload.shed_total(srv.server_address[1]) == expected
    finally:
        srv.shutdown()
        srv.server_close()

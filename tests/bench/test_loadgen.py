"""The open-loop load generator: response framing, counting, retries and failures,
against a small raw-socket server in a thread (no timings are asserted)."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench.loadgen import LoadResult, _run, parse_response, run_load


def test_parse_response_waits_for_the_whole_reply() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"
    assert parse_response(head[:10]) is None
    assert parse_response(head + b"abc") is None
    assert parse_response(head + b"abcde") == (200, len(head) + 5, False)
    assert parse_response(head + b"abcdeHTTP/1.1") == (200, len(head) + 5, False)


def test_parse_response_without_body_and_with_close() -> None:
    raw = b"HTTP/1.1 204 No Content\r\nserver: x\r\n\r\n"
    assert parse_response(raw) == (204, len(raw), False)
    raw = b"HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    assert parse_response(raw) == (503, len(raw), True)


def test_parse_response_rejects_chunked_replies() -> None:
    with pytest.raises(ValueError, match="chunked"):
        parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")


class _Handler(socketserver.BaseRequestHandler):
    """Reads requests (headers + Content-Length body) and answers each with the server's
    ``status``; ``drop_after_reply`` closes the connection silently after every reply,
    as a server does when an idle keep-alive connection times out."""

    server: _Server

    def handle(self) -> None:
        buf = b""
        sock: socket.socket = self.request
        while True:
            while b"\r\n\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            head, _, rest = buf.partition(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            while len(rest) < length:
                rest += sock.recv(65536)
            buf = rest[length:]
            self.server.requests += 1
            extra = b"Connection: close\r\n" if self.server.close_header else b""
            sock.sendall(b"HTTP/1.1 %d X\r\n%sContent-Length: 2\r\n\r\nok"
                         % (self.server.status, extra))
            if self.server.drop_after_reply or self.server.close_header:
                return


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, status: int, drop_after_reply: bool, close_header: bool) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.status, self.drop_after_reply = status, drop_after_reply
        self.close_header = close_header
        self.requests = 0
        self.accepted = 0

    def process_request(self, request: socket.socket | tuple[bytes, socket.socket],
                        client_address: object) -> None:
        self.accepted += 1
        super().process_request(request, client_address)  # type: ignore[arg-type]


@contextmanager
def server(status: int = 200, *, drop_after_reply: bool = False,
           close_header: bool = False) -> Iterator[_Server]:
    srv = _Server(status, drop_after_reply, close_header)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _load(port: int, rate: float = 200.0, duration_s: float = 0.25,  # type: ignore[no-untyped-def]
          warm: int = 0):
    return _run("127.0.0.1", port, "/bid", [b'{"id":"1"}', b'{"id":"2"}'], rate, duration_s,
                {"x-api-key": "k"}, 8, warm)


def test_a_warm_pool_is_opened_before_the_schedule_and_used() -> None:
    with server() as srv:
        res = _load(srv.server_address[1], warm=4)
    assert res.warm_conns == 4 and res.conns_opened == 0      # 200/s: one at a time
    assert srv.accepted == 4 and srv.requests == 50 and res.errors == 0
    with server() as srv:
        res = _load(srv.server_address[1], warm=0)
    assert res.warm_conns == 0 and res.conns_opened == srv.accepted >= 1


def test_every_scheduled_request_is_answered_and_timed() -> None:
    with server() as srv:
        res = _load(srv.server_address[1])
    assert res.sent == 50 and srv.requests == 50
    assert res.statuses == {200: 50} and res.errors == 0
    assert len(res.latencies_ms) == 50 and min(res.latencies_ms) > 0
    assert res.status_each == [200] * 50                  # one per answer, in order
    assert res.answered_after(0.0) == 50 and res.answered_after(0.0, 204) == 0
    assert len(res.send_lag_ms) == 50
    assert res.achieved_rps == pytest.approx(200.0)
    # Each answer's due time on the schedule (request i at i / rate), in answer order:
    # one at a time at 200/s, so in schedule order.
    assert res.due_s == pytest.approx([i / 200.0 for i in range(50)])
    # From the send: never longer than from the due time (a request leaves at or after
    # its due time), one per answer.
    assert len(res.from_send_ms) == 50
    assert all(0 < s <= lat for s, lat in zip(res.from_send_ms, res.latencies_ms, strict=True))


def _timed(answers: list[tuple[float, float]]) -> LoadResult:
    """A result with answers given as (due_s, latency_ms), in any order."""
    res = LoadResult(rate=1000.0, duration_s=1.0, sent=len(answers))
    res.due_s = [d for d, _ in answers]
    res.latencies_ms = [lat for _, lat in answers]
    res.status_each = [200] * len(answers)
    return res


def test_slow_answers_group_into_episodes_by_due_time() -> None:
    fast = [(i / 1000.0, 0.5) for i in range(1000)]
    # A stall at 0.200 s: five slow answers 1 ms apart, answered out of order; a lone
    # slow answer 40 ms after them joins (within 50 ms); one at 0.700 s starts another.
    stall = [(0.204, 9.0), (0.200, 12.0), (0.203, 10.0), (0.201, 11.5), (0.202, 10.5),
             (0.244, 4.0), (0.700, 3.5)]
    res = _timed(stall + fast)
    first, second = res.slow_episodes(3.0)
    assert (first.start_s, first.end_s, first.answers, first.worst_ms) == (
        0.200, 0.244, 6, 12.0)
    assert (second.start_s, second.end_s, second.answers) == (0.700, 0.700, 1)
    assert len(res.slow_episodes(3.0, gap_s=0.01)) == 3       # 40 ms apart: split
    assert res.slow_episodes(20.0) == []                      # nothing that slow
    assert len(res.slow_episodes(0.0)) == 1                    # every answer, 1 ms apart


def test_answers_after_a_time_from_the_due_time_or_from_the_send() -> None:
    res = _timed([(0.0, 150.0), (0.001, 150.0), (0.002, 5.0)])
    res.from_send_ms = [150.0, 20.0, 5.0]          # the second left 130 ms late
    res.status_each = [200, 200, 204]
    assert res.answered_after(100.0) == 2 and res.answered_after(100.0, from_send=True) == 1
    assert res.answered_after(100.0, 204) == 0 and res.answered_after(1.0, 204) == 1


def test_due_times_must_match_the_answers() -> None:
    res = _timed([(0.0, 5.0)])
    res.due_s.append(0.001)
    with pytest.raises(ValueError):
        res.slow_episodes(3.0)


def test_server_errors_are_counted() -> None:
    with server(503) as srv:
        res = _load(srv.server_address[1])
    assert res.statuses == {503: 50} and res.errors == 50


def test_a_keep_alive_connection_closed_while_idle_is_retried_once() -> None:
    with server(drop_after_reply=True) as srv:
        res = _load(srv.server_address[1], rate=100.0)
    assert res.statuses == {200: 25} and res.errors == 0
    assert srv.requests == 25                # the request never reached the server twice


def test_connection_close_replies_are_followed() -> None:
    with server(close_header=True) as srv:
        res = _load(srv.server_address[1], rate=100.0)
    assert res.statuses == {200: 25} and res.errors == 0


def test_a_server_that_is_not_there_is_an_error_per_request() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]          # bound, never listening: refused
        res = _load(port, rate=100.0)
    assert res.sent == 25 and res.errors == 25 and not res.latencies_ms


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="steal is read from /proc/stat")
def test_run_load_measures_steal_over_its_schedule() -> None:
    with server() as srv:
        res = run_load("127.0.0.1", srv.server_address[1], "/bid", [b'{"id":"1"}'],
                       rate=100.0, duration_s=0.5, warm_conns=1)
    assert res.statuses == {200: 50}
    assert res.started < res.ended                       # the generator's own clock
    assert res.steal_pct is not None and res.steal_peak_pct is not None
    assert 0.0 <= res.steal_pct <= res.steal_peak_pct <= 100.0

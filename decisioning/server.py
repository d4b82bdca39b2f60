"""Running the decision app under uvicorn, with arrival times stamped at parse time.

:class:`StampingHttpToolsProtocol` is uvicorn's httptools protocol that records
``time.perf_counter()`` in the ASGI scope the moment the first bytes of a request are
parsed (``scope["adplatform.received_perf"]``). The app's middleware hands that stamp
to the engine, so time a request spends queued in the event loop behind other work
(before its handler runs) counts against its ``tmax``: a request that waited past its
budget is shed with a no-bid at once.

Time the request spent in the kernel's receive buffer before the loop read it (the
process was busy with earlier requests, or not running at all) is taken off the stamp
too, on Linux: :func:`kernel_wait_s` reads the socket's ``TCP_INFO``, whose
``tcpi_last_data_recv`` says how many milliseconds ago the kernel last received data on
the connection. The kernel counts it in ticks (jiffies: 1-10 ms; 4 ms on the bench VM's
HZ=250 kernel), so the wait is taken as the reading less one tick (:func:`jiffy_ms`):
waits of up to one tick are not seen, longer ones are counted short by up to two ticks,
and a request is never shed for time it did not wait. Where
``TCP_INFO`` is missing (not Linux) only the loop's own queue is seen.

:func:`serve` runs one process (:mod:`decisioning.workers` runs several); uvicorn
turns SIGTERM into a graceful shutdown (stop accepting, finish in-flight requests, run
the lifespan, which closes the engine and flushes the decision and notice logs).
"""

from __future__ import annotations

import functools
import logging
import math
import socket
import struct
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from decisioning.app import BID_PATHS, RECEIVED_PERF

if TYPE_CHECKING:
    from fastapi import FastAPI

#: Seconds an idle keep-alive connection stays open (uvicorn's default is 5).
KEEP_ALIVE_S = 75

logger = logging.getLogger(__name__)

# struct tcp_info (linux/tcp.h): 8 one-byte fields, then u32s; tcpi_last_data_recv is the
# 12th u32 (after rto, ato, snd_mss, rcv_mss, unacked, sacked, lost, retrans, fackets,
# last_data_sent, last_ack_sent), in milliseconds.
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_TCP_INFO_LEN = 104
_LAST_DATA_RECV = struct.Struct("=I")
_LAST_DATA_RECV_AT = 8 + 11 * 4
#: The kernel's tick where it cannot be read: 10 ms, the longest usual one (HZ=100).
DEFAULT_JIFFY_MS = 10
# linux/time.h; Python's time module has no name for it. Its resolution is one tick.
_CLOCK_MONOTONIC_COARSE = 6


@functools.cache
def jiffy_ms() -> int:
    """The kernel's tick (1 / CONFIG_HZ) in whole milliseconds, rounded up: Linux reports
    the coarse monotonic clock's resolution as one tick (4 ms on an HZ=250 kernel, 1 ms at
    HZ=1000). :data:`DEFAULT_JIFFY_MS` elsewhere, or where the clock cannot be read."""
    if not sys.platform.startswith("linux"):
        return DEFAULT_JIFFY_MS
    try:
        res_s = time.clock_getres(_CLOCK_MONOTONIC_COARSE)
    except OSError as exc:
        logger.debug("coarse clock unavailable, tick taken as %d ms: %s",
                     DEFAULT_JIFFY_MS, exc)
        return DEFAULT_JIFFY_MS
    return max(1, math.ceil(res_s * 1000.0 - 1e-9))


def kernel_wait_s(sock: Any) -> float:
    """At least how long the data just read from ``sock`` (a connected TCP socket, or
    uvloop's stand-in for one) sat in the kernel's receive buffer, in seconds: its
    ``TCP_INFO`` ``tcpi_last_data_recv`` less one kernel tick (:func:`jiffy_ms`); 0.0
    below that, without ``TCP_INFO``, or when the socket cannot say (closing: logged at
    debug).

    The kernel counts the wait in ticks, from the tick the data came in to the current
    one, so the true wait is more than the reading less one tick: taking the tick off
    never charges a request time it did not wait."""
    if sock is None or _TCP_INFO is None:
        return 0.0
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_LEN)
    except OSError as exc:
        logger.debug("TCP_INFO unavailable, no kernel wait taken off: %s", exc)
        return 0.0
    if len(info) < _LAST_DATA_RECV_AT + 4:
        return 0.0
    ms = _LAST_DATA_RECV.unpack_from(info, _LAST_DATA_RECV_AT)[0]
    tick = jiffy_ms()
    return (ms - tick) / 1000.0 if ms > tick else 0.0


class BidFastPath(Protocol):
    """What the protocol needs to answer a bid route itself (the app's bid handler)."""

    limit: int          # body bytes kept; a longer body is answered 413
    in_threadpool: bool  # decide off the loop thread: then the ASGI path answers

    def complete(self, headers: Sequence[tuple[bytes, bytes]], chunks: list[bytes],
                 size: int, version: str, perf: float | None
                 ) -> tuple[int, list[tuple[bytes, bytes]], bytes]: ...


def bid_fast_path(app: FastAPI, enabled: bool = True) -> BidFastPath | None:
    """The app's bid handler when the protocol may answer the bid routes itself: not
    when disabled, and not when the app decides in a thread pool (``decide`` must not
    run on the loop thread then)."""
    handler: BidFastPath | None = getattr(app.state, "bid_handler", None) if enabled else None
    return None if handler is None or handler.in_threadpool else handler


def stamping_protocol(bid: BidFastPath | None = None) -> type[Any] | str:
    """The stamping httptools protocol class, or ``"auto"`` without httptools.

    With ``bid``, ``POST /openrtb/2.x/bid`` is answered inside the protocol: the body is
    collected as the parser delivers it, and once the message is complete the handler
    decides and the response bytes go straight to the transport: no ASGI task, no
    receive/send round trips, no scope for the app. The answers are the app's own
    (the same handler object). Everything else, a pipelined request behind one still
    in flight, ``Expect: 100-continue`` and a configured root path take uvicorn's
    ASGI cycle as before. ``python -m bench decision`` measures both paths in one run
    (rows "decision service" vs "decision service, ASGI bid path", with the server's
    CPU per answer).

    It leans on uvicorn internals (``STATUS_LINE``, the keep-alive timer and
    ``server_state``) of the version pinned in constraints.txt; the tests in
    tests/decisioning/test_server.py compare both paths over real sockets.
    """
    try:
        import httptools
        from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
    except ImportError:
        return "auto"

    class StampingHttpToolsProtocol(HttpToolsProtocol):
        _bid_version: str | None = None
        _bid_keep_alive = True
        _bid_chunks: list[bytes]
        _bid_size = 0
        _perf: float | None = None
        _sock: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._sock = transport.get_extra_info("socket")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            # Arrival: now, less what the bytes waited in the kernel before the loop
            # read them (module docstring).
            self._perf = time.perf_counter() - kernel_wait_s(self._sock)
            self.scope[RECEIVED_PERF] = self._perf  # type: ignore[literal-required]
            self._bid_version = None

        def on_headers_complete(self) -> None:
            if bid is not None and self._fast_path():
                return
            super().on_headers_complete()

        def _fast_path(self) -> bool:
            if (self.parser.get_method() != b"POST" or self.expect_100_continue
                    or self.root_path or self.parser.should_upgrade()
                    or not (self.cycle is None or self.cycle.response_complete)):
                return False
            version = BID_PATHS.get(httptools.parse_url(self.url).path.decode("latin-1"))
            if version is None:
                return False
            self._bid_version = version
            self._bid_keep_alive = (self.parser.get_http_version() != "1.0"
                                    and self.parser.should_keep_alive())
            self._bid_chunks, self._bid_size = [], 0
            return True

        def on_body(self, body: bytes) -> None:
            if self._bid_version is None:
                super().on_body(body)
                return
            self._bid_size += len(body)
            if self._bid_size <= bid.limit:          # type: ignore[union-attr]
                self._bid_chunks.append(body)

        def on_message_complete(self) -> None:
            version = self._bid_version
            if version is None:
                super().on_message_complete()
                return
            self._bid_version = None
            handler: BidFastPath = bid  # type: ignore[assignment]
            answer = handler.complete(self.headers, self._bid_chunks, self._bid_size, version,
                                      self._perf)
            self._bid_chunks = []
            self._write(*answer)

        def _write(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
            out = [STATUS_LINE[status]]
            for name, value in (*self.server_state.default_headers, *headers):
                out += [name, b": ", value, b"\r\n"]
            if status != 204:      # a 204 carries no body and no content-length (RFC 9110)
                out += [b"content-length: ", str(len(body)).encode(), b"\r\n"]
            if not self._bid_keep_alive:
                out.append(b"connection: close\r\n")
            out += [b"\r\n", body]
            self.transport.write(b"".join(out))
            self.server_state.total_requests += 1
            if not self._bid_keep_alive:
                self.transport.close()
            elif not self.transport.is_closing():
                self._unset_keepalive_if_required()
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler)

    return StampingHttpToolsProtocol


def serve(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8080,
          log_level: str = "warning", graceful_timeout_s: int = 10,
          keep_alive_s: int = KEEP_ALIVE_S, fast_bid: bool = True,
          sock: socket.socket | None = None, accept_all: bool = True) -> None:
    """Serve ``app`` until SIGTERM/SIGINT (graceful: the lifespan flushes the logs).

    Start-up objects (Feast registry, ONNX sessions, campaign index) live as long as the
    process: they are moved out of the collector's generations first (``gc.freeze``),
    which removes 10-60 ms full-collection pauses from the request path.

    Idle keep-alive connections are kept ``keep_alive_s`` (uvicorn's default is 5 s):
    exchanges hold connection pools open between auctions, and a connection closed
    under a client costs it a retry or a failed bid request.

    ``fast_bid`` answers the bid routes inside the HTTP protocol (see
    :func:`stamping_protocol`) unless the app decides in a thread pool; False keeps
    them on the ASGI path (the bench measures one against the other).

    ``sock``: listen on this bound socket instead of binding ``host:port`` (a worker of
    :func:`decisioning.workers.serve_workers`, whose socket has ``SO_REUSEPORT``).

    New connections are accepted all at once, not one per event-loop iteration
    (:mod:`decisioning.listener`): under overload uvloop's own accept left connections
    queued in the kernel for seconds. ``accept_all`` False listens with uvicorn's
    own server instead (the bench's baseline for it).
    """
    import gc

    import uvicorn

    from decisioning.listener import AcceptAllServer

    gc.collect()
    gc.freeze()

    config = server_config(app, host=host, port=port, log_level=log_level,
                           graceful_timeout_s=graceful_timeout_s, keep_alive_s=keep_alive_s,
                           fast_bid=fast_bid)
    server = AcceptAllServer(config) if accept_all else uvicorn.Server(config)
    server.run(sockets=[sock] if sock is not None else None)


def server_config(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8080,
                  log_level: str = "warning", graceful_timeout_s: int = 10,
                  keep_alive_s: int = KEEP_ALIVE_S, fast_bid: bool = True) -> Any:
    """The ``uvicorn.Config`` :func:`serve` runs ``app`` with (tests run it in a thread)."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port,
                          http=stamping_protocol(bid_fast_path(app, fast_bid)),
                          log_level=log_level, access_log=False, lifespan="on",
                          timeout_graceful_shutdown=graceful_timeout_s,
                          timeout_keep_alive=keep_alive_s)


__all__ = ["DEFAULT_JIFFY_MS", "KEEP_ALIVE_S", "BidFastPath", "bid_fast_path", "jiffy_ms",
           "kernel_wait_s", "serve", "server_config", "stamping_protocol"]

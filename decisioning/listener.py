"""A listening socket that accepts every pending connection each time it is readable.

uvloop's server accepts *one* connection each time the listening socket is readable:
one per event-loop iteration (libuv "unix: don't accept() connections in a loop",
libuv/libuv#3696, since 1.45: most wake-ups have one connection, and processes sharing
a listening socket get a fair share). A decision service's iteration
decides every request that arrived since the last one, so when it falls behind an
iteration takes tens of milliseconds, and the connections an exchange opens just then
(its pool is busy: that is why it opens them) wait in the kernel's accept queue. Measured
on the bench world at 1,750 requests/s, one process (``strace`` of the server): one
``accept4`` every 50-100 ms, 150-230 connections queued un-accepted for seconds, and
their requests answered 4-5 s late, after the load had stopped.

:class:`AcceptAll` watches the listening socket with ``loop.add_reader`` and, on each
wake-up, accepts until the queue is empty (at most ``backlog``), handing each connection
to the loop with ``loop.connect_accepted_socket``: the same transport and protocol as
``create_server`` gives, one iteration later at most. :class:`AcceptAllServer` is
uvicorn's server with it in place of ``loop.create_server``; uvicorn's shutdown closes
it like any server (stop accepting, then drain the open connections).

Errors: a connection reset before it was accepted is skipped; out of file descriptors
(``EMFILE``/``ENFILE``/``ENOBUFS``/``ENOMEM``) stops accepting for
:data:`ACCEPT_RETRY_S`, as asyncio's own server does, so the loop does not spin on a
socket it cannot empty.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

import uvicorn

logger = logging.getLogger(__name__)

#: Seconds accepting pauses after the process ran out of descriptors or memory.
ACCEPT_RETRY_S = 1.0
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class AcceptAll:
    """Accepts all pending connections on ``sock`` (bound; listened on here) whenever it
    is readable, and serves each with ``protocol_factory`` on ``loop``. Has what
    uvicorn's shutdown uses of an ``asyncio.Server``: :meth:`close` and
    :meth:`wait_closed`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol_factory: Callable[[], asyncio.Protocol], *, backlog: int) -> None:
        self._loop = loop
        self._sock = sock
        self._factory = protocol_factory
        self._batch = max(1, backlog)
        self._pending: set[asyncio.Task[object]] = set()
        self._paused: asyncio.TimerHandle | None = None
        self._closed = False
        sock.setblocking(False)
        sock.listen(backlog)
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(self._batch):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return                             # the queue is empty
            except ConnectionAbortedError:
                continue                           # reset by the client while queued
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRORS:
                    raise
                logger.error("accept failed (%s); not accepting for %.1f s",
                             exc, ACCEPT_RETRY_S)
                self._pause()
                return
            task = self._loop.create_task(self._connect(conn))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn)
        except OSError as exc:                     # gone before its transport was set up
            logger.debug("accepted connection lost during set-up: %s", exc)
            conn.close()

    def _pause(self) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._paused = self._loop.call_later(ACCEPT_RETRY_S, self._resume)

    def _resume(self) -> None:
        self._paused = None
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting and close the listening socket (open connections stay)."""
        if self._closed:
            return
        self._closed = True
        if self._paused is not None:
            self._paused.cancel()
        else:
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()

    async def wait_closed(self) -> None:
        """Connections handed over but not yet set up finish setting up."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


class AcceptAllServer(uvicorn.Server):
    """uvicorn's server, listening through :class:`AcceptAll`: on the sockets given to
    :meth:`run` (bound, not necessarily listening: the workers' ``SO_REUSEPORT``
    sockets), else on ``config.host:config.port``, bound before the app starts."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        config = self.config
        socks = list(sockets) if sockets else [config.bind_socket()]
        await super().startup(sockets=[])          # the lifespan, no listener of its own
        if not self.started:
            return

        def create_protocol() -> asyncio.Protocol:
            return config.http_protocol_class(    # type: ignore[call-arg]
                config=config, server_state=self.server_state,
                app_state=self.lifespan.state, _loop=loop)

        loop = asyncio.get_running_loop()
        self.servers = [AcceptAll(loop, s, create_protocol,   # type: ignore[misc]
                                  backlog=config.backlog) for s in socks]


__all__ = ["ACCEPT_RETRY_S", "AcceptAll", "AcceptAllServer"]

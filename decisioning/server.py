"""Running the decision app under uvicorn, with arrival times stamped at parse time.

:class:`StampingHttpToolsProtocol` is uvicorn's httptools protocol that records
``time.perf_counter()`` in the ASGI scope the moment the first bytes of a request are
parsed (``scope["adplatform.received_perf"]``). The app's middleware hands that stamp
to the engine, so time a request spends queued in the event loop behind other work
(before its handler runs) counts against its ``tmax``: a request that waited past its
budget is shed with a no-bid at once. Time spent in the kernel's socket buffer before
the loop reads it is not seen (the same for any user-space server).

:func:`serve` runs one process; uvicorn turns SIGTERM into a graceful shutdown (stop
accepting, finish in-flight requests, run the lifespan, which closes the engine and
flushes the decision and notice logs).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from decisioning.app import RECEIVED_PERF

if TYPE_CHECKING:
    from fastapi import FastAPI

#: Seconds an idle keep-alive connection stays open (uvicorn's default is 5).
KEEP_ALIVE_S = 75


def stamping_protocol() -> type[Any] | str:
    """The stamping httptools protocol class, or ``"auto"`` without httptools."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return "auto"

    class StampingHttpToolsProtocol(HttpToolsProtocol):
        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.scope[RECEIVED_PERF] = time.perf_counter()  # type: ignore[literal-required]

    return StampingHttpToolsProtocol


def serve(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8080,
          log_level: str = "warning", graceful_timeout_s: int = 10,
          keep_alive_s: int = KEEP_ALIVE_S) -> None:
    """Serve ``app`` until SIGTERM/SIGINT (graceful: the lifespan flushes the logs).

    Start-up objects (Feast registry, ONNX sessions, campaign index) live as long as the
    process: they are moved out of the collector's generations first (``gc.freeze``),
    which removes 10-60 ms full-collection pauses from the request path.

    Idle keep-alive connections are kept ``keep_alive_s`` (uvicorn's default is 5 s):
    exchanges hold connection pools open between auctions, and a connection closed
    under a client costs it a retry or a failed bid request.
    """
    import gc

    import uvicorn

    gc.collect()
    gc.freeze()

    config = uvicorn.Config(app, host=host, port=port, http=stamping_protocol(),
                            log_level=log_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=graceful_timeout_s,
                            timeout_keep_alive=keep_alive_s)
    uvicorn.Server(config).run()


__all__ = ["KEEP_ALIVE_S", "serve", "stamping_protocol"]

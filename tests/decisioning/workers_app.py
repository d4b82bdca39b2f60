"""A small app factory for :func:`decisioning.workers.serve_workers` in the tests: each
worker says who it is, and leaves a file when its lifespan and its factory have exited."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from fastapi import FastAPI


@contextmanager
def app_factory(index: int, count: int, out: str, fail: bool = False) -> Iterator[FastAPI]:
    if fail:
        raise RuntimeError("no model to serve")
    folder = Path(out)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        (folder / f"lifespan-{index}-{os.getpid()}").write_text("closed")

    app = FastAPI(lifespan=lifespan)

    @app.get("/who")
    def who() -> dict[str, int]:
        return {"pid": os.getpid(), "index": index, "count": count}

    @app.get("/readyz")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    yield app
    (folder / f"exited-{index}-{os.getpid()}").write_text("exited")

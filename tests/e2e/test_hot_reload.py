"""Hot reload end to end: a serving decision service follows promote and rollback under load.

The service is wired like ``adplatform serve`` (``mlops.serve.build_decision_service`` plus
``serving.watcher.watch_backend``) and runs under uvicorn in a thread of this process,
on a sandbox copy of the trained workspace's registry. A client thread sends bid
requests without pause the whole time. ``promote`` moves ``ctr@champion`` to a new
version, then ``rollback`` moves it back; each move must be served within 30 s (the
functional bound), no request may fail (every answer 200 or 204, no backend fallback),
and the decision log must attribute decisions to the version that was serving.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import orjson
import pandas as pd
import pytest

from adplatform.config import Settings
from adplatform.eventlog import read_events
from adplatform.ports import free_port
from mlops.promotion import PromotionConfig, promote, rollback
from mlops.registry import CHAMPION, resolve
from serving.watcher import watch_backend
from tests.mlops.test_promotion import register_champion_copy, sandbox

pytestmark = pytest.mark.slow

PICKUP_S = 30.0            # functional requirement: an alias move is served within 30 s
POLL_S = 1.0               # the watcher's interval in this test (default 5 s)


class Load(threading.Thread):
    """Sends bid requests back to back; counts statuses and transport errors."""

    def __init__(self, url: str, bodies: list[bytes]) -> None:
        super().__init__(name="bid-load", daemon=True)
        self.url, self.bodies = url, bodies
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5.0) as client:
            i = 0
            while not self.stop_event.is_set():
                try:
                    r = client.post("/openrtb/2.6/bid", content=self.bodies[i % len(self.bodies)],
                                    headers={"content-type": "application/json"})
                    self.statuses[r.status_code] += 1
                except httpx.HTTPError as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                i += 1

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + len(self.errors)


@pytest.fixture(scope="module")
def hot_ws(trained_workspace: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return sandbox(trained_workspace, tmp_path_factory.mktemp("hot-reload") / "ws")


@pytest.fixture
def service(hot_ws: Settings) -> Iterator[tuple[str, object]]:
    import uvicorn

    from decisioning.app import create_app
    from mlops.serve import build_decision_service

    svc = build_decision_service(hot_ws)
    engine = svc.engine
    watcher = watch_backend(hot_ws, engine.models, interval_s=POLL_S)
    assert watcher is not None
    port = free_port()
    app = create_app(engine, notices=svc.notices)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", engine
    finally:
        watcher.stop()
        server.should_exit = True               # the lifespan closes the engine: log flushed
        thread.join(30)


def _served(url: str) -> str:
    r = httpx.get(f"{url}/readyz", timeout=5.0)
    return str(r.json()["models"].get("ctr"))


def _wait_served(url: str, version: str) -> float:
    t0 = time.monotonic()
    while _served(url) != version:
        if time.monotonic() - t0 > PICKUP_S:
            raise AssertionError(f"ctr version {version} not served within {PICKUP_S:.0f}s")
        time.sleep(0.1)
    return time.monotonic() - t0


def test_promotion_and_rollback_are_served_within_30s_without_failed_requests(
        hot_ws: Settings, service: tuple[str, object]) -> None:
    from simulator import LiveExchange

    url, engine = service
    start = resolve(hot_ws, "ctr", CHAMPION).version
    live = LiveExchange.from_workspace(hot_ws.workspace, session=31)
    load = Load(url, [orjson.dumps(r) for r in live.requests(2000)])
    load.start()
    try:
        while load.sent < 50:
            time.sleep(0.05)
        assert _served(url) == start
        new = register_champion_copy(hot_ws)
        result = promote(hot_ws, "ctr", config=PromotionConfig(latency_budget_ms=1000.0))
        assert result.status == "promoted", result.reasons
        took_new = _wait_served(url, new)
        seen_new = datetime.now(UTC)
        time.sleep(1.0)
        rolled_at = datetime.now(UTC)
        rollback(hot_ws, "ctr")
        took_back = _wait_served(url, start)
        seen_back = datetime.now(UTC)
        sent_before_end = load.sent
        while load.sent < sent_before_end + 50:
            time.sleep(0.05)
    finally:
        load.stop_event.set()
        load.join(10)
    stats = engine.stats()  # type: ignore[attr-defined]

    assert load.errors == []
    assert set(load.statuses) <= {200, 204}, load.statuses
    assert stats.get("nobid.model_unavailable", 0) == 0 and stats.get("nobid.model_error", 0) == 0
    assert took_new < PICKUP_S and took_back < PICKUP_S

    engine.sink.flush()  # type: ignore[attr-defined]
    log = read_events(hot_ws.workspace.decisions, "decisions")
    scored = log[log["model_version"] != ""]
    ctr = scored["model_version"].str.extract(r"(?:^|,)ctr=([^,]+)")[0]
    ts = pd.to_datetime(scored["ts"], utc=True)
    assert set(ctr) >= {start, new}
    during = ctr[(ts > seen_new) & (ts < rolled_at)]
    after = ctr[ts > seen_back]
    assert len(during) > 0 and set(during) == {new}
    assert len(after) > 0 and set(after) == {start}

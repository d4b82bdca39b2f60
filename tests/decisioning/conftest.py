"""Fakes and fixtures for the decision service tests.

Fakes stand in for the lead's featurizer and model backends: a featurizer returning
zeros, a backend returning a fixed pCTR, and failing variants raising the contract
errors (``StoreUnavailable``, ``BackendUnavailable``).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from adplatform.ports import free_port
from decisioning import (
    DecisionEngine,
    EngineConfig,
    FileCampaignStore,
    ManualClock,
    MemorySink,
    create_app,
    parse_request,
)
from features.context import AdRef, RequestContext
from features.errors import StoreUnavailable
from serving.base import AuctionInputs, AuctionScores
from serving.errors import BackendUnavailable

N_FEATURES = 8


class ZeroFeaturizer:
    """Returns a zero matrix; optionally advances a clock to simulate slow reads."""

    feature_service = "test_fs"

    def __init__(self, clock: ManualClock | None = None, delay_s: float = 0.0) -> None:
        self.clock, self.delay_s = clock, delay_s
        self.calls: list[tuple[RequestContext, list[AdRef]]] = []
        self.default_calls = 0

    def build(self, ctx: RequestContext, ads: Sequence[AdRef]) -> AuctionInputs:
        self.calls.append((ctx, list(ads)))
        if self.clock is not None and self.delay_s:
            self.clock.advance(self.delay_s)
        return AuctionInputs(ctr=np.zeros((len(ads), N_FEATURES), dtype=np.float32))

    def defaults(self, ctx: RequestContext, ads: Sequence[AdRef]) -> AuctionInputs:
        self.default_calls += 1
        return AuctionInputs(ctr=np.zeros((len(ads), N_FEATURES), dtype=np.float32))


class DownFeaturizer(ZeroFeaturizer):
    """The online store is unreachable."""

    def build(self, ctx: RequestContext, ads: Sequence[AdRef]) -> AuctionInputs:
        raise StoreUnavailable("redis down")


class FixedBackend:
    """pCTR fixed per creative (``by_creative``) or overall; counts calls."""

    def __init__(self, pctr: float = 0.01, by_creative: dict[str, float] | None = None,
                 fraud: float | None = None, clock: ManualClock | None = None,
                 delay_s: float = 0.0) -> None:
        self.pctr, self.by_creative, self.fraud = pctr, by_creative or {}, fraud
        self.clock, self.delay_s = clock, delay_s
        self.inputs: list[AuctionInputs] = []
        self.closed = False

    def score(self, inputs: AuctionInputs) -> AuctionScores:
        self.inputs.append(inputs)
        if self.clock is not None and self.delay_s:
            self.clock.advance(self.delay_s)
        k = inputs.ctr.shape[0]
        return AuctionScores(pctr=np.full(k, self.pctr, dtype=np.float32), fraud=self.fraud,
                             versions={"ctr": "3"})

    def versions(self) -> dict[str, str]:
        return {"ctr": "3"}

    def close(self) -> None:
        self.closed = True


class DownBackend(FixedBackend):
    def score(self, inputs: AuctionInputs) -> AuctionScores:
        raise BackendUnavailable("triton refused the connection")


def _creative(cid: str, fmt: str, w: int, h: int, topic: int = 1,
              cat: list[str] | None = None) -> dict[str, Any]:
    return {"creative_id": cid, "format": fmt, "w": w, "h": h, "topic": topic,
            "cat": cat or [], "adm": f"<div>{cid}</div>"}


def _campaign(cid: str, creatives: list[dict[str, Any]], *, cpc: float | None = 0.8,
              goal: str = "cpc", cpa: float | None = None, cat: list[str] | None = None,
              adomain: list[str] | None = None, status: str = "active",
              targeting: dict[str, list[Any]] | None = None,
              daily_budget: float | None = 2000.0) -> dict[str, Any]:
    return {"campaign_id": cid, "advertiser": f"adv {cid}",
            "adomain": adomain or [f"{cid}.example"], "cat": cat or ["IAB18"], "goal": goal,
            "cpc": cpc, "cpa": cpa, "daily_budget": daily_budget, "status": status,
            "targeting": {"countries": [], "device_types": [], "domains": [], "formats": [],
                          "segments": [], **(targeting or {})},
            "creatives": creatives}


def check_budget_refusals(ledger: Any, campaign_file: Path,
                          engine_for: Callable[[FileCampaignStore], DecisionEngine],
                          clock: ManualClock) -> None:
    """A shared ledger under the engine: c01 with a $0.01 daily budget bids twice (5.6
    CPM: 5,600 µ$ reserved a bid), then is refused; the reservations are in the ledger."""
    doc = campaign_doc()
    doc["campaigns"][0]["daily_budget"] = 0.01
    campaign_file.write_text(json.dumps(doc))
    engine = engine_for(FileCampaignStore(campaign_file, ledger=ledger))
    body = {"at": 1, "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}]}
    results = [engine.decide(parse_request(json.dumps({**body, "id": f"r{i}"})),
                             clock.monotonic()) for i in range(4)]
    assert [r is not None for r in results] == [True, True, False, False]
    assert ledger.reserved_micros("c01") == 11200
    engine.close()


def reserve_in_threads(ledger: Any, day: date, *, threads: int, per_thread: int,
                       amount: int, budget: int) -> int:
    """Reservations of ``amount`` µ$ on campaign "c" for ``day`` from ``threads``
    threads at once, ``per_thread`` each, against ``budget``: the µ$ granted."""
    granted: list[int] = []

    def bid(t: int) -> None:
        for i in range(per_thread):
            if ledger.reserve("c", f"{t}-{i}", amount, day, budget_micros=budget):
                granted.append(amount)

    workers = [threading.Thread(target=bid, args=(t,)) for t in range(threads)]
    for th in workers:
        th.start()
    for th in workers:
        th.join()
    return sum(granted)


def campaign_doc() -> dict[str, Any]:
    """300x250 and 728x90 banners and a 640x480 video, plus campaigns that must lose."""
    return {"version": 1, "campaigns": [
        _campaign("c01", [_creative("cr01a", "banner", 300, 250),
                          _creative("cr01b", "banner", 728, 90)],
                  adomain=["acmeshoes.example"]),
        _campaign("c02", [_creative("cr02v", "video", 640, 480, topic=2)], goal="cpa",
                  cpc=None, cpa=20.0, cat=["IAB2"]),
        # Higher value, but IAB25 is in request_3's bcat.
        _campaign("c03", [_creative("cr03b", "banner", 728, 90, cat=["IAB25-3"])], cpc=2.0),
        # Higher value, but apple.com is in request_3's badv.
        _campaign("c04", [_creative("cr04b", "banner", 728, 90)], cpc=3.0,
                  adomain=["apple.com"]),
        # Paused: never a candidate.
        _campaign("c05", [_creative("cr05a", "banner", 300, 250)], cpc=5.0, status="paused"),
    ]}


@pytest.fixture
def campaign_file(tmp_path: Path) -> Path:
    path = tmp_path / "world" / "campaigns.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(campaign_doc()))
    return path


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


EngineFactory = Callable[..., DecisionEngine]


@pytest.fixture
def make_engine(campaign_file: Path, clock: ManualClock, sink: MemorySink) -> EngineFactory:
    def make(featurizer: Any = None, models: Any = None, config: EngineConfig | None = None,
             campaigns: Any = None, **deps: Any) -> DecisionEngine:
        return DecisionEngine(
            featurizer=featurizer if featurizer is not None else ZeroFeaturizer(),
            models=models if models is not None else FixedBackend(),
            campaigns=campaigns if campaigns is not None else FileCampaignStore(campaign_file),
            sink=sink, clock=clock, config=config or EngineConfig(seed=1), **deps)
    return make


@pytest.fixture
def engine(make_engine: EngineFactory) -> DecisionEngine:
    return make_engine()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client over the ASGI app, with its lifespan run around it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bidder") as c:
            yield c


@pytest.fixture
async def client(engine: DecisionEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(engine)) as c:
        yield c


@pytest.fixture(scope="session")
def spec_examples(shared_data: Path) -> Path:
    path = shared_data / "openrtb_spec_examples"
    if not path.exists():
        pytest.skip(f"{path} absent: the OpenRTB example payloads are not installed")
    return path


@pytest.fixture(scope="session")
def iab26(spec_examples: Path) -> Path:
    return spec_examples / "iab_openrtb2.6"


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def wait_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port} after {timeout_s}s")


class ThreadServer:
    """The app under uvicorn in a thread, as :func:`decisioning.server.serve` runs it: its
    listener (every pending connection accepted at once), arrival stamps, and
    (``fast_bid``, unless the app decides in a thread pool) the bid routes answered in
    the protocol."""

    def __init__(self, app: Any, *, fast_bid: bool = True) -> None:
        from decisioning.listener import AcceptAllServer
        from decisioning.server import server_config

        self.port = free_port()
        self.server = AcceptAllServer(server_config(app, port=self.port, fast_bid=fast_bid))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


NATS_URL = "nats://127.0.0.1:4222"


def nats_or_skip() -> None:
    """Skip the calling test when no NATS server listens on 127.0.0.1:4222."""
    import socket

    try:
        socket.create_connection(("127.0.0.1", 4222), timeout=1).close()
    except OSError:
        pytest.skip("no NATS on 127.0.0.1:4222 (start nats-server -js)")


async def delete_stream(name: str) -> None:
    """Remove a test's JetStream stream (nothing to do when the test never made it)."""
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(NATS_URL)
    try:
        await nc.jetstream().delete_stream(name)
    except NotFoundError:
        pass                                        # the test never created it
    finally:
        await nc.close()


"""Reliability: every real example answered cleanly; faults under load never give a 5xx.

(a) every JSON file under ``openrtb_spec_examples`` (all subfolders) is answered with a
    valid BidResponse or 204 when it is a bid request, and a clean 400 otherwise;
(b) under load (a few hundred requests from a thread, over real HTTP to a uvicorn server
    in this process), a Redis the test starts and kills, a model server the test starts
    and SIGKILLs (the real BentoML client against a fake Bento process), and a slow
    dependency on a controllable clock: no 5xx, fallbacks counted by reason, no bid
    after its deadline (by the engine's clock). Assertions never use wall-clock time.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from decisioning import (
    BidResponse,
    DecisionEngine,
    EngineConfig,
    IndexedCampaignStore,
    ManualClock,
    MemorySink,
    create_app,
)
from decisioning.campaigns import CampaignFile
from decisioning.notices import MemoryNoticeSink, NoticeService
from features.context import AdRef, RequestContext
from features.errors import StoreUnavailable
from serving.base import AuctionInputs
from tests.decisioning.conftest import (
    FixedBackend,
    ThreadServer,
    ZeroFeaturizer,
    _campaign,
    _creative,
    campaign_doc,
    free_port,
    wait_port,
)

BID = "/openrtb/2.6/bid"


def requests_body(i: int, size: tuple[int, int], **extra: Any) -> bytes:
    return json.dumps({"id": f"req{i}", "at": 1, "tmax": 200,
                       "imp": [{"id": "1", "bidfloor": 0.01,
                                "banner": {"w": size[0], "h": size[1]}}],
                       "site": {"domain": "news.example", "publisher": {"id": "pub1"}},
                       "user": {"id": f"user{i % 37}"}, **extra}).encode()


def run_load(url: str, n: int, on: dict[int, Callable[[], None]],
             sizes: Sequence[tuple[int, int]] = ((300, 250), (728, 90))
             ) -> list[tuple[int, int, bytes]]:
    """``n`` requests from one thread, running ``on[i]`` before request ``i``."""
    out: list[tuple[int, int, bytes]] = []
    errors: list[BaseException] = []

    def loader() -> None:
        try:
            with httpx.Client(base_url=url, timeout=10.0) as c:
                for i in range(n):
                    if i in on:
                        on[i]()
                    r = c.post(BID, content=requests_body(i, sizes[i % len(sizes)]))
                    out.append((i, r.status_code, r.content))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            errors.append(exc)

    t = threading.Thread(target=loader)
    t.start()
    t.join(300)
    if errors:
        raise errors[0]
    return out


def check_answers(answers: list[tuple[int, int, bytes]], n: int) -> None:
    assert len(answers) == n
    statuses = {s for _, s, _ in answers}
    assert statuses <= {200, 204}, statuses                 # never a 5xx (nor a 4xx)
    for i, status, body in answers:
        if status == 200:
            resp = BidResponse.model_validate_json(body)
            assert resp.id == f"req{i}" and resp.bids()


def campaigns_store() -> IndexedCampaignStore:
    """300x250: a budgeted campaign; 728x90: an unbudgeted one."""
    doc = {"version": 1, "campaigns": [
        _campaign("budgeted", [_creative("b1", "banner", 300, 250)], daily_budget=1000.0),
        _campaign("open", [_creative("o1", "banner", 728, 90)], daily_budget=None)]}
    return IndexedCampaignStore(CampaignFile.model_validate(doc))


# --------------------------------------------------------------------------- (a)


@pytest.mark.realdata
def test_every_spec_example_gets_a_bid_a_no_bid_or_a_clean_400(shared_data: Path,
                                                                 tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from decisioning import FileCampaignStore

    folder = shared_data / "openrtb_spec_examples"
    if not folder.exists():
        pytest.skip(f"{folder} absent: the OpenRTB example payloads are not installed")
    files = sorted(folder.rglob("*.json"))
    assert len(files) > 50
    tmp = tmp_path / "campaigns.json"
    tmp.write_text(json.dumps(campaign_doc()))
    sink = MemorySink()
    engine = DecisionEngine(featurizer=ZeroFeaturizer(), models=FixedBackend(),
                            campaigns=FileCampaignStore(tmp), sink=sink,
                            config=EngineConfig(notice_base_url="http://b/notice"))
    kinds: dict[int, int] = {}
    n_imps = 0
    with TestClient(create_app(engine)) as client:
        for path in files:
            body = path.read_bytes()
            try:
                data = json.loads(body)
            except ValueError:
                data = None
            is_request = isinstance(data, dict) and isinstance(data.get("imp"), list) \
                and "id" in data
            for route in ("/openrtb/2.6/bid", "/openrtb/2.5/bid"):
                r = client.post(route, content=body)
                kinds[r.status_code] = kinds.get(r.status_code, 0) + 1
                if is_request:
                    assert r.status_code in (200, 204), (path, r.text)
                    if r.status_code == 200:
                        resp = BidResponse.model_validate_json(r.content)
                        assert resp.id == str(data["id"]) and resp.bids()
                    n_imps += len(data["imp"]) if r.status_code in (200, 204) else 0
                else:
                    assert r.status_code == 400, (path, r.status_code, r.text)
                    doc = r.json()
                    assert doc["error"] and isinstance(doc["detail"], list), path
    assert kinds.get(200, 0) > 0 and kinds.get(204, 0) > 0 and kinds.get(400, 0) > 0
    assert len(sink.records) == n_imps                  # one decision per imp answered


# --------------------------------------------------------------------------- (b) Redis


class RedisFeaturizer(ZeroFeaturizer):
    """Reads one key per auction from a Redis (a stand-in for the online store)."""

    def __init__(self, client: Any) -> None:
        super().__init__()
        self.client = client

    def build(self, ctx: RequestContext, ads: Sequence[AdRef]) -> AuctionInputs:
        import redis

        try:
            self.client.get(f"features:{ctx.publisher_id}")
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(f"online store down: {exc}") from exc
        return AuctionInputs(ctr=np.zeros((len(ads), 8), dtype=np.float32))


class RedisProcess:
    """A redis-server of the test's own, on a free port (never the machine's 6379)."""

    def __init__(self, port: int) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed")
        self.port = port
        self.proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def test_redis_outage_under_load(tmp_path: Path) -> None:
    from decisioning.frequency import RedisFrequencyCounter
    from decisioning.notices import RedisNoticeDedupe
    from decisioning.redis_budget import RedisBudgetLedger, redis_client

    port = free_port()
    procs = [RedisProcess(port)]
    try:
        client = redis_client(f"redis://127.0.0.1:{port}/0", timeout_s=0.05)
        store = campaigns_store()
        store.ledger = RedisBudgetLedger(client, refresh_s=0.05)
        sink = MemorySink()
        engine = DecisionEngine(featurizer=RedisFeaturizer(client), models=FixedBackend(),
                                campaigns=store, sink=sink,
                                frequency=RedisFrequencyCounter(client),
                                config=EngineConfig(notice_base_url="http://b/notice"))
        notices = NoticeService(ledger=store.ledger, dedupe=RedisNoticeDedupe(client),
                                sink=MemoryNoticeSink())
        app = create_app(engine, notices=notices, decide_in_threadpool=True)

        def restart() -> None:
            procs.append(RedisProcess(port))

        with ThreadServer(app) as srv:
            answers = run_load(srv.url, 300, {100: procs[0].kill, 200: restart})
            with httpx.Client(base_url=srv.url) as c:
                down = c.get("/notice/win", params={"id": "x", "imp": "1", "bid": "b",
                                                    "cid": "open", "price": "1"})
            stats = engine.stats()
        check_answers(answers, 300)
        by_phase = [[s for i, s, _ in answers if lo <= i < hi]
                    for lo, hi in ((0, 100), (100, 200), (200, 300))]
        assert set(by_phase[0]) == {200}                           # all bid before
        # Redis down: the budgeted campaign cannot reserve (fail closed, 204); the
        # unbudgeted one still bids on default features.
        outage = {i: s for i, s, _ in answers if 100 <= i < 200}
        assert all(s == 204 for i, s in outage.items() if i % 2 == 0)
        assert all(s == 200 for i, s in outage.items() if i % 2 == 1)
        assert 200 in by_phase[2] and by_phase[2].count(200) > 90  # recovered
        assert stats["fallback.features_unavailable"] >= 100
        assert stats["fallback.budget_unavailable"] >= 50
        assert stats["nobid.budget_unavailable"] == stats["fallback.budget_unavailable"]
        assert down.json() == {"status": "recorded"}               # Redis is back
        defaults = {r.request_id for r in sink.records if r.feature_service == "defaults"}
        assert {f"req{i}" for i in range(101, 200, 2)} <= defaults
        assert len(sink.records) == 300
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.kill()


# --------------------------------------------------------------------------- (b) models

_FAKE_BENTO = """
import sys, numpy as np, orjson, uvicorn
from serving.bento.codec import decode_array, encode_array

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        m = await receive()
        body += m.get("body", b"")
        if not m.get("more_body"):
            break
    if scope["path"] == "/versions":
        out = {"ctr": "9"}
    else:
        k = decode_array(**orjson.loads(body)["auction"]["ctr"]).shape[0]
        out = {"pctr": encode_array(np.full(k, 0.02, dtype=np.float32)),
               "versions": {"ctr": "9"}}
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": orjson.dumps(out)})

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


class FakeBento:
    """A process speaking the Bento scoring protocol; SIGKILLed by the test."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc = subprocess.Popen([sys.executable, "-c", _FAKE_BENTO, str(port)],
                                     cwd=Path(__file__).resolve().parents[2])
        wait_port(port)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def test_model_server_killed_under_load() -> None:
    from serving.bento.client import BentoBackend

    port = free_port()
    procs = [FakeBento(port)]
    try:
        remote = BentoBackend(f"http://127.0.0.1:{port}", timeout_s=0.5)
        sink = MemorySink()
        engine = DecisionEngine(featurizer=ZeroFeaturizer(), models=remote,
                                fallback_models=FixedBackend(pctr=0.01),   # in-process
                                campaigns=campaigns_store(), sink=sink)
        app = create_app(engine, decide_in_threadpool=True)

        def restart() -> None:
            procs.append(FakeBento(port))

        with ThreadServer(app) as srv:
            answers = run_load(srv.url, 300, {100: procs[0].kill, 200: restart})
            ready = httpx.get(srv.url + "/readyz").json()
        check_answers(answers, 300)
        assert all(s == 200 for _, s, _ in answers)                # the fallback bids
        versions = [r.model_version for r in sink.records]
        assert set(versions[:100]) == {"ctr=9"}                    # the remote model
        assert set(versions[100:200]) == {"ctr=3"}                 # the fallback
        assert versions[-1] == "ctr=9"                             # back after restart
        assert engine.stats()["fallback.model_unavailable"] >= 100
        assert ready["ready"] is True
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.kill()


# --------------------------------------------------------------------------- (b) slow


class SlowFeaturizer(ZeroFeaturizer):
    """Every ``every``-th auction the store takes ``delay_s`` (on the manual clock)."""

    def __init__(self, clock: ManualClock, every: int, delay_s: float) -> None:
        super().__init__()
        self.clock_, self.every, self.delay_s = clock, every, delay_s
        self.n = 0
        self.lock = threading.Lock()

    def build(self, ctx: RequestContext, ads: Sequence[AdRef]) -> AuctionInputs:
        with self.lock:
            self.n += 1
            slow = self.n % self.every == 0
        if slow:
            self.clock_.advance(self.delay_s)
        return super().build(ctx, ads)


def test_slow_dependency_never_answers_after_the_deadline() -> None:
    clock = ManualClock()
    sink = MemorySink()
    cfg = EngineConfig(margin_ms=10)
    slow_backend = FixedBackend(clock=clock, delay_s=0.0)
    engine = DecisionEngine(featurizer=SlowFeaturizer(clock, every=7, delay_s=0.25),
                            models=slow_backend, campaigns=campaigns_store(), sink=sink,
                            clock=clock, config=cfg)
    with ThreadServer(create_app(engine)) as srv:
        answers = run_load(srv.url, 210, {})
        slow_backend.delay_s = 0.195                                # just past 190 ms
        answers += [(i + 210, s, b) for i, s, b in run_load(srv.url, 30, {})]
    assert {s for _, s, _ in answers} <= {200, 204}
    budget_ms = 200 - cfg.margin_ms
    for r in sink.records:
        if r.bid:
            assert r.latency_ms <= budget_ms, r                     # engine clock
        else:
            assert r.reason == "deadline" and r.latency_ms > budget_ms, r
    assert engine.stats()["nobid.deadline"] == 30 + 30              # every 7th, then all
    assert sum(s == 204 for _, s, _ in answers) == 60

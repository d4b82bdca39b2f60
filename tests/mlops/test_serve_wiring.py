"""``adplatform serve`` wires the whole decision service: notice routes and notice URLs
on bids (spend from billing notices), the profile's stores, the decision log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from adplatform.config import Settings
from decisioning.budget import InMemoryBudgetLedger

pytestmark = pytest.mark.slow


def test_notice_url_follows_the_setting_then_the_bind_address(tmp_path: Path) -> None:
    from mlops.serve import notice_url

    plain = Settings(home=tmp_path)  # type: ignore[call-arg]
    assert notice_url(plain, "127.0.0.1", 8080) == "http://127.0.0.1:8080/notice"
    assert notice_url(plain, "0.0.0.0", 8080) is None          # public name unknown
    assert notice_url(plain, "::", 8080) is None
    set_ = Settings(home=tmp_path,  # type: ignore[call-arg]
                    notice_base_url="https://bidder.example/n")
    assert notice_url(set_, "0.0.0.0", 8080) == "https://bidder.example/n"


def test_run_server_serves_notices_and_counts_spend_from_billing(
        trained_workspace: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import decisioning.server
    import mlops.serve
    from simulator import LiveExchange, notice_calls

    captured: dict[str, Any] = {}
    logs = tmp_path / "logs"
    build = mlops.serve.build_decision_service

    def build_here(settings: Settings, **kw: Any) -> Any:
        captured["service"] = svc = build(settings, **{**kw, "log_root": logs})
        return svc

    monkeypatch.setattr(mlops.serve, "build_decision_service", build_here)
    monkeypatch.setattr(decisioning.server, "serve",
                        lambda app, **kw: captured.update(app=app, **kw))
    mlops.serve.run_server(trained_workspace, host="127.0.0.1", port=8765,
                           watch_interval_s=None)
    app, svc = captured["app"], captured["service"]
    assert captured["port"] == 8765 and app.state.notices is svc.notices
    assert svc.engine.config.notice_base_url == "http://127.0.0.1:8765/notice"

    reqs = list(LiveExchange.from_workspace(trained_workspace.workspace, session=5).requests(300))
    with TestClient(app) as client:                  # the lifespan closes and flushes
        bids = []
        for r in reqs:
            res = client.post("/openrtb/2.6/bid", content=json.dumps(r))
            assert res.status_code in (200, 204)
            if res.status_code == 200:
                bids.append((r, res.json()))
        assert bids, "no bid in 300 requests"
        billed = 0
        for r, resp in bids[:20]:
            assert resp["seatbid"][0]["bid"][0]["nurl"].startswith(
                "http://127.0.0.1:8765/notice/")
            # the exchange's calls for a win cleared at CPM 1.25: nurl, then burl
            [_, (kind, burl)] = notice_calls(r, resp, {"won": True, "paid_price": 1.25})
            assert kind == "billing"
            path = burl.split("8765", 1)[1]
            assert client.get(path).json()["status"] == "recorded"
            assert client.get(path).json()["status"] == "duplicate"
            billed += 1250                          # CPM 1.25 -> 1,250 micro-dollars
        ledger = svc.notices.ledger
        assert isinstance(ledger, InMemoryBudgetLedger)
        assert sum(svc.notices.spend_micros.values()) == billed
        metrics = client.get("/metrics").text.splitlines()
        recorded = [float(m.rsplit(" ", 1)[1]) for m in metrics
                    if m.startswith("adplatform_notices_total{")
                    and 'kind="billing"' in m and 'result="recorded"' in m]
        assert recorded == [20.0]
        spent = [float(m.rsplit(" ", 1)[1]) for m in metrics
                 if m.startswith("adplatform_budget_spent_micros_total{")]
        assert sum(spent) == billed
    from adplatform.eventlog import read_events
    from decisioning.outcomes import read_notices

    assert len(read_events(logs, "decisions")) == len(reqs)
    assert (read_notices(logs)["kind"] == "billing").sum() == 20


class _Registry:
    """A registry sidecar's ``resolve``: the fraud champion's tags, or no fraud model."""

    def __init__(self, tags: dict[str, str] | None) -> None:
        self.tags = tags

    def resolve(self, name: str, alias: str) -> Any:
        from types import SimpleNamespace

        from mlops.errors import ModelNotFound

        if self.tags is None or name != "fraud":
            raise ModelNotFound(f"models:/{name}@{alias}")
        return SimpleNamespace(tags=self.tags)


def test_engine_config_takes_the_registered_fraud_threshold_and_overrides(
        tmp_path: Path) -> None:
    from mlops.serve import engine_config

    settings = Settings(home=tmp_path, seed=11)  # type: ignore[call-arg]
    cfg = engine_config(settings, registry=_Registry({"threshold": "0.73"}),  # type: ignore[arg-type]
                        max_candidates=20)
    assert (cfg.fraud_threshold, cfg.max_candidates, cfg.seed) == (0.73, 20, 11)
    untagged = engine_config(settings, registry=_Registry({}))  # type: ignore[arg-type]
    missing = engine_config(settings, registry=_Registry(None))  # type: ignore[arg-type]
    assert untagged.fraud_threshold == missing.fraud_threshold == 0.5
    assert engine_config(settings, registry=_Registry({"threshold": "0.9"}),  # type: ignore[arg-type]
                         fraud_threshold=0.2).fraud_threshold == 0.2

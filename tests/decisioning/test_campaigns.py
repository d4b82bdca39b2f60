"""Campaign file validation, the (format, w, h) index, targeting, blocks and budgets."""

from __future__ import annotations

import copy
import json
import os
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from decisioning import (
    Blocklist,
    CampaignError,
    CampaignFile,
    FileCampaignStore,
    IndexedCampaignStore,
    InMemoryBudgetLedger,
    Pacer,
    load_campaigns,
    parse_request,
)
from decisioning.request_context import request_facts

from .conftest import _campaign, _creative, campaign_doc

DAY = date(2024, 1, 1)


def _store(doc: dict[str, Any] | None = None, **kw: Any) -> IndexedCampaignStore:
    return IndexedCampaignStore(CampaignFile.model_validate(doc or campaign_doc()), **kw)


def _ids(store: IndexedCampaignStore, body: dict[str, Any], limit: int = 20) -> list[str]:
    req = parse_request(json.dumps(body))
    facts = request_facts(req)
    return [c.creative.creative_id for c in store.candidates(
        req.imp[0], facts, Blocklist.from_request(req), DAY, limit)]


def _banner(w: int, h: int, **extra: Any) -> dict[str, Any]:
    return {"id": "r", "imp": [{"id": "1", "banner": {"w": w, "h": h}}], **extra}


def test_load_json_and_yaml(tmp_path: Path, campaign_file: Path) -> None:
    doc = load_campaigns(campaign_file)
    assert [c.campaign_id for c in doc.campaigns] == ["c01", "c02", "c03", "c04", "c05"]
    yaml = pytest.importorskip("yaml")
    y = tmp_path / "campaigns.yaml"
    y.write_text(yaml.safe_dump(campaign_doc()))
    assert load_campaigns(y) == doc


@pytest.mark.parametrize(("mutate", "words"), [
    (lambda d: d["campaigns"][0].update(goal="cpm"), "campaigns[0].goal"),
    (lambda d: d["campaigns"][0].update(cpc=None), "goal 'cpc' needs a cpc"),
    (lambda d: d["campaigns"][0].update(cpc=-1), "campaigns[0].cpc"),
    (lambda d: d["campaigns"][0].update(buget=5), "campaigns[0].buget: Extra inputs"),
    (lambda d: d["campaigns"][0]["creatives"][1].update(w="wide"),
     "campaigns[0].creatives[1].w"),
    (lambda d: d["campaigns"][0]["creatives"][0].update(w=0), "needs w and h"),
    (lambda d: d["campaigns"][0]["targeting"].update(formats=["popup"]),
     "campaigns[0].targeting.formats[0]"),
    (lambda d: d["campaigns"][1].update(campaign_id="c01"), "duplicate campaign_id 'c01'"),
    (lambda d: d["campaigns"][1]["creatives"][0].update(creative_id="cr01a"),
     "duplicate creative_id 'cr01a'"),
    (lambda d: d.update(version=2), "version"),
    (lambda d: d["campaigns"][0].update(adomain=[]), "campaigns[0].adomain"),
])
def test_invalid_campaign_files_name_file_and_field(tmp_path: Path, mutate: Any,
                                                    words: str) -> None:
    doc = copy.deepcopy(campaign_doc())
    mutate(doc)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(CampaignError) as info:
        load_campaigns(path)
    assert str(path) in str(info.value) and words in str(info.value), str(info.value)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(CampaignError, match="not found"):
        load_campaigns(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(CampaignError, match="malformed JSON"):
        load_campaigns(bad)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("a: [")
    with pytest.raises(CampaignError, match="malformed YAML"):
        load_campaigns(bad_yaml)


def test_size_and_format_matching() -> None:
    store = _store()
    assert _ids(store, _banner(300, 250)) == ["cr01a"]          # c05 is paused
    assert sorted(_ids(store, _banner(728, 90))) == ["cr01b", "cr03b", "cr04b"]
    assert _ids(store, _banner(320, 50)) == []
    fmt = {"id": "r", "imp": [{"id": "1", "banner": {"format": [{"w": 320, "h": 50},
                                                                 {"w": 300, "h": 250}]}}]}
    assert _ids(store, fmt) == ["cr01a"]
    video = {"id": "r", "imp": [{"id": "1", "video": {"w": 640, "h": 480}}]}
    assert _ids(store, video) == ["cr02v"]
    assert _ids(store, {"id": "r", "imp": [{"id": "1", "video": {"w": 1920, "h": 1080}}]}) == []
    assert _ids(store, {"id": "r", "imp": [{"id": "1", "video": {"mimes": ["video/mp4"]}}]}) \
        == ["cr02v"]                                            # unsized video slot
    assert _ids(store, {"id": "r", "imp": [{"id": "1"}]}) == []


def test_index_is_ordered_by_value_and_limited() -> None:
    store = _store()
    assert _ids(store, _banner(728, 90)) == ["cr04b", "cr03b", "cr01b"]   # cpc 3, 2, 0.8
    assert _ids(store, _banner(728, 90), limit=2) == ["cr04b", "cr03b"]


def test_blocked_categories_and_advertisers() -> None:
    store = _store()
    assert _ids(store, _banner(728, 90, bcat=["IAB25"])) == ["cr04b", "cr01b"]  # IAB25-3 child
    assert _ids(store, _banner(728, 90, bcat=["iab25-3"])) == ["cr04b", "cr01b"]
    assert _ids(store, _banner(728, 90, badv=["www.apple.com"])) == ["cr03b", "cr01b"]
    assert _ids(store, _banner(728, 90, bcat=["IAB18"])) == []     # every campaign's cat


def test_targeting() -> None:
    doc = {"version": 1, "campaigns": [
        _campaign("geo", [_creative("g", "banner", 300, 250)], targeting={"countries": ["usa"]}),
        _campaign("dev", [_creative("d", "banner", 300, 250)], targeting={"device_types": [4]}),
        _campaign("dom", [_creative("m", "banner", 300, 250)],
                  targeting={"domains": ["foobar.com"]}),
        _campaign("seg", [_creative("s", "banner", 300, 250)],
                  targeting={"segments": ["auto-intenders"]}),
        _campaign("fmt", [_creative("f", "banner", 300, 250)], targeting={"formats": ["video"]}),
    ]}
    store = _store(doc)
    assert _ids(store, _banner(300, 250)) == []
    match_all = _banner(300, 250, device={"devicetype": 4, "geo": {"country": "USA"}},
                        site={"domain": "www.foobar.com"},
                        user={"data": [{"segment": [{"id": "auto-intenders"}]}]})
    assert sorted(_ids(store, match_all)) == ["d", "g", "m", "s"]
    # Without consent under GDPR, segment targeting cannot match.
    no_consent = {**match_all, "regs": {"gdpr": 1}}
    assert sorted(_ids(store, no_consent)) == ["d", "g", "m"]
    other = _banner(300, 250, device={"devicetype": 2, "geo": {"country": "FRA"}},
                    site={"domain": "notfoobar.com"})
    assert _ids(store, other) == []


def test_budget_exhaustion_and_day_rollover() -> None:
    ledger = InMemoryBudgetLedger()
    doc = {"version": 1, "campaigns": [
        _campaign("b", [_creative("b1", "banner", 300, 250)], daily_budget=1.0),
        _campaign("u", [_creative("u1", "banner", 300, 250)], cpc=0.1, daily_budget=None),
    ]}
    store = _store(doc, ledger=ledger)
    assert _ids(store, _banner(300, 250)) == ["b1", "u1"]
    store.record_spend("b", 0.6, DAY)
    store.record_spend("u", 1e9, DAY)
    assert _ids(store, _banner(300, 250)) == ["b1", "u1"]
    store.record_spend("b", 0.4, DAY)
    assert _ids(store, _banner(300, 250)) == ["u1"]
    assert ledger.spent("b", DAY) == pytest.approx(1.0)
    next_day = date(2024, 1, 2)
    assert ledger.spent("b", next_day) == 0.0
    ledger.charge("b", 0.1, next_day)
    ledger.charge("b", 5.0, DAY)            # late charge for a closed day: ignored
    assert ledger.spent("b", next_day) == pytest.approx(0.1)


class _CountingLedger(InMemoryBudgetLedger):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def committed_micros(self, campaign_id: str, day: date) -> int:
        self.reads.append(campaign_id)
        return super().committed_micros(campaign_id, day)


class _HalfPacer(Pacer):
    """Every other draw passes: a campaign's creatives must share one draw."""

    def __init__(self) -> None:
        super().__init__()
        self.draws = 0

    def allow(self, committed_micros: int, budget_micros: int, now: datetime) -> bool:
        self.draws += 1
        return self.draws % 2 == 1


def test_budget_and_pacing_are_read_once_per_campaign_per_imp() -> None:
    creatives = [_creative(f"b{i}", "banner", 300, 250) for i in range(4)]
    doc = {"version": 1, "campaigns": [
        _campaign("b", creatives, daily_budget=10.0),
        _campaign("c", [_creative(f"c{i}", "banner", 300, 250) for i in range(3)], cpc=0.1,
                  daily_budget=10.0),
        _campaign("u", [_creative("u1", "banner", 300, 250)], cpc=0.05, daily_budget=None),
    ]}
    ledger, pacer = _CountingLedger(), _HalfPacer()
    store = _store(doc, ledger=ledger, pacer=pacer)
    req = parse_request(json.dumps(_banner(300, 250)))
    now = datetime(2024, 1, 1, 12, tzinfo=UTC)
    ids = [c.creative.creative_id for c in store.candidates(
        req.imp[0], request_facts(req), Blocklist.from_request(req), DAY, 20, now=now)]
    # b passes its one draw with all four creatives, c fails its one draw with all three;
    # the unbudgeted campaign is neither read nor paced.
    assert ids == ["b0", "b1", "b2", "b3", "u1"]
    assert sorted(ledger.reads) == ["b", "c"]
    assert pacer.draws == 2
    # Spent out: no draw, and none of its creatives.
    store.record_spend("b", 10.0, DAY)
    ledger.reads.clear()
    ids = [c.creative.creative_id for c in store.candidates(
        req.imp[0], request_facts(req), Blocklist.from_request(req), DAY, 20, now=now)]
    assert "b0" not in ids and sorted(ledger.reads) == ["b", "c"] and pacer.draws == 3


def test_file_store_reload(campaign_file: Path) -> None:
    store = FileCampaignStore(campaign_file)
    assert len(store) == 5 and not store.reload_if_changed()
    doc = campaign_doc()
    doc["campaigns"] = doc["campaigns"][:1]
    campaign_file.write_text(json.dumps(doc))
    os.utime(campaign_file, ns=(1, 1))
    assert store.reload_if_changed() and len(store) == 1
    campaign_file.write_text("{")
    os.utime(campaign_file, ns=(2, 2))
    with pytest.raises(CampaignError):
        store.reload_if_changed()
    assert len(store) == 1                  # a bad file leaves the last good campaigns
    assert [c.campaign_id for c in store] == ["c01"]


def test_cpa_value_uses_conversion_rate() -> None:
    doc = campaign_doc()
    store = _store(doc, conversion_rate=0.1)
    video = {"id": "r", "imp": [{"id": "1", "video": {"w": 640, "h": 480}}]}
    req = parse_request(json.dumps(video))
    (cand,) = store.candidates(req.imp[0], request_facts(req), Blocklist(), DAY, 5)
    assert cand.value_per_click == pytest.approx(0.1 * 20.0 * 1000)
    assert cand.ad.topic == 2 and cand.ad.campaign_id == "c02"

"""Bots: three kinds, each with its own signature, none of them converting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simulator import DATACENTER_CIDRS, SimulationError, in_ranges
from simulator.batch import DayEvents
from simulator.bots import (
    BUILTIN_CRAWLER_USER_AGENTS,
    CRAWLER_UA_FILE,
    load_crawler_user_agents,
)
from simulator.devices import ua_catalog
from simulator.population import CRAWLER, DATACENTER, HUMAN, RESIDENTIAL
from simulator.traffic import RequestBatch
from simulator.world import World


def _all(days: list[DayEvents]) -> RequestBatch:
    return RequestBatch.concat([ev.batch for ev in days])


def _clicks(days: list[DayEvents]) -> dict[str, np.ndarray]:
    kind, ctr, clicked, n_clicks, delay = [], [], [], [], []
    for ev in days:
        st = ev.settlement
        o = st.outcomes
        k = st.batch.kind[st.won_rows]
        kind.append(k)
        ctr.append(o.true_ctr)
        clicked.append(o.clicked)
        n_clicks.append(np.bincount(o.click_row, minlength=len(k)))
        first = np.full(len(k), -1, dtype=np.int64)
        first[o.click_row[::-1]] = o.click_ts[::-1]
        delay.append(np.where(o.clicked, (first - o.impression_ts) / 1e6, np.nan))
    return {"kind": np.concatenate(kind), "ctr": np.concatenate(ctr),
            "clicked": np.concatenate(clicked), "n": np.concatenate(n_clicks),
            "delay": np.concatenate(delay)}


def test_all_bot_kinds_present_at_the_configured_share(default_days: list[DayEvents]) -> None:
    b = _all(default_days)
    share = np.bincount(b.kind, minlength=4) / len(b)
    assert 0.09 < 1 - share[HUMAN] < 0.11
    assert all(share[k] > 0.015 for k in (CRAWLER, DATACENTER, RESIDENTIAL))


def test_crawlers_declare_themselves(default_world: World, default_days: list[DayEvents]) -> None:
    b = _all(default_days)
    crawler = b.kind == CRAWLER
    known = set(BUILTIN_CRAWLER_USER_AGENTS)
    if default_world.crawler_ua_source != "builtin":
        known |= set(load_crawler_user_agents(Path(default_world.crawler_ua_source))[0])
    assert set(b.ua[crawler]) <= known
    assert not b.is_app[crawler].any() and (b.user_id[crawler] == "").all()
    assert not set(b.ua[b.kind == HUMAN]) & known


def test_ip_and_user_agent_signatures(default_days: list[DayEvents]) -> None:
    b = _all(default_days)
    dc = b.kind == DATACENTER
    assert in_ranges(b.ip[dc], DATACENTER_CIDRS).all()
    for k in (HUMAN, RESIDENTIAL):
        rows = np.flatnonzero(b.kind == k)[:3000]
        assert not in_ranges(b.ip[rows], DATACENTER_CIDRS).any()
    browsers = set(ua_catalog().ua)
    assert set(b.ua[b.kind == RESIDENTIAL]) <= browsers
    assert any("HeadlessChrome" in u for u in set(b.ua[dc]))


def test_datacenter_bots_have_high_velocity(default_days: list[DayEvents]) -> None:
    b = default_days[0].batch
    per_ip: dict[int, list[int]] = {}
    for k in (HUMAN, DATACENTER):
        _, counts = np.unique(b.ip[b.kind == k], return_counts=True)
        per_ip[k] = counts.tolist()
    assert np.median(per_ip[DATACENTER]) > 20 * np.median(per_ip[HUMAN])
    # ... and rotate through many user ids per IP.
    ips = b.ip[b.kind == DATACENTER]
    users = b.user_id[b.kind == DATACENTER]
    top = ips[0]
    assert len(set(users[ips == top])) > 10


def test_click_behaviour_differs_by_kind(default_days: list[DayEvents]) -> None:
    c = _clicks(default_days)

    def rate(k: int) -> float:
        return float(c["clicked"][c["kind"] == k].mean())

    human = rate(HUMAN)
    assert rate(RESIDENTIAL) > 4 * human
    assert rate(CRAWLER) < human / 5
    for k in (CRAWLER, DATACENTER, RESIDENTIAL):       # interest-blind: one flat rate per kind
        assert np.ptp(c["ctr"][c["kind"] == k]) == pytest.approx(0.0)
    assert np.ptp(c["ctr"][c["kind"] == HUMAN]) > 0.05

    def median_delay(k: int) -> float:
        return float(np.nanmedian(c["delay"][(c["kind"] == k) & c["clicked"]]))

    assert median_delay(RESIDENTIAL) < 2.0 < 3.0 < median_delay(HUMAN)
    assert median_delay(DATACENTER) < 1.0

    def repeated(k: int) -> float:
        return float((c["n"][(c["kind"] == k) & c["clicked"]] > 1).mean())

    assert repeated(RESIDENTIAL) > 0.4 and repeated(HUMAN) < 0.05


def test_bots_never_convert(default_days: list[DayEvents]) -> None:
    for ev in default_days:
        st = ev.settlement
        assert (st.batch.kind[st.won_rows][st.outcomes.conv_row] == HUMAN).all()


def test_builtin_crawler_list_when_file_absent(tmp_path: Path) -> None:
    uas, source = load_crawler_user_agents(tmp_path / "missing.json")
    assert source == "builtin" and uas == BUILTIN_CRAWLER_USER_AGENTS
    assert any("Googlebot" in u for u in uas) and any("bingbot" in u for u in uas)


@pytest.mark.realdata
def test_public_crawler_list_is_read(shared_data: Path) -> None:
    uas, source = load_crawler_user_agents(shared_data / CRAWLER_UA_FILE)
    assert source.endswith("crawler-user-agents.json") and len(uas) > 1000


def test_unreadable_crawler_list_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SimulationError, match="bad.json"):
        load_crawler_user_agents(bad)

"""Ground truth: base CTR and oracle AUC in range, conversions, diurnal traffic."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from simulator.batch import DayEvents
from simulator.population import HUMAN
from simulator.traffic import US_PER_HOUR
from simulator.world import World
from tests.simulator.conftest import auc


def _human_impressions(days: list[DayEvents]) -> tuple[np.ndarray, np.ndarray]:
    ctr, clicked = [], []
    for ev in days:
        st = ev.settlement
        human = st.batch.kind[st.won_rows] == HUMAN
        ctr.append(st.outcomes.true_ctr[human])
        clicked.append(st.outcomes.clicked[human])
    return np.concatenate(ctr), np.concatenate(clicked)


def test_rank_auc_helper_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    score = np.round(rng.random(2000), 2)        # with ties
    label = rng.random(2000) < score
    assert abs(auc(score, label) - roc_auc_score(label, score)) < 1e-12


def test_base_ctr_and_oracle_auc_in_range(default_days: list[DayEvents]) -> None:
    ctr, clicked = _human_impressions(default_days)
    assert len(ctr) > 50_000
    base = clicked.mean()
    assert 0.005 <= base <= 0.03, base
    assert abs(ctr.mean() - base) < 0.002           # realised clicks follow the truth
    oracle = auc(ctr, clicked)
    assert 0.70 <= oracle <= 0.85, oracle


def test_interest_match_drives_clicks(default_world: World, default_days: list[DayEvents]
                                      ) -> None:
    ev = default_days[0]
    st = ev.settlement
    b = st.batch.take(st.won_rows)
    human = b.kind == HUMAN
    topic = default_world.catalog.topic[st.creative[st.won_rows]]
    match = human & (b.group == topic)
    other = human & (b.group != topic)
    assert st.outcomes.true_ctr[match].mean() > 3 * st.outcomes.true_ctr[other].mean()


def test_conversions_only_from_human_clicks_and_delayed(default_days: list[DayEvents]) -> None:
    n_clicks = n_conv = 0
    for ev in default_days:
        o, b = ev.settlement.outcomes, ev.settlement.batch.take(ev.settlement.won_rows)
        assert (b.kind[o.conv_row] == HUMAN).all()
        assert o.clicked[o.conv_row].all()
        first_click = {r: t for r, t in zip(o.click_row[::-1], o.click_ts[::-1], strict=True)}
        delay_s = (o.conv_ts - np.array([first_click[r] for r in o.conv_row])) / 1e6
        assert (delay_s > 0).all() and 60 < np.median(delay_s) < 6 * 3600
        assert (o.conv_value > 0).all()
        n_clicks += int((o.clicked & (b.kind == HUMAN)).sum())
        n_conv += len(o.conv_row)
    assert 0.02 < n_conv / n_clicks < 0.2


def test_traffic_is_diurnal(default_days: list[DayEvents]) -> None:
    b = default_days[0].batch
    hours = (b.ts // US_PER_HOUR) % 24
    per_hour = np.bincount(hours[b.kind == HUMAN], minlength=24)
    assert per_hour.max() > 1.5 * per_hour.min()
    flat = np.bincount(hours[b.kind == 2], minlength=24)        # data-centre bots
    assert flat.max() < 1.5 * flat.min()

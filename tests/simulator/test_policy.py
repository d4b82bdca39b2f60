"""The bootstrap policy: eligible choices, prices at or above the floor, honest propensities."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from simulator import BootstrapPolicy
from simulator.batch import DayEvents
from simulator.geo import COUNTRIES
from simulator.inventory import SIZES
from simulator.policy import Eligibility
from simulator.world import World


def test_choices_are_eligible(default_world: World, default_days: list[DayEvents]) -> None:
    ev = default_days[0]
    d, b, cat = ev.decisions, ev.batch, default_world.catalog
    rows = np.flatnonzero(d.bid)
    cr = d.creative[rows]
    assert np.array_equal(cat.size[cr], b.size[rows])
    assert cat.active[cat.campaign[cr]].all()
    for i in rows[:2000]:
        c = cat.campaigns[int(cat.campaign[d.creative[i]])]
        t = c.targeting
        assert not t.countries or COUNTRIES[b.country[i]].code in t.countries
        assert not t.device_types or int(b.device_type[i]) in t.device_types
        assert not t.domains or default_world.publishers.domain[b.publisher[i]] in t.domains
        assert not t.formats or SIZES[int(b.size[i])].format in t.formats
    assert (d.price[rows] >= b.floor[rows]).all()
    reasons = set(d.reason)
    assert "bid" in reasons and "explore_nobid" in reasons
    # Every eligible creative gets picked: exploration covers the catalogue.
    assert len(np.unique(cr)) > 0.8 * len(cat.creative_id[cat.active[cat.campaign]])


def test_propensity_is_the_density_of_the_logged_action(default_world: World,
                                                        default_days: list[DayEvents]) -> None:
    """Importance weights 1/propensity integrate the price axis: E[1{a<p<b}/f(p)] = b - a."""
    ev = default_days[0]
    b = ev.batch
    policy = BootstrapPolicy()
    elig = Eligibility.for_world(default_world)
    counts = elig.mask(b).sum(axis=1)
    for i in (int(np.flatnonzero((b.floor > 1.0) & (counts > 0))[0]),
              int(np.flatnonzero((b.floor == 0) & (counts > 0))[0])):
        copies = b.take(np.full(200_000, i))
        d = policy.decide(default_world, elig, copies, np.random.default_rng(1))
        bid = d.bid
        assert np.allclose(d.propensity[~bid], policy.nobid_rate)
        assert abs(bid.mean() - (1 - policy.nobid_rate)) < 0.01
        assert (d.price[bid] >= b.floor[i]).all()
        # E[1{creative = c, lo < price < hi} / propensity] = hi - lo for the joint density.
        for cr in np.unique(d.creative[bid])[:2]:
            lo, hi = np.quantile(d.price[bid & (d.creative == cr)], [0.1, 0.6])
            hit = bid & (d.creative == cr) & (d.price > lo) & (d.price < hi)
            est = np.mean(np.where(hit, 1.0 / d.propensity, 0.0))
            assert est == pytest.approx(hi - lo, rel=0.06)


def test_no_eligible_creative_is_a_certain_no_bid(default_world: World,
                                                  default_days: list[DayEvents]) -> None:
    b = default_days[0].batch.take(np.arange(100))
    elig = Eligibility.for_world(default_world)
    nothing = dataclasses.replace(elig, size=np.zeros_like(elig.size))
    d = BootstrapPolicy().decide(default_world, nothing, b, np.random.default_rng(0))
    assert not d.bid.any() and (d.reason == "no_eligible").all()
    assert (d.propensity == 1.0).all() and np.isnan(d.price).all()

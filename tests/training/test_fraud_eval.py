"""Fraud evaluation maths: thresholds at a human FPR, recall per bot kind, flat metrics."""

from __future__ import annotations

import numpy as np
import pytest

from training.fraud_eval import (
    BOT_KINDS,
    average_precision,
    curves_figure,
    evaluate,
    flat_metrics,
    rates_at,
    threshold_for_fpr,
)


def test_threshold_flags_at_most_the_target_share_of_humans() -> None:
    rng = np.random.default_rng(0)
    humans = rng.random(10_000).astype(np.float32)
    t = threshold_for_fpr(humans, 0.01)
    assert np.mean(humans >= np.float32(t)) <= 0.01
    assert np.mean(humans >= np.float32(t)) >= 0.009      # and not needlessly strict


def test_threshold_puts_ties_below_the_line() -> None:
    humans = np.array([0.9] * 5 + [0.1] * 95, dtype=np.float32)
    t = threshold_for_fpr(humans, 0.01)                   # one human allowed, five tied
    assert np.mean(humans >= np.float32(t)) == 0.0
    assert t > 0.9


def test_threshold_is_capped_at_one_when_rules_flag_humans() -> None:
    humans = np.array([1.0] * 3 + [0.2] * 97, dtype=np.float32)
    assert threshold_for_fpr(humans, 0.01) == 1.0


def test_threshold_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="target_fpr"):
        threshold_for_fpr(np.zeros(3), 1.5)
    from adplatform.errors import DataError

    with pytest.raises(DataError, match="no human"):
        threshold_for_fpr(np.zeros(0), 0.01)


def test_evaluate_reports_per_kind_recall_and_the_rules_alone() -> None:
    rng = np.random.default_rng(1)
    n_h = 5000
    kind = np.array([""] * n_h + ["crawler"] * 100 + ["datacenter"] * 100
                    + ["residential"] * 200, dtype=object)
    y = kind != ""
    hit = np.isin(kind, ["crawler", "datacenter"])
    p_model = np.where(y, rng.uniform(0.3, 1.0, len(y)), rng.uniform(0.0, 0.5, len(y)))
    p = np.where(hit, 1.0, p_model).astype(np.float32)
    ev = evaluate(y, kind, p, hit, p_model=p_model, threshold=0.45)
    assert set(ev["per_kind"]) == set(BOT_KINDS)
    assert ev["per_kind"]["crawler"] == 1.0 and ev["per_kind"]["datacenter"] == 1.0
    assert 0.0 < ev["per_kind"]["residential"] < 1.0
    assert ev["rules_only_recall"] == pytest.approx(0.5)
    assert ev["rules_per_kind"]["residential"] == 0.0
    assert ev["rules_only_fpr"] == 0.0
    assert ev["fpr_at_1pct_point"] <= 0.01
    assert ev["recall_at_1pct_fpr"] > ev["rules_only_recall"]
    assert ev["gain_over_rules"] == pytest.approx(ev["recall_at_1pct_fpr"] - 0.5)
    assert 0.5 < ev["pr_auc"] <= 1.0
    assert ev["at_threshold"]["threshold"] == 0.45
    flat = flat_metrics(ev, "test_")
    assert flat["test_per_kind_residential"] == ev["per_kind"]["residential"]
    assert all(isinstance(v, float) for v in flat.values())


def test_rates_and_average_precision_edges() -> None:
    y = np.array([True, False, True, False])
    p = np.array([0.9, 0.1, 0.2, 0.8])
    assert rates_at(y, p, 0.5) == (0.5, 0.5)
    assert np.isnan(average_precision(np.zeros(3, dtype=bool), np.ones(3)))
    with pytest.raises(ValueError, match="lengths"):
        evaluate(y, ["", ""], p, y)


def test_curves_figure_draws_roc_and_pr() -> None:
    rng = np.random.default_rng(2)
    y = rng.random(500) < 0.2
    p = np.clip(y * 0.5 + rng.random(500) * 0.5, 0, 1)
    fig = curves_figure(y, p, y & (rng.random(500) < 0.5), p_model=p, threshold=0.6)
    assert len(fig.axes) == 2

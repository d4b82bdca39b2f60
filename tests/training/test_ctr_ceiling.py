"""The CTR ceiling: partial oracles and the history-only Bayes bound on a simulated log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adplatform.config import Settings
from adplatform.errors import DataError


def test_quality_grid_integrates_the_prior() -> None:
    """E[sigmoid(a + q)], q ~ N(0, sd^2), on the grid matches a large Monte Carlo draw."""
    from training.ctr_ceiling import _grid, _sigmoid

    q, w = _grid(0.6, 21)
    draws = np.random.default_rng(0).normal(0.0, 0.6, 2_000_000)
    for a in (-4.0, -2.0, 0.5):
        exact = float(_sigmoid(a + q) @ w)
        mc = float(_sigmoid(a + draws).mean())
        assert exact == pytest.approx(mc, rel=2e-3)


def test_ceiling_orders_the_predictors(simulated_workspace: Settings) -> None:
    """Knowing more of the truth never loses: oracle <= each partial <= none, in log-loss."""
    from training.ctr_ceiling import CeilingConfig, ctr_ceiling

    c = ctr_ceiling(simulated_workspace, CeilingConfig(holdout_days=1))
    assert c["ceiling_clicks"] > 50
    assert c["ceiling_oracle_logloss"] < c["ceiling_base_logloss"]
    for name in ("no_quality", "no_group", "history"):
        assert c["ceiling_oracle_logloss"] < c[f"ceiling_{name}_logloss"]
        assert c[f"ceiling_{name}_logloss"] < c["ceiling_no_user_logloss"], name
        assert 0.0 < c[f"ceiling_{name}_captured_gain"] < 1.0
    assert c["ceiling_no_user_captured_gain"] > 0.0     # the observable terms alone help
    assert c["ceiling_history_auc"] < c["ceiling_oracle_auc"]


def test_ceiling_needs_a_simulated_workspace(tmp_path: Path) -> None:
    from training.ctr_ceiling import ctr_ceiling

    with pytest.raises(DataError, match="world.json"):
        ctr_ceiling(Settings(home=tmp_path / "ws"))

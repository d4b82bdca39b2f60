"""Small simulated worlds shared by the simulator tests (fast: a few seconds in all)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adplatform.workspace import Workspace
from simulator import SimulationSummary, WorldConfig, build_world, iter_days, simulate
from simulator.batch import DayEvents
from simulator.world import World

SEED = 5
SMALL = WorldConfig(n_users=4_000, n_crawlers=8, n_datacenter_bots=4, datacenter_id_pool=40,
                    n_residential_bots=60)
SMALL_DAYS = 2
SMALL_RPD = 15_000


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """Rank-based ROC AUC (Mann-Whitney U), ties given their average rank."""
    score = np.asarray(score, dtype=np.float64)
    label = np.asarray(label, dtype=bool)
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    n_pos = int(label.sum())
    n_neg = len(label) - n_pos
    return float((ranks[label].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def run_small(root: Path, seed: int = SEED) -> tuple[Workspace, SimulationSummary]:
    ws = Workspace(root).ensure()
    summary = simulate(days=SMALL_DAYS, seed=seed, workspace=ws, config=SMALL,
                       requests_per_day=SMALL_RPD)
    return ws, summary


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, SimulationSummary]:
    """A small two-day batch run written to a workspace."""
    return run_small(tmp_path_factory.mktemp("sim") / "ws")


@pytest.fixture(scope="session")
def default_world() -> World:
    return build_world(seed=SEED)


@pytest.fixture(scope="session")
def default_days(default_world: World) -> list[DayEvents]:
    """Two in-memory days of the default world (the demo's), for statistical checks."""
    return list(iter_days(default_world, 2, 100_000))

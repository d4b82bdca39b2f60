"""Shared fixtures: settings on a temporary workspace, and one trained workspace per session.

Training is the slow part, so the whole suite shares one small simulated world with
features materialized and a CTR model registered (``trained_workspace``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from adplatform.config import Settings, get_settings

SMALL_DAYS = 4
SMALL_REQUESTS_PER_DAY = 12_000
SEED = 11


def make_settings(home: Path, **overrides: object) -> Settings:
    return Settings(home=home, **overrides)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "ws")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The ../shared/data folder; tests that need it skip with a reason when absent."""
    path = get_settings().shared_data
    if not path.exists():
        pytest.skip(f"{path} absent: set ADPLATFORM_SHARED_DATA to the public data samples")
    return path


@pytest.fixture(scope="session")
def simulated_workspace(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A small simulated event log (bootstrap policy), no features or models yet."""
    from simulator import simulate

    s = make_settings(tmp_path_factory.mktemp("sim") / "ws")
    simulate(days=SMALL_DAYS, seed=SEED, workspace=s.workspace.ensure(),
             requests_per_day=SMALL_REQUESTS_PER_DAY)
    return s


@pytest.fixture(scope="session")
def trained_workspace(simulated_workspace: Settings) -> Iterator[Settings]:
    """The simulated workspace with features materialized and `ctr@champion` registered."""
    from features.ops import materialize
    from training.ctr import train_ctr

    materialize(simulated_workspace)
    train_ctr(simulated_workspace)
    yield simulated_workspace


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh ``$ADPLATFORM_HOME`` for commands that read :func:`get_settings`."""
    monkeypatch.setenv("ADPLATFORM_HOME", str(tmp_path / "ws"))
    get_settings.cache_clear()
    yield tmp_path / "ws"
    get_settings.cache_clear()


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"

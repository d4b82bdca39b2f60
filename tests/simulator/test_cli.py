"""The ``simulate`` command on a typer app, writing to $ADPLATFORM_HOME."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from adplatform.config import get_settings
from adplatform.eventlog import read_events
from simulator.cli import register


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("ADPLATFORM_HOME", str(tmp_path / "ws"))
    get_settings.cache_clear()
    yield tmp_path / "ws"
    get_settings.cache_clear()


def test_simulate_command(home: Path) -> None:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Test root (keeps `simulate` a subcommand)."""

    register(app)
    result = CliRunner().invoke(app, ["simulate", "--days", "1", "--seed", "3",
                                      "--requests-per-day", "2000"])
    assert result.exit_code == 0, result.output
    for word in ("requests", "bids", "wins", "impressions", "clicks", "conversions", "CTR",
                 "bot share"):
        assert word in result.output
    assert len(read_events(home / "events", "requests")) == 2000
    assert (home / "world" / "campaigns.json").exists()
    bad = CliRunner().invoke(app, ["simulate", "--days", "0"])
    assert bad.exit_code != 0

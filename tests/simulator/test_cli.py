"""The ``simulate`` command on a typer app, writing to $ADPLATFORM_HOME."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from adplatform.eventlog import read_events
from simulator.cli import register


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Test root (keeps `simulate` a subcommand)."""

    register(app)
    return app


def test_simulate_command(home: Path) -> None:
    app = _app()
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


def test_simulate_with_fewer_users(home: Path) -> None:
    import json

    result = CliRunner().invoke(_app(), ["simulate", "--days", "1", "--seed", "3",
                                      "--requests-per-day", "2000", "--users", "300"])
    assert result.exit_code == 0, result.output
    assert json.loads((home / "world" / "world.json").read_text())["config"]["n_users"] == 300

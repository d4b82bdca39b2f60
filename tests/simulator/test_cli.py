"""The ``simulate`` command on a typer app, writing to $ADPLATFORM_HOME."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from adplatform.eventlog import read_events
from simulator.cli import register


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

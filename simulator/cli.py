"""The ``simulate`` command, registered on the ``adplatform`` CLI by :func:`register`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from simulator.batch import DEFAULT_REQUESTS_PER_DAY, SimulationSummary, simulate


def summary_table(s: SimulationSummary) -> Table:
    """The run's counts and rates as a rich table."""
    table = Table("metric", "value", title=f"simulated {s.days} days (seed {s.seed})")
    rows = [
        ("requests", f"{s.requests:,}"), ("bids", f"{s.bids:,}"),
        ("wins", f"{s.wins:,} ({s.win_rate:.1%} of bids)"),
        ("impressions", f"{s.impressions:,}"), ("clicks", f"{s.clicks:,}"),
        ("conversions", f"{s.conversions:,}"), ("CTR (all clicks / impressions)", f"{s.ctr:.3%}"),
        ("human CTR", f"{s.human_ctr:.3%}"), ("bot share of requests", f"{s.bot_share:.1%}"),
        ("spend (USD)", f"{s.spend:,.2f}"), ("seconds", f"{s.seconds:.1f}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def register(app: typer.Typer) -> None:
    """Add the ``simulate`` command to ``app``."""

    @app.command("simulate")
    def simulate_cmd(
        days: Annotated[int, typer.Option(min=1, help="simulated days of bootstrap traffic")] = 14,
        seed: Annotated[int | None, typer.Option(help="world seed (default: ADPLATFORM_SEED)")
                        ] = None,
        requests_per_day: Annotated[int, typer.Option(min=1, help="bid requests per day")
                                    ] = DEFAULT_REQUESTS_PER_DAY,
        users: Annotated[int | None, typer.Option(
            min=1, help="people in the world (default: WorldConfig.n_users, 50,000); fewer "
                        "means more history per person")] = None,
    ) -> None:
        """Simulate days of traffic under the bootstrap policy into the workspace event log."""
        from adplatform.config import get_settings
        from simulator.world import WorldConfig

        settings = get_settings()
        workspace = settings.workspace.ensure()
        console = Console()
        with Progress(TextColumn("simulating"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("days"), TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task("simulate", total=days)
            config = WorldConfig() if users is None else WorldConfig(n_users=users)
            summary = simulate(days=days, seed=settings.seed if seed is None else seed,
                               workspace=workspace, requests_per_day=requests_per_day,
                               config=config,
                               progress=lambda done, _total: bar.update(task, completed=done))
        console.print(summary_table(summary))
        console.print(f"events in {workspace.events}, truth in {workspace.truth}, "
                      f"world in {workspace.world}")


__all__ = ["register", "summary_table"]

"""``adplatform decisions archive``: the JetStream decision log into the parquet log.

Wire with :func:`register` (``register(app)`` adds the ``decisions`` group). In the
services profile the decision service logs to NATS JetStream; the reports read the
parquet decision log. Run this (by hand, or from cron) before a report::

    ADPLATFORM_PROFILE=services adplatform decisions archive
    adplatform report ab --experiment NAME

It archives what its durable consumer (``--durable``, default ``adplatform-archiver``)
has not archived yet (:func:`decisioning.nats_archive.archive_decisions`, whose
docstring states the guarantees: at least once, duplicates harmless) and prints the
records per day. Exit status: 0 done; 1 NATS unreachable, the stream missing, a disk
error, or messages that were not decision records (terminated, listed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from adplatform.config import Settings, get_settings

Opt = typer.Option


def register(app: typer.Typer, *, settings: Callable[[], Settings] = get_settings,
             console: Console | None = None) -> typer.Typer:
    """Add the ``decisions`` command group to ``app``; returns the group."""
    out = console or Console()
    group = typer.Typer(help="The decision log: archive the services profile's JetStream "
                             "log into the parquet log the reports read.",
                        no_args_is_help=True)
    app.add_typer(group, name="decisions")

    @group.command("archive")
    def archive(
        durable: Annotated[str, Opt(
            help="durable consumer name: it remembers what was archived")] = "adplatform-archiver",
        idle_timeout: Annotated[float, Opt(
            min=0.1, help="stop after this many seconds without a new message")] = 2.0,
        max_messages: Annotated[int | None, Opt(
            min=1, help="stop after this many messages (default: until caught up)")] = None,
        part_size: Annotated[int, Opt(min=1, help="records per parquet part")] = 50_000,
    ) -> None:
        """Copy new decisions from NATS JetStream into the parquet decision log."""
        from decisioning.nats_archive import ArchivedPart, ArchiveError, archive_decisions

        s = settings()
        where = f"{s.nats_stream} ({s.nats_subject}) on {s.nats_url}"
        archived = 0
        with out.status(f"archiving {where}") as status:
            def on_part(part: ArchivedPart) -> None:
                nonlocal archived
                archived += part.records
                status.update(f"archiving {where}: {archived:,} records so far")

            try:
                result = archive_decisions(s, durable=durable, part_size=part_size,
                                           idle_timeout_s=idle_timeout,
                                           max_messages=max_messages, on_part=on_part)
            except ArchiveError as exc:
                out.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None
            except OSError as exc:
                out.print(f"[red]error:[/red] cannot write the decision log under "
                          f"{s.workspace.decisions}: {exc}", highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None
        if result.days:
            table = Table("day", "records", title=f"archived from {s.nats_stream}")
            for day, n in sorted(result.days.items()):
                table.add_row(day, f"{n:,}")
            out.print(table)
        again = f" ({result.redelivered:,} delivered again)" if result.redelivered else ""
        out.print(f"archived {result.records:,} records{again} in {len(result.files)} files "
                  f"under {s.workspace.decisions}", highlight=False, soft_wrap=True)
        if result.pending:
            out.print(f"{result.pending:,} messages left for consumer {durable}: run again",
                      highlight=False)
        if result.rejected_count:
            seqs = ", ".join(map(str, result.rejected))
            out.print(f"[red]{result.rejected_count:,} messages were not decision records "
                      f"and were not archived[/red] (stream sequences {seqs}; see the log)",
                      highlight=False, soft_wrap=True)
            raise typer.Exit(1)

    return group


__all__ = ["register"]

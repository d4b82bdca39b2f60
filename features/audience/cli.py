"""``adplatform audience …``: build the index, import segments, grow lookalikes, write back.

The main CLI adds these commands with :func:`register`::

    adplatform audience build                     # embeddings + Milvus index
    adplatform audience import crm-buyers --file buyers.csv
    adplatform audience lookalike --seed-segment crm-buyers --size 5000
    adplatform audience list
    adplatform audience sync                      # segments -> Feast user_segments
    adplatform audience evaluate --size 500       # simulator only: lift per latent group
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from adplatform.config import get_settings
from adplatform.errors import AdPlatformError

console = Console()

UriOption = Annotated[str | None, typer.Option(
    help="Milvus URI (a server http://host:19530 or a Milvus Lite .db file); "
         "default: ADPLATFORM_MILVUS_URI, else <workspace>/milvus/audience.db")]


def _fail(exc: AdPlatformError) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(1)


def build_cmd(
    dim: Annotated[int, typer.Option(help="embedding dimensions (SVD components)")] = 64,
    uri: UriOption = None,
) -> None:
    """Embed every user of the event log and rebuild the Milvus index."""
    from features.audience.embeddings import EmbeddingConfig
    from features.audience.lookalike import build

    settings = get_settings()
    try:
        with console.status("embedding users and indexing them in Milvus"):
            result = build(settings, EmbeddingConfig(dim=dim, seed=settings.seed), uri=uri)
    except AdPlatformError as exc:
        raise _fail(exc) from exc
    console.print(f"indexed {result.users:,} users ({result.dim} dims, data up to "
                  f"{result.as_of}) in {result.uri} [{result.collection}]: embeddings "
                  f"{result.embed_seconds:.1f}s, index {result.index_seconds:.1f}s")


def import_cmd(
    name: Annotated[str, typer.Argument(help="segment name")],
    file: Annotated[Path, typer.Option(help=".json/.parquet/.csv (user_id) or text file")],
) -> None:
    """Create (or replace) a custom segment from a file of user ids."""
    from features.audience.segments import Segment, read_user_file, save_segment

    settings = get_settings()
    try:
        seg = Segment(name=name, user_ids=tuple(read_user_file(file)), kind="custom",
                      source={"file": str(file)})
        path = save_segment(settings, seg)
    except AdPlatformError as exc:
        raise _fail(exc) from exc
    console.print(f"segment {name}: {len(seg):,} users -> {path}")


def lookalike_cmd(
    size: Annotated[int, typer.Option(min=1, help="users in the lookalike (N)")],
    seed_segment: Annotated[str | None, typer.Option(help="seed: a stored segment")] = None,
    seed_file: Annotated[Path | None, typer.Option(help="seed: a file of user ids")] = None,
    name: Annotated[str | None, typer.Option(
        help="name of the new segment (default <seed>-lookalike-<size>)")] = None,
    write_back: Annotated[bool, typer.Option(
        help="write segment membership to the Feast online store")] = True,
    uri: UriOption = None,
) -> None:
    """Grow a seed segment into the N most similar users (seeds excluded)."""
    from features.audience.lookalike import lookalike
    from features.audience.segments import load_segment, read_user_file
    from features.audience.writeback import write_segments

    settings = get_settings()
    try:
        if seed_segment is not None and seed_file is None:
            seeds = list(load_segment(settings, seed_segment).user_ids)
            label = seed_segment
        elif seed_file is not None and seed_segment is None:
            seeds = read_user_file(seed_file)
            label = seed_file.stem
        else:
            console.print("[red]error:[/red] give exactly one of --seed-segment or --seed-file")
            raise typer.Exit(2)
        target = name or f"{label}-lookalike-{size}"
        with console.status(f"searching {size:,} users like {len(seeds):,} seeds"):
            seg = lookalike(settings, seeds, size, target, uri=uri, seed_segment=seed_segment)
        console.print(f"segment {seg.name}: {len(seg):,} users from {len(seeds):,} seeds "
                      f"({seg.source['seed_users_indexed']:,} indexed); similarity "
                      f"{seg.scores[0] if seg.scores else 0:.3f} .. "
                      f"{seg.scores[-1] if seg.scores else 0:.3f}")
        if write_back:
            with console.status("writing segment membership to Feast"):
                wb = write_segments(settings)
            console.print(f"feast {wb.path.stem}: {wb.members:,} members of {wb.segments} "
                          f"segments online ({wb.changed:,} changed, {wb.removed:,} removed)")
    except AdPlatformError as exc:
        raise _fail(exc) from exc


def list_cmd() -> None:
    """The stored segments."""
    from features.audience.segments import list_segments, load_segment

    settings = get_settings()
    table = Table()
    table.add_column("segment", overflow="fold", ratio=2)
    for col in ("kind", "users", "data as of", "seed"):
        table.add_column(col, overflow="fold", ratio=1)
    try:
        for n in list_segments(settings):
            seg = load_segment(settings, n)
            table.add_row(seg.name, seg.kind, f"{len(seg):,}",
                          f"{seg.as_of:%Y-%m-%d %H:%M}" if seg.as_of else "",
                          str(seg.source.get("seed_segment") or ""))
    except AdPlatformError as exc:
        raise _fail(exc) from exc
    console.print(table)


def sync_cmd() -> None:
    """Write every stored segment's membership to Feast (offline log and online store)."""
    from features.audience.writeback import write_segments

    try:
        wb = write_segments(get_settings())
    except AdPlatformError as exc:
        raise _fail(exc) from exc
    console.print(f"{wb.segments} segments, {wb.members:,} members online "
                  f"({wb.changed:,} changed, {wb.removed:,} removed) as of {wb.as_of}")


def evaluate_cmd(
    size: Annotated[int, typer.Option(min=1, help="lookalike size N")] = 500,
    groups: Annotated[str, typer.Option(help="latent groups, comma-separated")] = "0,1,2,3",
    seed_fraction: Annotated[float, typer.Option(help="share of the group used as seed")] = 0.1,
    uri: UriOption = None,
) -> None:
    """Simulator only: precision@N of lookalikes seeded from latent interest groups."""
    from features.audience.evaluate import evaluate_lookalike, user_groups

    settings = get_settings()
    try:
        wanted = [int(g) for g in groups.split(",") if g.strip()]
    except ValueError as exc:
        console.print(f"[red]error:[/red] --groups: {exc}")
        raise typer.Exit(2) from exc
    table = Table("group", "seeds", "N", "precision@N", "share", "lift")
    try:
        truth = user_groups(settings.workspace)
        for g in wanted:
            q = evaluate_lookalike(settings, g, size, seed_fraction=seed_fraction,
                                   groups=truth, uri=uri)
            table.add_row(str(g), f"{q.seeds:,}", f"{q.size:,}", f"{q.precision:.3f}",
                          f"{q.share:.3f}", f"{q.ratio:.2f}x")
    except AdPlatformError as exc:
        raise _fail(exc) from exc
    console.print(table)


def register(app: typer.Typer) -> typer.Typer:
    """Add the ``audience`` sub-app to ``app``; returns the sub-app."""
    sub = typer.Typer(help="Audiences: user embeddings in Milvus, lookalike segments, "
                           "segment membership in Feast.", no_args_is_help=True)
    sub.command("build")(build_cmd)
    sub.command("import")(import_cmd)
    sub.command("lookalike")(lookalike_cmd)
    sub.command("list")(list_cmd)
    sub.command("sync")(sync_cmd)
    sub.command("evaluate")(evaluate_cmd)
    app.add_typer(sub, name="audience")
    return sub


__all__ = ["register"]

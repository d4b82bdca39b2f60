"""``adplatform campaign create|list|update|pause|resume``.

Wire with :func:`register` (``register(app)`` adds the ``campaign`` group). The store is
the workspace's campaign file (``world/campaigns.json``) in the embedded profile and the
PostgreSQL table (``settings.postgres_dsn``, schema ``settings.postgres_schema``: default
``adplatform``, the one ``adplatform serve`` reads) in the services profile;
``--store file|postgres`` and ``--schema`` override. Every field is validated by the
same model the decision service loads, and a bad value is reported with its field name::

    adplatform campaign create --id c42 --adomain shoes.example --goal cpc --cpc 0.8 \\
        --daily-budget 250 --frequency-cap 3 --country USA \\
        --creative cr42a:banner:300x250 --creative cr42v:video:640x480:2
    adplatform campaign update c42 --cpc 0.9 --daily-budget 300
    adplatform campaign pause c42
    adplatform campaign list
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from adplatform.config import Settings, get_settings
from decisioning.campaign_repo import (
    CampaignRepository,
    FileCampaignRepository,
    PostgresCampaignRepository,
)
from decisioning.campaigns import Campaign, validate_campaign
from decisioning.errors import CampaignError

_FORMATS = ("banner", "video", "native", "audio")
Opt = typer.Option
StoreOpt = Annotated[str | None, Opt("--store", help="file | postgres (default: profile)")]
SchemaOpt = Annotated[str | None, Opt(
    "--schema", help="PostgreSQL schema (default: ADPLATFORM_POSTGRES_SCHEMA, adplatform)")]


def parse_creative(spec: str) -> dict[str, Any]:
    """``ID:FORMAT[:WxH][:TOPIC]`` → a creative mapping; :class:`CampaignError` if bad."""
    parts = spec.split(":")
    where = f"--creative {spec!r}"
    if len(parts) < 2 or not parts[0]:
        raise CampaignError(f"{where}: expected ID:FORMAT[:WxH][:TOPIC]")
    if parts[1] not in _FORMATS:
        raise CampaignError(f"{where}: format must be one of {', '.join(_FORMATS)}")
    out: dict[str, Any] = {"creative_id": parts[0], "format": parts[1]}
    rest = parts[2:]
    if rest and "x" in rest[0]:
        w, _, h = rest.pop(0).partition("x")
        if not (w.isdigit() and h.isdigit()):
            raise CampaignError(f"{where}: size must be WxH with whole numbers, e.g. 300x250")
        out["w"], out["h"] = int(w), int(h)
    if rest:
        topic = rest.pop(0)
        if not topic.lstrip("-").isdigit():
            raise CampaignError(f"{where}: topic must be a whole number, got {topic!r}")
        out["topic"] = int(topic)
    if rest:
        raise CampaignError(f"{where}: unexpected {':'.join(rest)!r}")
    return out


def repository(settings: Settings, store: str | None,
               schema: str | None = None) -> CampaignRepository:
    """The campaign store the commands edit; ``schema`` None: ``settings.postgres_schema``
    (the one ``adplatform serve`` reads)."""
    kind = store or ("postgres" if settings.profile == "services" else "file")
    if kind == "postgres":
        return PostgresCampaignRepository(settings.postgres_dsn,
                                          schema=settings.postgres_schema if schema is None
                                          else schema)
    if kind == "file":
        return FileCampaignRepository(settings.workspace.world / "campaigns.json")
    raise CampaignError(f"--store must be 'file' or 'postgres', got {kind!r}")


def _targeting(country: list[str] | None, device_type: list[int] | None,
               domain: list[str] | None, fmt: list[str] | None,
               segment: list[str] | None) -> dict[str, list[Any]]:
    given = {"countries": country, "device_types": device_type, "domains": domain,
             "formats": fmt, "segments": segment}
    return {k: v for k, v in given.items() if v}


def register(app: typer.Typer, *, settings: Callable[[], Settings] = get_settings,
             console: Console | None = None) -> typer.Typer:
    """Add the ``campaign`` command group to ``app``; returns the group."""
    out = console or Console()
    group = typer.Typer(help="Campaigns: create, list, update, pause, resume.",
                        no_args_is_help=True)
    app.add_typer(group, name="campaign")

    def run(action: Callable[[], None]) -> None:
        try:
            action()
        except CampaignError as exc:
            out.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    @group.command("create")
    def create(
        campaign_id: Annotated[str | None, Opt("--id", help="campaign id")] = None,
        advertiser: Annotated[str, Opt(help="advertiser name")] = "",
        adomain: Annotated[list[str] | None, Opt(help="advertiser domain (repeat)")] = None,
        cat: Annotated[list[str] | None, Opt(help="IAB category (repeat)")] = None,
        goal: Annotated[str | None, Opt(help="cpc | cpa")] = None,
        cpc: Annotated[float | None, Opt(help="value of a click")] = None,
        cpa: Annotated[float | None, Opt(help="value of a conversion")] = None,
        daily_budget: Annotated[float | None, Opt(help="USD per UTC day")] = None,
        frequency_cap: Annotated[int | None, Opt(help="impressions per user per day")] = None,
        status: Annotated[str, Opt(help="active | paused | ended")] = "active",
        country: Annotated[list[str] | None, Opt(help="target country (repeat)")] = None,
        device_type: Annotated[list[int] | None, Opt(help="target devicetype (repeat)")] = None,
        domain: Annotated[list[str] | None, Opt(help="target domain/bundle (repeat)")] = None,
        fmt: Annotated[list[str] | None, Opt("--format", help="target format (repeat)")] = None,
        segment: Annotated[list[str] | None, Opt(help="target segment id (repeat)")] = None,
        creative: Annotated[list[str] | None, Opt(
            help="ID:FORMAT[:WxH][:TOPIC] (repeat)")] = None,
        from_json: Annotated[Path | None, Opt(help="a campaign JSON object instead")] = None,
        store: StoreOpt = None, schema: SchemaOpt = None,
    ) -> None:
        """Create a campaign (validated; ids unique)."""
        def action() -> None:
            if from_json is not None:
                try:
                    doc = json.loads(from_json.read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    raise CampaignError(f"{from_json}: cannot read a JSON campaign: {exc}") \
                        from None
            else:
                doc = {"campaign_id": campaign_id or "", "advertiser": advertiser,
                       "adomain": adomain or [], "cat": cat or [], "goal": goal,
                       "cpc": cpc, "cpa": cpa, "daily_budget": daily_budget,
                       "frequency_cap": frequency_cap, "status": status,
                       "targeting": _targeting(country, device_type, domain, fmt, segment),
                       "creatives": [parse_creative(s) for s in creative or []]}
            c = validate_campaign(doc, "campaign")
            repository(settings(), store, schema).create(c)
            out.print(f"created campaign {c.campaign_id} ({len(c.creatives)} creatives)")
        run(action)

    @group.command("list")
    def list_(store: StoreOpt = None, schema: SchemaOpt = None) -> None:
        """List campaigns."""
        def action() -> None:
            t = Table("id", "status", "goal", "value", "daily budget", "freq cap",
                      "creatives", "advertiser")
            for c in repository(settings(), store, schema).list():
                t.add_row(c.campaign_id, c.status, c.goal,
                          f"{c.cpc if c.goal == 'cpc' else c.cpa:g}",
                          "-" if c.daily_budget is None else f"{c.daily_budget:,.2f}",
                          "-" if c.frequency_cap is None else str(c.frequency_cap),
                          str(len(c.creatives)), c.advertiser)
            out.print(t)
        run(action)

    @group.command("update")
    def update(
        campaign_id: Annotated[str, typer.Argument(help="campaign id")],
        advertiser: Annotated[str | None, Opt()] = None,
        goal: Annotated[str | None, Opt(help="cpc | cpa")] = None,
        cpc: Annotated[float | None, Opt()] = None,
        cpa: Annotated[float | None, Opt()] = None,
        daily_budget: Annotated[float | None, Opt(help="USD per UTC day")] = None,
        unlimited_budget: Annotated[bool, Opt(help="remove the daily budget")] = False,
        frequency_cap: Annotated[int | None, Opt()] = None,
        no_frequency_cap: Annotated[bool, Opt(help="remove the frequency cap")] = False,
        status: Annotated[str | None, Opt(help="active | paused | ended")] = None,
        adomain: Annotated[list[str] | None, Opt(help="replaces the list")] = None,
        cat: Annotated[list[str] | None, Opt(help="replaces the list")] = None,
        country: Annotated[list[str] | None, Opt(help="replaces targeting countries")] = None,
        device_type: Annotated[list[int] | None, Opt()] = None,
        domain: Annotated[list[str] | None, Opt()] = None,
        fmt: Annotated[list[str] | None, Opt("--format")] = None,
        segment: Annotated[list[str] | None, Opt()] = None,
        creative: Annotated[list[str] | None, Opt(help="replaces the creatives")] = None,
        store: StoreOpt = None, schema: SchemaOpt = None,
    ) -> None:
        """Change fields of a campaign (the result is validated as a whole)."""
        def action() -> None:
            changes: dict[str, Any] = {k: v for k, v in {
                "advertiser": advertiser, "goal": goal, "cpc": cpc, "cpa": cpa,
                "daily_budget": daily_budget, "frequency_cap": frequency_cap,
                "status": status, "adomain": adomain, "cat": cat}.items() if v is not None}
            if unlimited_budget:
                changes["daily_budget"] = None
            if no_frequency_cap:
                changes["frequency_cap"] = None
            if creative:
                changes["creatives"] = [parse_creative(s) for s in creative]
            repo = repository(settings(), store, schema)
            targeting = _targeting(country, device_type, domain, fmt, segment)
            if targeting:
                current = repo.get(campaign_id).targeting.model_dump()
                changes["targeting"] = {**current, **targeting}
            if not changes:
                raise CampaignError("nothing to change: give at least one option")
            c = repo.update(campaign_id, changes)
            out.print(f"updated campaign {c.campaign_id}: {', '.join(sorted(changes))}")
        run(action)

    def set_status(campaign_id: str, status: str, store: str | None,
                   schema: str | None) -> None:
        def action() -> None:
            c: Campaign = repository(settings(), store, schema).update(
                campaign_id, {"status": status})
            out.print(f"campaign {c.campaign_id} is {c.status}")
        run(action)

    @group.command("pause")
    def pause(campaign_id: Annotated[str, typer.Argument(help="campaign id")],
              store: StoreOpt = None, schema: SchemaOpt = None) -> None:
        """Stop bidding for a campaign (status paused)."""
        set_status(campaign_id, "paused", store, schema)

    @group.command("resume")
    def resume(campaign_id: Annotated[str, typer.Argument(help="campaign id")],
               store: StoreOpt = None, schema: SchemaOpt = None) -> None:
        """Bid again for a paused campaign (status active)."""
        set_status(campaign_id, "active", store, schema)

    return group


__all__ = ["parse_creative", "register", "repository"]

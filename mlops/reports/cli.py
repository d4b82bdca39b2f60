"""The ``adplatform report`` commands (``ab``, ``delivery``, ``drift``).

:func:`register` adds the ``report`` sub-app to the ``adplatform`` CLI (as
:func:`simulator.cli.register` adds ``simulate``). Every command reads the workspace of
:func:`adplatform.config.get_settings`, writes ``<name>.html`` and ``<name>.json`` into
``--out`` (default ``<workspace>/reports``) and prints a summary. Decisions come from the
event log and the live service's decision log (``--source``).
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from adplatform.config import Settings
    from mlops.reports.drift import Window
    from mlops.reports.events import DecisionSource, Unit

report_app = typer.Typer(help="Analytics reports: A/B experiments, delivery, drift (HTML + JSON).",
                         no_args_is_help=True)
console = Console()

Source = Annotated[str, typer.Option(help="decisions from: all | events | live")]
Out = Annotated[Path | None, typer.Option("--out", help="output folder (default: "
                                                        "<workspace>/reports)")]


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]{message}", soft_wrap=True)
    return typer.Exit(2)


def _split(text: str) -> dict[str, float]:
    """``control=0.5,treatment=0.5`` → {arm: share}."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        arm, sep, share = part.partition("=")
        try:
            out[arm.strip()] = float(share) if sep else 1.0
        except ValueError:
            raise _fail(f"--split: bad share in {part!r} (expected arm=share)") from None
    return out


def _source(source: str) -> DecisionSource:
    if source not in ("all", "events", "live"):
        raise _fail(f"--source must be all, events or live, got {source!r}")
    return cast("DecisionSource", source)


@report_app.command("ab")
def ab(
    experiment: Annotated[str, typer.Option("--experiment", help="experiment name")],
    out: Out = None,
    spec: Annotated[Path | None, typer.Option(
        help="experiment JSON (default: <workspace>/experiments/NAME.json if present)")] = None,
    split: Annotated[str | None, typer.Option(
        help="planned split, e.g. control=0.5,treatment=0.5 (default: the spec file, else "
             "the variants NAME:<arm> in equal shares)")] = None,
    control: Annotated[str | None, typer.Option(help="control arm")] = None,
    unit: Annotated[str, typer.Option(help="randomisation unit: user | request")] = "user",
    start: Annotated[datetime | None, typer.Option(help="experiment start (UTC)")] = None,
    end: Annotated[datetime | None, typer.Option(help="experiment end (UTC)")] = None,
    pre_days: Annotated[float | None, typer.Option(
        help="CUPED pre-period in days (default: the spec's, else 7)")] = None,
    alpha: Annotated[float, typer.Option(help="significance level")] = 0.05,
    looks: Annotated[int, typer.Option(help="looks of the running / sequential analysis")] = 20,
    source: Source = "all",
) -> None:
    """A/B report of experiment NAME: per-arm metrics, delta-method CIs, CUPED, mSPRT, SRM."""
    from dataclasses import replace

    from adplatform.config import get_settings
    from mlops.reports import (
        ExperimentSpec,
        Outcomes,
        ReportError,
        ab_report,
        infer_experiment,
        load_campaigns,
        load_decisions,
        load_experiment,
    )

    if unit not in ("user", "request"):
        raise _fail(f"--unit must be user or request, got {unit!r}")
    ws = get_settings().workspace
    try:
        with console.status("loading decisions and outcomes"):
            decisions = load_decisions(ws, source=_source(source))
            outcomes = Outcomes.from_events(ws.events)
        spec_path = spec or ws.root / "experiments" / f"{experiment}.json"
        if spec_path.exists():
            exp: ExperimentSpec = load_experiment(spec_path)
        elif spec is not None:
            raise _fail(f"{spec}: no such experiment file")
        else:
            exp = infer_experiment(experiment, decisions,
                                   split=_split(split) if split else None, control=control,
                                   unit=cast("Unit", unit))
        exp = replace(exp, start=start or exp.start, end=end or exp.end,
                      pre_days=exp.pre_days if pre_days is None else pre_days,
                      control=control or exp.control)
        campaigns_file = ws.world / "campaigns.json"
        campaigns = load_campaigns(campaigns_file) if campaigns_file.exists() else None
        with console.status(f"analysing {exp.name}"):
            report = ab_report(decisions, outcomes, exp, campaigns=campaigns, alpha=alpha,
                               looks=looks)
            html, js = report.write(out or ws.reports)
    except ReportError as exc:
        raise _fail(str(exc)) from exc
    table = Table("metric", "arm", "control", "arm value", "lift", "p", "verdict",
                  "p (always valid)", "sequential", title=f"experiment {exp.name}")
    for r in report.results:
        c = r.comparison
        table.add_row(r.metric, r.arm, f"{c.control:.4g}", f"{c.treatment:.4g}",
                      f"{c.lift:+.2%}", f"{c.p_value:.4f}", r.verdict, f"{r.sequential_p:.4f}",
                      r.sequential_verdict,
                      style="green" if r.verdict == "better" else "red"
                      if r.verdict == "worse" else None)
    console.print(table)
    for w in report.warnings:
        console.print(f"[yellow]warning: {w}", soft_wrap=True)
    console.print(f"wrote {html} and {js}", soft_wrap=True)


@report_app.command("delivery")
def delivery(
    day: Annotated[datetime, typer.Option("--date", formats=["%Y-%m-%d"],
                                          help="UTC day, YYYY-MM-DD")],
    out: Out = None,
    source: Source = "all",
) -> None:
    """Delivery of one day per campaign and publisher, with pacing against daily budgets."""
    from adplatform.config import get_settings
    from mlops.reports import (
        Outcomes,
        ReportError,
        delivery_report,
        load_campaigns,
        load_decisions,
    )

    ws = get_settings().workspace
    d: date = day.date()
    try:
        with console.status(f"delivery of {d.isoformat()}"):
            decisions = load_decisions(ws, source=_source(source), start=d, end=d)
            outcomes = Outcomes.from_events(ws.events)
            report = delivery_report(decisions, outcomes,
                                     load_campaigns(ws.world / "campaigns.json"), d)
            html, js = report.write(out or ws.reports)
    except ReportError as exc:
        raise _fail(str(exc)) from exc
    t = report.totals
    console.print(f"{d.isoformat()}: {t.requests:,} requests, {t.bids:,} bids, "
                  f"{t.impressions:,} impressions, {t.clicks:,} clicks, spend {t.spend:,.2f} USD")
    flagged = [r for r in report.campaigns if r.flags]
    if flagged:
        table = Table("campaign", "spend", "budget", "pacing", "flags", title="flagged")
        for r in flagged:
            table.add_row(r.key, f"{r.spend:,.2f}", f"{r.daily_budget:,.2f}",
                          f"{r.pacing:.1%}", ", ".join(r.flags))
        console.print(table)
    console.print(f"wrote {html} and {js}", soft_wrap=True)


def _training_window(settings: Settings, model: str) -> Window:
    """The ``training_window`` tag of ``models:/NAME@ALIAS``."""
    import mlflow

    from mlops.registry import configure
    from mlops.reports import ReportError, Window

    name, _, alias = model.partition("@")
    client = configure(settings)
    try:
        mv = client.get_model_version_by_alias(name, alias or "champion")
    except mlflow.exceptions.MlflowException as exc:
        raise ReportError(f"models:/{model}: {exc}") from exc
    tag = mv.tags.get("training_window")
    if not tag:
        raise ReportError(f"models:/{model} has no training_window tag")
    return Window.parse(tag)


@report_app.command("drift")
def drift(
    out: Out = None,
    reference: Annotated[str | None, typer.Option(
        help="reference window START/END (ISO, UTC); default: --reference-model's training "
             "window, else the --reference-days before the current window")] = None,
    current: Annotated[str | None, typer.Option(
        help="current window START/END; default: the last --recent-days of data")] = None,
    reference_model: Annotated[str | None, typer.Option(
        help="take the reference window from models:/NAME@ALIAS, e.g. ctr@champion")] = None,
    recent_days: Annotated[float, typer.Option(
        help="days in the default current window (up to the newest data)")] = 1.0,
    reference_days: Annotated[float, typer.Option(
        help="days in the default reference window (before the current one)")] = 7.0,
    psi: Annotated[float, typer.Option(help="PSI above which a feature drifted")] = 0.2,
    calibration: Annotated[tuple[float, float], typer.Option(
        help="healthy observed/expected clicks range")] = (0.9, 1.1),
    fail_on_drift: Annotated[bool, typer.Option(help="exit 1 when anything is flagged")] = False,
    source: Source = "all",
) -> None:
    """PSI per feature, live calibration per model version, win-rate and bid-price drift."""
    from adplatform.config import get_settings
    from mlops.reports import (
        REQUEST_FEATURE_COLUMNS,
        DriftThresholds,
        Outcomes,
        ReportError,
        Window,
        drift_report,
        load_decisions,
        load_feature_tables,
    )

    settings = get_settings()
    ws = settings.workspace
    try:
        with console.status("loading decisions, requests and feature tables"):
            decisions = load_decisions(ws, source=_source(source))
            outcomes = Outcomes.from_events(ws.events, request_columns=REQUEST_FEATURE_COLUMNS)
            tables = load_feature_tables(ws.feature_repo / "offline")
        ref = Window.parse(reference) if reference else None
        if ref is None and reference_model:
            ref = _training_window(settings, reference_model)
        cur = Window.parse(current) if current else None
        th = DriftThresholds(psi=psi, calibration=calibration)
        with console.status("computing drift"):
            report = drift_report(decisions, outcomes, reference=ref, current=cur,
                                  feature_tables=tables, recent_days=recent_days,
                                  reference_days=reference_days, thresholds=th)
            html, js = report.write(out or ws.reports)
    except ReportError as exc:
        raise _fail(str(exc)) from exc
    for line in report.flagged:
        console.print(f"[red]flagged: {line}", soft_wrap=True)
    for w in report.warnings:
        console.print(f"[yellow]warning: {w}", soft_wrap=True)
    if not report.flagged:
        console.print("[green]nothing flagged")
    console.print(f"wrote {html} and {js}", soft_wrap=True)
    if fail_on_drift and report.flagged:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the ``report`` sub-app to ``app``."""
    app.add_typer(report_app, name="report")


__all__ = ["register", "report_app"]

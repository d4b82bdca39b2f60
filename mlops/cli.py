"""The ``adplatform`` command line.

Every command reads :func:`adplatform.config.get_settings` (``ADPLATFORM_*``), writes
under the workspace, and shows a rich progress display for anything slow.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from adplatform.config import get_settings

app = typer.Typer(help="AdPlatform: an ML decisioning platform for programmatic advertising.",
                  no_args_is_help=True, add_completion=False)
features_app = typer.Typer(help="Feast feature store: apply definitions, materialize.",
                           no_args_is_help=True)
train_app = typer.Typer(help="Train models and register them in MLflow.", no_args_is_help=True)
app.add_typer(features_app, name="features")
serving_app = typer.Typer(help="Model serving backends: Triton, BentoML.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(serving_app, name="serving")

console = Console()


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log at INFO")] = False
          ) -> None:
    _setup_logging(verbose)


@features_app.command("apply")
def features_apply() -> None:
    """Register entities, feature views and feature services in the workspace registry."""
    from features.ops import apply

    settings = get_settings()
    with console.status("feast apply"):
        store = apply(settings)
    views = sorted(v.name for v in store.list_feature_views())
    services = sorted(s.name for s in store.list_feature_services())
    console.print(f"applied views {views} and services {services}")


@features_app.command("materialize")
def features_materialize(
    offline_only: Annotated[bool, typer.Option(
        "--offline-only", help="write the offline store (what training reads) only")] = False,
) -> None:
    """Compute batch features from the event log and load the online store (incremental)."""
    from features.ops import build_offline, materialize

    settings = get_settings()
    if offline_only:
        with console.status("computing batch features (offline store only)"):
            rows = build_offline(settings)
    else:
        with console.status("computing batch features and materializing"):
            result = materialize(settings)
        rows = result.rows
    table = Table("feature view", "offline rows")
    for name, n in rows.items():
        table.add_row(name, f"{n:,}")
    console.print(table)
    if not offline_only:
        console.print(f"online store loaded up to {result.end.isoformat()}")


@features_app.command("skew")
def features_skew(
    sample: Annotated[int, typer.Option(help="entities sampled per view")] = 500,
    threshold: Annotated[float, typer.Option(help="highest mismatch rate allowed")] = 0.0,
) -> None:
    """Compare offline point-in-time values with online values; exit 1 above the threshold."""
    from features.skew import skew_check

    report = skew_check(get_settings(), sample=sample, threshold=threshold)
    table = Table("feature", "mismatch rate", title=f"skew as of {report.as_of}")
    for name, rate in sorted(report.mismatch.items()):
        table.add_row(name, f"{rate:.2%}", style="red" if rate > threshold else None)
    console.print(table)
    if not report.ok:
        console.print(f"[red]skew {report.worst:.2%} above threshold {threshold:.2%}")
        raise typer.Exit(1)


@train_app.command("ctr")
def train_ctr_cmd() -> None:
    """Train the LightGBM CTR model on ctr_v1 features; register `ctr` in MLflow."""
    from training.ctr import train_ctr

    settings = get_settings()
    with console.status("training CTR (Feast point-in-time join, LightGBM, ONNX, MLflow)"):
        result = train_ctr(settings)
    _print_metrics(f"ctr version {result.version} -> @{result.alias}", result.metrics)


@train_app.command("fraud")
def train_fraud_cmd(
    target_fpr: Annotated[float, typer.Option(help="FPR on human requests the threshold allows")
                          ] = 0.01,
    human_keep: Annotated[float, typer.Option(help="share of human requests kept for fitting")
                          ] = 1.0,
) -> None:
    """Train the fraud (IVT) model on fraud_v1 + GIVT rules; register `fraud` in MLflow."""
    from training.fraud import FraudConfig, train_fraud

    settings = get_settings()
    with console.status("training fraud (Feast point-in-time join, LightGBM + rules, ONNX, MLflow)"):
        result = train_fraud(settings, FraudConfig(target_fpr=target_fpr, human_keep=human_keep))
    ev = result.evaluation
    _print_metrics(f"fraud version {result.version} -> @{result.alias}, "
                   f"threshold {result.threshold:.6g}",
                   {"pr_auc": ev["pr_auc"], "recall_at_1pct_fpr": ev["recall_at_1pct_fpr"],
                    "rules_only_recall": ev["rules_only_recall"],
                    **{f"recall_{k}": v for k, v in ev["per_kind"].items()},
                    "test_fpr_at_threshold": ev["at_threshold"]["fpr"]})


@train_app.command("shading")
def train_shading_cmd(
    evaluate: Annotated[bool, typer.Option(
        help="evaluate surplus on the simulator's truth and DRSA 2259 when present")] = True,
) -> None:
    """Train the censored bid-landscape model on shading_v1; register `shading` in MLflow."""
    from training.shading import train_shading

    settings = get_settings()
    with console.status("training bid shading (Feast join, censored likelihood, ONNX, MLflow)"):
        result = train_shading(settings, evaluate=evaluate)
    keys = ("test_nll", "test_loglik_model", "test_loglik_km", "test_win_auc",
            "test_win_calibration", "n_train", "n_test")
    shown = {k: result.metrics[k] for k in keys if k in result.metrics}
    _print_metrics(f"shading version {result.version} -> @{result.alias}",
                   {**shown, **result.evaluation})


@train_app.command("all")
def train_all_cmd(
    report: Annotated[Path | None, typer.Option(help="write the report JSON here")] = None,
    size: Annotated[str, typer.Option(
        help="small: quick (fewer rounds, reduced real-data protocol); full: the quality "
             "run (needs >= 14 days and >= 5,000 held-out clicks)")] = "small",
    deep: Annotated[bool, typer.Option(help="train the DCN-v2 CTR model too")] = False,
    real: Annotated[bool, typer.Option(help="real-data comparisons (../shared/data)")] = True,
    force: Annotated[bool, typer.Option(
        help="run --size full on a smaller workspace (warn instead of refusing)")] = False,
) -> None:
    """Train fraud, then CTR on fraud-filtered data, then shading; register all three."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from adplatform.errors import ConfigError
    from training.pipeline import SIZES, STAGES, train_all

    if size not in SIZES:
        raise typer.BadParameter(f"--size must be one of {', '.join(SIZES)}")
    settings = get_settings()
    labels = {"fraud": "fraud (IVT) LightGBM + rules", "ctr": "CTR LightGBM, fraud-filtered",
              "ctr_deep": "CTR DCN-v2", "shading": "bid shading (censored landscape)",
              "real": "real data: Criteo, TalkingData"}
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        tasks = {name: progress.add_task(f"[dim]{labels[name]}", total=1, start=False)
                 for name in STAGES}

        def on_stage(name: str, event: str, detail: str) -> None:
            task = tasks[name]
            if event == "start":
                progress.start_task(task)
                progress.update(task, description=f"[bold]{labels[name]}")
            else:
                mark = "[green]done" if event == "done" else "[yellow]skipped"
                progress.update(task, completed=1,
                                description=f"{labels[name]}: {mark}[/] {detail}")
                progress.stop_task(task)

        try:
            result = train_all(settings, size=size, report=report,  # type: ignore[arg-type]
                               deep=deep, real=real, force=force, on_stage=on_stage)
        except ConfigError as exc:
            console.print(f"[red]{exc}")
            raise typer.Exit(2) from exc
    _print_report(result)
    if report is not None:
        console.print(f"report: {report}")


def _print_report(report: dict[str, Any]) -> None:
    table = Table("model", "metric", "value", title=f"train all --size {report['size']}")
    for section in ("fraud", "ctr", "ctr_deep", "shading"):
        for k, v in report.get(section, {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                table.add_row(section, k, f"{v:.6g}")
            elif isinstance(v, str):
                table.add_row(section, k, v)
    for name, figures in report.get("real", {}).items():
        for k, v in figures.items():
            table.add_row(f"real/{name}", k, f"{v:.6g}" if isinstance(v, float) else str(v))
    console.print(table)
    for msg in report.get("warnings", []):
        console.print(f"[yellow]warning: {msg}")


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    table = Table("metric", "value", title=title)
    for k, v in metrics.items():
        table.add_row(k, f"{v:.6g}")
    console.print(table)


@app.command()
def serve(port: Annotated[int, typer.Option(help="TCP port")] = 8080,
          host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
          watch_interval: Annotated[float, typer.Option(
              help="seconds between registry polls for alias moves; 0 disables")] = 5.0,
          experiment: Annotated[str | None, typer.Option(
              help="run A/B experiment NAME: ctr@champion vs ctr@challenger (aliases pinned "
                   "at start); report it with `adplatform report ab --experiment NAME`")] = None,
          share: Annotated[float, typer.Option(
              help="with --experiment: share of users (or requests) on the challenger")] = 0.5,
          notice_base_url: Annotated[str | None, typer.Option(
              help="notice routes as exchanges reach them (nurl/burl/lurl base, e.g. "
                   "https://bidder.example/notice); default ADPLATFORM_NOTICE_BASE_URL, "
                   "else http://HOST:PORT/notice")] = None,
          workers: Annotated[int, typer.Option(
              min=1, help="worker processes on the port (one core each); budgets, caps and "
                          "notice dedupe are shared (SQLite in the workspace, or Redis "
                          "with the services profile)")] = 1,
          ) -> None:
    """Run the decision service (OpenRTB bidder) over HTTP."""
    settings = get_settings()
    if notice_base_url:
        settings = settings.model_copy(update={"notice_base_url": notice_base_url})
    if experiment is None:
        from mlops.serve import run_server

        raise typer.Exit(run_server(settings, host=host, port=port,
                                    watch_interval_s=watch_interval or None, workers=workers))
    from adplatform.errors import ConfigError

    if workers > 1:
        console.print("[red]--experiment runs one worker; drop --workers[/red]")
        raise typer.Exit(2)
    from mlops.demo_ab import build_experiment, experiment_spec, serve_experiment, write_spec

    try:
        build_experiment(experiment, share)          # validates the share before start-up
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    spec = write_spec(settings, experiment_spec(experiment, share))
    console.print(f"experiment {experiment!r}: {share:.0%} on ctr@challenger; spec {spec}")
    serve_experiment(settings, host=host, port=port, name=experiment, share=share)


@app.command()
def promote(
    model: Annotated[str, typer.Argument(help="registered model name, e.g. ctr")],
    version: Annotated[str | None, typer.Option("--version",
                                                help="candidate (default: @challenger)")] = None,
    latency_budget_ms: Annotated[float, typer.Option(help="p99 budget per auction of 20, ms")
                                 ] = 1.0,
) -> None:
    """Gate a candidate against @champion; move champion only if every gate passes."""
    from mlops.promotion import PromotionConfig, PromotionError, gates_table
    from mlops.promotion import promote as run_promotion

    try:
        with console.status(f"gating {model} against its champion (held-out data, ONNX, latency)"):
            result = run_promotion(get_settings(), model, version,
                                   config=PromotionConfig(latency_budget_ms=latency_budget_ms))
    except PromotionError as exc:
        console.print(f"[red]{exc}")
        raise typer.Exit(1) from exc
    if result.gates:
        console.print(gates_table(result))
    for note in result.notes:
        console.print(f"[yellow]note: {note}")
    if result.report_md is not None:
        console.print(f"report: {result.report_md}")
    if result.status == "refused":
        console.print(f"[red]refused; version {result.candidate} stays challenger")
        raise typer.Exit(1)
    console.print(f"{model}@champion = version {result.candidate} ({result.status}; "
                  f"previous: {result.champion_before})")


@app.command()
def rollback(model: Annotated[str, typer.Argument(help="registered model name")]) -> None:
    """Move @champion back to @previous_champion."""
    from mlops.promotion import PromotionError
    from mlops.promotion import rollback as run_rollback

    try:
        r = run_rollback(get_settings(), model)
    except PromotionError as exc:
        console.print(f"[red]{exc}")
        raise typer.Exit(1) from exc
    console.print(f"{model}@champion: {r.from_version} -> {r.to_version} "
                  f"(previous_champion now {r.previous_champion or 'unset'})")


@app.command()
def demo(
    days: Annotated[int, typer.Option(help="simulated days of bootstrap traffic")] = 7,
    requests_per_day: Annotated[int, typer.Option(help="simulated requests per day")] = 50_000,
    auctions: Annotated[int, typer.Option(help="live auctions sent through the HTTP service")] = 3000,
    ab_auctions: Annotated[int, typer.Option(
        help="live auctions of the closing A/B experiment, champion vs challenger (0: skip)")
    ] = 2000,
    seed: Annotated[int, typer.Option(help="world seed")] = 7,
    port: Annotated[int, typer.Option(help="port of the decision service")] = 8765,
) -> None:
    """simulate -> features -> train -> serve -> live auctions -> A/B experiment -> report."""
    from mlops.demo import run_demo

    run_demo(get_settings(), days=days, auctions=auctions, seed=seed, port=port, console=console,
             requests_per_day=requests_per_day, ab_auctions=ab_auctions)


@serving_app.command("triton-repo")
def triton_repo(
    out: Annotated[Path, typer.Option("--out", help="repository folder to write")],
    alias: Annotated[str, typer.Option(help="registry alias to serve")] = "champion",
    max_batch_size: Annotated[int, typer.Option(help="dynamic batching limit")] = 256,
    instances: Annotated[int, typer.Option(help="instances per model")] = 1,
    gpu: Annotated[bool, typer.Option(help="KIND_GPU instance groups")] = False,
) -> None:
    """Write a production Triton model repository for models:/<name>@ALIAS."""
    from serving.triton.repository import repository_from_registry

    path = repository_from_registry(get_settings(), out, alias, max_batch_size=max_batch_size,
                                    instances=instances, kind="KIND_GPU" if gpu else "KIND_CPU")
    console.print(f"wrote Triton repository {path}")


@serving_app.command("triton")
def triton(
    port: Annotated[int, typer.Option("--port", help="gRPC port")] = 8001,
    http_port: Annotated[int, typer.Option(help="HTTP port")] = 8000,
    repo: Annotated[Path | None, typer.Option(help="existing repository (default: generate)")] = None,
    alias: Annotated[str, typer.Option(help="registry alias to serve")] = "champion",
    engine: Annotated[str, typer.Option(help="pytriton | native")] = "pytriton",
) -> None:
    """Serve the models with PyTriton's tritonserver (creates .venv-triton if missing)."""
    from serving.triton.repository import repository_from_registry
    from serving.triton.server import serve as serve_triton

    settings = get_settings()
    if repo is None:
        repo = repository_from_registry(settings, settings.workspace.root / "triton-repo", alias)
    raise typer.Exit(serve_triton(repo, http_port, port, engine=engine))


@serving_app.command("bento")
def serving_bento(
    port: Annotated[int, typer.Option(help="HTTP port of bentoml serve")] = 3000,
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    alias: Annotated[str | None, typer.Option(
        help="registry alias for every model, or per model: 'ctr=challenger,fraud=champion'")
    ] = None,
) -> None:
    """Serve the registered models with `bentoml serve` until Ctrl-C or SIGTERM."""
    import signal
    import sys
    import time

    from serving.bento import BentoBackend, start_bento

    settings = get_settings()
    env = {"ADPLATFORM_HOME": str(settings.home.resolve())}
    if settings.mlflow_tracking_uri:
        env["ADPLATFORM_MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    if alias:
        env["ADPLATFORM_BENTO_ALIAS"] = alias
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))   # stop the server, never orphan it
    with console.status(f"starting bentoml serve on {host}:{port} (models load first)"):
        proc = start_bento(port, env, host=host)
    try:
        with BentoBackend(proc.url, timeout_s=5.0) as client:
            versions = client.versions()
        console.print(f"BentoML serves {versions} at {proc.url} (log: {proc.log_path})")
        while proc.is_running():
            time.sleep(1.0)
        console.print(f"[red]bentoml serve exited with {proc.returncode}; see {proc.log_path}")
        raise typer.Exit(1)
    except KeyboardInterrupt:
        pass
    finally:
        proc.stop()


def _register_plugins() -> None:
    from decisioning.campaign_cli import register as register_campaigns
    from decisioning.decisions_cli import register as register_decisions
    from features.audience.cli import register as register_audience
    from mlops.reports.cli import register as register_reports
    from simulator.cli import register

    register(app)
    register_audience(app)
    register_reports(app)
    register_campaigns(app)
    register_decisions(app)


def main() -> None:
    _register_plugins()
    app()


__all__ = ["app", "main"]

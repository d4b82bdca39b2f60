"""The demo's closing act: champion vs challenger as a live A/B experiment, and its report.

train a challenger CTR version (registered ``@challenger``) -> one decision service
serving both behind an :class:`~decisioning.experiments.Experiment` (units hashed into
``<name>:champion`` / ``<name>:challenger``; the challenger's alias set swaps only the
CTR model, fraud and shading stay at ``@champion``) -> live auctions over HTTP ->
outcomes into the event log, decisions into the decision log -> the A/B report
(:func:`mlops.reports.ab_report`: HTML with plots + JSON) in ``<workspace>/reports``.

The experiment file is written to ``<workspace>/experiments/<name>.json``, so
``adplatform report ab --experiment <name>`` rebuilds the same report later.

The service runs in its own process (:func:`main`, started by
:class:`mlops.demo.ServiceProcess`), wired like ``adplatform serve`` (:mod:`mlops.serve`:
registry lookups in the sidecar, no mlflow or torch in the process, the shading model's
pricer when ``shading`` is registered) plus the experiment; no alias watcher: the
experiment pins its two alias sets for its duration.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from adplatform.config import Settings
from adplatform.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd
    from rich.progress import Progress

    from decisioning.experiments import Experiment
    from decisioning.service import DecisionService
    from mlops.demo import LiveStats
    from mlops.reports.ab import ABReport, ExperimentSpec
    from simulator import LiveExchange
    from training.ctr import CTRConfig

log = logging.getLogger(__name__)

EXPERIMENT = "ctr_challenger"
CONTROL, TREATMENT = "champion", "challenger"


def challenger_config() -> CTRConfig:
    """The demo's challenger: a smaller, cheaper LightGBM than the champion's defaults
    (fewer leaves, bigger steps): does the cheaper model lose anything live?"""
    from training.ctr import CTRConfig

    return CTRConfig(num_leaves=15, learning_rate=0.1, min_data_in_leaf=400)


def build_experiment(name: str = EXPERIMENT, share: float = 0.5) -> Experiment:
    """``share`` of the units to ``<name>:challenger``, the rest to ``<name>:champion``."""
    from decisioning.experiments import Experiment, Variant

    if not 0.0 < share < 1.0:
        raise ConfigError(f"challenger share must be in (0, 1), got {share}")
    return Experiment(name, [Variant(f"{name}:{CONTROL}", 1.0 - share, models="default"),
                             Variant(f"{name}:{TREATMENT}", share, models=TREATMENT)])


def experiment_spec(name: str = EXPERIMENT, share: float = 0.5) -> ExperimentSpec:
    """The report's view of :func:`build_experiment` (control: the champion)."""
    from mlops.reports.ab import ExperimentSpec

    return ExperimentSpec(name, {CONTROL: 1.0 - share, TREATMENT: share}, CONTROL)


def write_spec(settings: Settings, spec: ExperimentSpec) -> Path:
    """``<workspace>/experiments/<name>.json``, read by ``adplatform report ab``."""
    folder = settings.workspace.root / "experiments"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{spec.name}.json"
    path.write_text(json.dumps(spec.to_json(), indent=2), encoding="utf-8")
    return path


def build_experiment_service(settings: Settings, *, name: str = EXPERIMENT,
                             share: float = 0.5,
                             notice_base_url: str | None = None) -> DecisionService:
    """The decision service of ``adplatform serve`` with ``ctr@challenger`` on ``share``
    (both arms price alike, with the champion's shading model)."""
    from mlops.registry_sidecar import RegistrySidecar
    from mlops.serve import build_decision_service, onnx_backend

    if settings.backend != "onnx":
        raise ConfigError(f"the demo experiment serves in-process ONNX, not {settings.backend!r}")
    with RegistrySidecar(settings) as registry:
        champion = onnx_backend(registry)
        challenger = onnx_backend(registry, {"ctr": TREATMENT})
        return build_decision_service(settings, registry=registry, models=champion,
                                      backends={TREATMENT: challenger},
                                      experiment=build_experiment(name, share),
                                      notice_base_url=notice_base_url)


def serve_experiment(settings: Settings, *, host: str, port: int, name: str = EXPERIMENT,
                     share: float = 0.5) -> None:
    """Run the experiment's decision service until SIGTERM (which flushes its logs)."""
    from mlops.serve import keep_torch_out

    keep_torch_out()

    from decisioning.app import create_app
    from decisioning.server import serve
    from mlops.serve import notice_url

    svc = build_experiment_service(settings, name=name, share=share,
                                   notice_base_url=notice_url(settings, host, port))
    serve(create_app(svc.engine, notices=svc.notices, api_keys=settings.api_keys), host=host,
          port=port)


def service_argv(port: int, name: str = EXPERIMENT, share: float = 0.5) -> list[str]:
    """The command line of the experiment's service process (see :func:`main`)."""
    return [sys.executable, "-c", "from mlops.demo_ab import main; main()", "--port",
            str(port), "--experiment", name, "--share", str(share)]


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the service process: ``--port``, ``--experiment``, ``--share``."""
    from adplatform.config import get_settings

    parser = argparse.ArgumentParser(description="decision service with the demo experiment")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--experiment", default=EXPERIMENT)
    parser.add_argument("--share", type=float, default=0.5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    serve_experiment(get_settings(), host=args.host, port=args.port, name=args.experiment,
                     share=args.share)


@dataclass
class ABRun:
    """What the demo's experiment did and where its report is."""

    experiment: str
    champion: str            # ctr versions
    challenger: str
    stats: LiveStats
    report: ABReport
    html: Path
    json: Path
    spec_path: Path


def run_ab(settings: Settings, live: LiveExchange, *, auctions: int, port: int,
           name: str = EXPERIMENT, share: float = 0.5, train: bool = True,
           frame: pd.DataFrame | None = None, progress: Progress | None = None) -> ABRun:
    """Champion vs challenger on ``auctions`` live auctions; writes the A/B report.

    ``train``: register a new ``ctr`` version first (it becomes ``@challenger``);
    otherwise the existing ``ctr@challenger`` competes. ``frame``: the joined CTR
    training frame (:func:`training.ctr.ctr_frame`) to train it on, e.g. the champion's
    (same data, and no second point-in-time join). ``live`` continues the exchange
    session of the caller (its clock, users and request ids).
    """
    from mlops.demo import ServiceProcess, send_auctions
    from mlops.registry import CHAMPION, resolve
    from mlops.reports import Outcomes, ab_report, load_campaigns, load_decisions

    ws = settings.workspace.ensure()
    if train:
        from training.ctr import train_ctr

        trained = train_ctr(settings, challenger_config(), frame=frame)
        if trained.alias != TREATMENT:
            raise ConfigError(f"ctr version {trained.version} registered as {trained.alias}: "
                              "the experiment needs a champion to compare with")
    champion = resolve(settings, "ctr", CHAMPION).version
    challenger = resolve(settings, "ctr", TREATMENT).version
    spec = experiment_spec(name, share)
    spec_path = write_spec(settings, spec)
    service = ServiceProcess(settings, port, ws.root / "demo-ab-service.log",
                             argv=service_argv(port, name, share))
    try:
        service.wait_ready()
        stats = send_auctions(live, service.url, auctions, progress, label=f"A/B {name}")
        live.flush(ws)
    finally:
        service.stop()
    campaigns_file = ws.world / "campaigns.json"
    report = ab_report(load_decisions(ws), Outcomes.from_events(ws.events), spec,
                       campaigns=load_campaigns(campaigns_file) if campaigns_file.exists()
                       else None)
    html, js = report.write(ws.reports)
    log.info("A/B report of %s: %s", name, html)
    return ABRun(name, champion, challenger, stats, report, html, js, spec_path)


__all__ = ["CONTROL", "EXPERIMENT", "TREATMENT", "ABRun",
           "build_experiment", "build_experiment_service", "challenger_config",
           "experiment_spec", "main", "run_ab", "serve_experiment", "service_argv",
           "write_spec"]

"""Wiring: the decision service built from settings, and the server that runs it.

Aliases are resolved in the MLflow registry once, here, before the engine exists; the
engine and its backend then only see ONNX files. The registry client runs in a sidecar
child process (:mod:`mlops.registry_sidecar`): the serving process imports neither
mlflow nor torch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adplatform.config import Settings
from decisioning.app import create_app
from decisioning.engine import EngineConfig
from decisioning.experiments import Experiment
from decisioning.pricing import BidPricer, ShadeFactorPricer
from decisioning.service import DecisionService
from mlops.errors import ModelNotFound
from mlops.registry_sidecar import RegistrySidecar
from serving.base import ModelBackend

if TYPE_CHECKING:
    from fastapi import FastAPI

    from serving.onnx_backend import OnnxBackend

log = logging.getLogger(__name__)


@contextmanager
def _registry(settings: Settings, registry: RegistrySidecar | None
              ) -> Iterator[RegistrySidecar]:
    """``registry``, or a sidecar started for the block and stopped after it."""
    if registry is not None:
        yield registry
        return
    with RegistrySidecar(settings) as own:
        yield own


def onnx_backend(registry: RegistrySidecar, aliases: Mapping[str, str] | None = None, *,
                 alias: str = "champion") -> OnnxBackend:
    """In-process ONNX serving ``models:/<name>@aliases.get(name, alias)`` for each model;
    a model without that alias is left out, except ``ctr`` (:class:`ModelNotFound`)."""
    from serving.onnx_backend import ModelFile, OnnxBackend

    files = []
    for name in ("ctr", "fraud", "shading"):
        wanted = (aliases or {}).get(name, alias)
        try:
            m = registry.resolve(name, wanted)
        except ModelNotFound:
            if name == "ctr":
                raise
            log.info("no %s@%s registered; serving without it", name, wanted)
            continue
        files.append(ModelFile(name=name, version=m.version, path=m.onnx_path))
    return OnnxBackend(files)


def build_backend(settings: Settings, alias: str = "champion", *,
                  registry: RegistrySidecar | None = None) -> ModelBackend:
    """The configured model backend, serving ``models:/<name>@alias`` for each model.

    The in-process backend resolves the aliases through ``registry`` (a sidecar process
    started for the call when None), so this process never imports mlflow.
    """
    if settings.backend == "triton":
        from serving.triton.client import TritonBackend

        return TritonBackend(settings.triton_url, "grpc")
    if settings.backend == "bentoml":
        from serving.bento.client import BentoBackend

        return BentoBackend(settings.bentoml_url, timeout_s=settings.remote_timeout_ms / 1000)
    if settings.backend != "onnx":
        raise NotImplementedError(f"backend {settings.backend!r}")
    with _registry(settings, registry) as reg:
        return onnx_backend(reg, alias=alias)


def fraud_threshold(settings: Settings, alias: str = "champion", *,
                    registry: RegistrySidecar | None = None) -> float | None:
    """The threshold the registered fraud model was trained for (its `threshold` tag)."""
    with _registry(settings, registry) as reg:
        try:
            tags = reg.resolve("fraud", alias).tags
        except ModelNotFound:
            return None
    return float(tags["threshold"]) if "threshold" in tags else None


def engine_config(settings: Settings, *, registry: RegistrySidecar | None = None,
                  **overrides: Any) -> EngineConfig:
    """The engine's configuration as ``adplatform serve`` sets it: the settings' seed
    and the registered fraud model's threshold (0.5 when it has none), with
    ``overrides`` (any other :class:`EngineConfig` field) on top."""
    fields: dict[str, Any] = {
        "seed": settings.seed,
        "fraud_threshold": fraud_threshold(settings, registry=registry) or 0.5}
    return EngineConfig(**(fields | overrides))


def build_decision_service(settings: Settings, *, config: EngineConfig | None = None,
                           registry: RegistrySidecar | None = None,
                           notice_base_url: str | None = None,
                           backends: Mapping[str, ModelBackend] | None = None,
                           experiment: Experiment | None = None,
                           models: ModelBackend | None = None,
                           log_root: Path | None = None, worker: tuple[int, int] = (0, 1),
                           shared_state: Path | None = None,
                           campaigns_path: Path | None = None) -> DecisionService:
    """The decision service ``adplatform serve`` runs: the engine over the online reader
    and ``models:/<name>@champion`` (or ``models``), its notice service, and the state
    stores of ``settings.profile`` (:func:`decisioning.service.build_service`: file
    campaigns and in-memory budgets embedded; PostgreSQL campaigns, Redis budgets, caps
    and notice dedupe, and the NATS decision log with the services profile).

    ``notice_base_url`` (the notice routes as exchanges reach this service, e.g.
    ``https://bidder.example/notice``) puts nurl/burl/lurl on every bid, and spend is then
    counted from billing notices; without it spend is charged at bid time. ``log_root``:
    where the decision and notice logs go (default: the workspace's decision log).
    ``worker``, ``shared_state`` and ``campaigns_path``: see
    :func:`decisioning.service.build_service`.
    """
    from decisioning.service import build_service
    from features.reader import OnlineReader
    from features.store import open_store

    with _registry(settings, registry) as reg:
        cfg = config or engine_config(settings, registry=reg)
        served = models if models is not None else build_backend(settings, registry=reg)
    return build_service(
        settings, featurizer=OnlineReader(open_store(settings), shared_data=settings.shared_data),
        models=served, config=cfg, backends=backends, experiment=experiment,
        pricer=build_pricer(served, cfg), notice_base_url=notice_base_url, log_root=log_root,
        worker=worker, shared_state=shared_state, campaigns_path=campaigns_path)


def notice_url(settings: Settings, host: str, port: int) -> str | None:
    """Where exchanges send notices: ``settings.notice_base_url``, else this service's own
    address when it listens on one host (``http://HOST:PORT/notice``); None (notices off)
    when it listens on every interface, whose public name it cannot know."""
    if settings.notice_base_url:
        return settings.notice_base_url
    if host in ("0.0.0.0", "::", ""):
        log.warning("no notice URLs on bids: set ADPLATFORM_NOTICE_BASE_URL to the address "
                    "exchanges reach this service at; spend is charged at bid time")
        return None
    return f"http://{host}:{port}/notice"


def build_pricer(models: ModelBackend, config: EngineConfig) -> BidPricer:
    """The bid-shading model's pricer when the backend serves ``shading``, else a constant
    shade factor. The model pricer keeps the constant factor as its fallback, for
    auctions whose landscape is unusable (and counts them)."""
    from models.shading_landscape import ShadingPricer
    from serving.errors import ServingError

    constant = ShadeFactorPricer(config.shade_factor)
    try:
        served = models.versions()
    except ServingError as exc:
        # A remote server still starting: the model pricer falls back to the constant
        # factor per auction until a landscape arrives, and counts the fallbacks.
        log.warning("model versions unknown (%s): pricing with the shading model "
                    "where a landscape comes back", exc)
    else:
        if "shading" not in served:
            log.info("no shading model served: bidding value x %.2f", config.shade_factor)
            return constant
    pricer = ShadingPricer(fallback=constant)
    pricer.warm()
    return pricer


def keep_torch_out() -> bool:
    """Make ``import torch`` fail in this process (call before anything imports Feast).

    Feast 0.67 imports torch eagerly when it is installed (``feast/torch_wrapper.py``,
    for its ``to_tensor`` helpers), which would put libraries we never call into the
    decision service (``import torch`` alone: 4.2 s and 221 MiB peak RSS, measured on
    the 2-core dev machine). A ``None`` entry in ``sys.modules`` makes that
    import raise ImportError, which Feast treats as "torch not installed". Returns False
    (and does nothing) when torch is already imported.
    """
    import sys

    if "torch" in sys.modules:
        return sys.modules["torch"] is None
    sys.modules["torch"] = None  # type: ignore[assignment]
    return True


@contextmanager
def decision_app(settings: Settings, *, host: str, port: int,
                 watch_interval_s: float | None = 5.0, worker: tuple[int, int] = (0, 1),
                 shared_state: Path | None = None, log_root: Path | None = None,
                 metrics_dir: Path | None = None) -> Iterator[FastAPI]:
    """The app ``adplatform serve`` runs (one per worker process), with its registry
    sidecar and alias watcher stopped when the block exits. The engine closes (and the
    logs flush) in the app's lifespan; ``log_root``: see :func:`build_decision_service`.
    ``metrics_dir``: where the workers of one service pool their metrics
    (:class:`decisioning.metrics.WorkerMetrics`)."""
    from decisioning.metrics import WorkerMetrics

    keep_torch_out()

    from serving.watcher import watch_backend

    # The registry client (mlflow) lives in a child process: this one serves auctions
    # with ONNX Runtime only, and the child stays up for the alias watcher's polls.
    registry = RegistrySidecar(settings)
    try:
        svc = build_decision_service(settings, registry=registry,
                                     notice_base_url=notice_url(settings, host, port),
                                     worker=worker, shared_state=shared_state,
                                     log_root=log_root)
        engine = svc.engine
        # Follow models:/<name>@champion: a promotion or rollback is served within one
        # interval, without a restart (in-process ONNX; Triton/Bento follow on their side).
        watcher = (watch_backend(settings, engine.models, interval_s=watch_interval_s,
                                 source=registry,
                                 fetch=lambda n, v: registry.fetch(n, v).onnx_path)
                   if watch_interval_s else None)
        try:
            # A remote backend blocks on the network: decide in the thread pool then.
            yield create_app(engine, notices=svc.notices, api_keys=settings.api_keys,
                             decide_in_threadpool=settings.backend != "onnx",
                             worker_metrics=(WorkerMetrics(metrics_dir, worker[0])
                                             if metrics_dir is not None else None))
        finally:
            if watcher is not None:
                watcher.stop()
    finally:
        registry.close()


def worker_app(index: int, count: int, settings: Settings, host: str, port: int,
               watch_interval_s: float | None, shared_state: Path | None,
               log_root: Path | None = None, metrics_dir: Path | None = None
               ) -> AbstractContextManager[FastAPI]:
    """:func:`decisioning.workers.serve_workers`' factory: worker ``index`` of ``count``."""
    return decision_app(settings, host=host, port=port, watch_interval_s=watch_interval_s,
                        worker=(index, count), shared_state=shared_state, log_root=log_root,
                        metrics_dir=metrics_dir)


def shared_state_path(settings: Settings) -> Path | None:
    """Where several workers keep budgets, caps and notice dedupe in the embedded profile
    (a SQLite file in the workspace); None under the services profile (Redis)."""
    if settings.profile == "services":
        return None
    return settings.workspace.ensure().root / "state" / "decisioning.sqlite"


def run_server(settings: Settings, *, host: str, port: int,
               watch_interval_s: float | None = 5.0, workers: int = 1) -> int:
    """Serve until SIGTERM/SIGINT: one process, or ``workers`` processes on one port
    (:func:`decisioning.workers.serve_workers`) sharing budgets, caps and notice dedupe
    (:func:`shared_state_path`). Returns the exit status."""
    from decisioning.server import serve

    if workers > 1:
        import os
        import shutil

        from decisioning.workers import serve_workers

        state = shared_state_path(settings)
        # The workers' pooled metrics: this run's own folder, removed when it ends.
        metrics = settings.workspace.ensure().root / "state" / f"metrics-{os.getpid()}"
        try:
            return serve_workers("mlops.serve:worker_app",
                                 (settings, host, port, watch_interval_s, state, None,
                                  metrics),
                                 workers=workers, host=host, port=port)
        finally:
            try:
                shutil.rmtree(metrics)
            except FileNotFoundError:
                pass                                   # no worker got as far as publishing
            except OSError as exc:
                log.warning("worker metrics folder %s not removed: %s", metrics, exc)
    with decision_app(settings, host=host, port=port,
                      watch_interval_s=watch_interval_s) as app:
        # Arrival stamps at parse time (less the kernel wait), long keep-alive, gc.freeze
        # of start-up objects.
        serve(app, host=host, port=port)
    return 0


__all__ = ["build_backend", "build_decision_service", "build_pricer", "decision_app",
           "engine_config", "fraud_threshold", "keep_torch_out", "notice_url", "onnx_backend",
           "run_server", "shared_state_path", "worker_app"]

"""MLflow tracking and registry helpers: one tracking URI per workspace, aliases.

Models are reached as ``models:/NAME@ALIAS``. In MLflow 3 a model's files live with the
logged model, so we register ``model_info.model_uri`` and always resolve through the
alias.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from adplatform.config import Settings
from mlops.errors import ModelNotFound

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"


def configure(settings: Settings) -> MlflowClient:
    """Point MLflow at the workspace's tracking store and return a client."""
    import mlflow
    from mlflow import MlflowClient

    settings.workspace.mlflow_db.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def ensure_experiment(settings: Settings, name: str) -> str:
    import mlflow

    client = configure(settings)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        settings.workspace.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
        exp_id = client.create_experiment(
            name, artifact_location=settings.workspace.mlflow_artifacts.resolve().as_uri())
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def code_version() -> str:
    """The git commit of the running code ("unknown" outside a checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5, check=False)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def register(settings: Settings, model_uri: str, name: str, tags: dict[str, str]) -> tuple[str, str]:
    """Register a logged model; the first version becomes champion, later ones challenger.

    Returns (version, alias set).
    """
    import mlflow

    client = configure(settings)
    mv = mlflow.register_model(model_uri, name, tags=tags)
    try:
        client.get_model_version_by_alias(name, CHAMPION)
        alias = CHALLENGER
    except mlflow.exceptions.MlflowException:
        alias = CHAMPION
    client.set_registered_model_alias(name, alias, mv.version)
    log.info("registered %s version %s as %s", name, mv.version, alias)
    return str(mv.version), alias


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    alias: str
    version: str
    path: Path               # local folder with the model files (model.onnx, MLmodel)
    tags: dict[str, str]

    @property
    def onnx_path(self) -> Path:
        return self.path / "model.onnx"


def resolve(settings: Settings, name: str, alias: str = CHAMPION) -> ResolvedModel:
    """Resolve ``models:/name@alias`` and download its files into the workspace cache."""
    import mlflow

    client = configure(settings)
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException as exc:
        raise ModelNotFound(f"models:/{name}@{alias} does not exist: {exc}") from exc
    dest = settings.workspace.models / name / str(mv.version)
    if not (dest / "model.onnx").exists():
        dest.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}",
                                            dst_path=str(dest))
    return ResolvedModel(name=name, alias=alias, version=str(mv.version), path=dest,
                         tags=dict(mv.tags))


__all__ = ["CHALLENGER", "CHAMPION", "ResolvedModel", "code_version", "configure",
           "ensure_experiment", "register", "resolve"]

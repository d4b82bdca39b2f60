"""Registry helpers for promotion and hot reload: a version's files, aliases, gate tags.

:func:`mlops.registry.resolve` resolves an alias; promotion compares a given version and
the watcher swaps in the version an alias moved to, so both need the files of a version
(an alias may have moved again by the time they are downloaded). Files go to the same
cache as :func:`~mlops.registry.resolve` (``<workspace>/models/<name>/<version>/``), filled
through a temporary folder and a rename, so a reader never sees half a model.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from adplatform.config import Settings
from mlops.errors import ModelNotFound
from mlops.registry import ResolvedModel, configure

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

PREVIOUS_CHAMPION = "previous_champion"
MAX_TAG_CHARS = 5000          # MLflow's limit on a tag value


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version ``models:/name@alias`` points at, or None when the alias is unset."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        # No such model: RESOURCE_DOES_NOT_EXIST; no such alias: INVALID_PARAMETER_VALUE
        # "Registered model alias ... not found". Anything else is a registry failure.
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or (
                exc.error_code == "INVALID_PARAMETER_VALUE" and "not found" in exc.message):
            return None
        raise


def fetch_version(settings: Settings, name: str, version: str) -> ResolvedModel:
    """Version ``version`` of ``name`` with its files in the workspace cache.

    Raises :class:`ModelNotFound` when the registry has no such version.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = configure(settings)
    try:
        mv = client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise ModelNotFound(f"models:/{name}/{version} does not exist: {exc}") from exc
    dest = settings.workspace.models / name / str(mv.version)
    if not (dest / "model.onnx").exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{mv.version}-", dir=dest.parent))
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}",
                                                dst_path=str(tmp))
            if not (tmp / "model.onnx").is_file():
                raise ModelNotFound(f"models:/{name}/{mv.version} has no model.onnx")
            if dest.exists():             # an interrupted download left a partial folder
                shutil.rmtree(dest)
            os.rename(tmp, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return ResolvedModel(name=name, alias="", version=str(mv.version), path=dest,
                         tags=dict(mv.tags))


def set_tags(client: MlflowClient, name: str, version: str, tags: dict[str, str]) -> None:
    """Set tags on a model version (values cut to MLflow's limit)."""
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value[:MAX_TAG_CHARS])


__all__ = ["PREVIOUS_CHAMPION", "alias_version", "fetch_version", "set_tags"]

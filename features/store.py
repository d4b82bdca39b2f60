"""Open the Feast store of a workspace, for either profile.

The YAML files in this folder are the single source of the repo config; their
``${VAR}`` references are filled from settings here rather than from the process
environment, so library code never mutates ``os.environ``.
"""

from __future__ import annotations

import string
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from adplatform.config import Settings
from features.errors import FeatureStoreError

if TYPE_CHECKING:
    from feast import FeatureStore

REPO_DIR = Path(__file__).resolve().parent


def _redis_conn_string(url: str) -> str:
    # Feast wants "host:port,db=N" rather than a URL.
    rest = url.removeprefix("redis://")
    hostport, _, db = rest.partition("/")
    return f"{hostport},db={db or 0}"


def repo_config_dict(settings: Settings) -> dict[str, object]:
    name = "feature_store.services.yaml" if settings.profile == "services" else "feature_store.yaml"
    text = (REPO_DIR / name).read_text()
    values = {"ADPLATFORM_HOME": str(settings.workspace.root),
              "ADPLATFORM_REDIS_FEAST": _redis_conn_string(settings.redis_url)}
    raw = yaml.safe_load(string.Template(text).safe_substitute(values))
    if not isinstance(raw, dict):
        raise FeatureStoreError(f"{name}: not a mapping")
    return raw


def offline_dir(settings: Settings) -> Path:
    return settings.workspace.feature_repo / "offline"


def open_store(settings: Settings) -> FeatureStore:
    """A FeatureStore on the workspace (registry, online store and offline files)."""
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    settings.workspace.feature_repo.mkdir(parents=True, exist_ok=True)
    config = RepoConfig(**repo_config_dict(settings))
    config.repo_path = REPO_DIR
    return FeatureStore(config=config)


def materialized_until(store: FeatureStore, view: str) -> datetime | None:
    """The end of the view's last materialization (the latest run's interval, in UTC;
    Feast keeps the intervals in run order), or None when it was never materialized:
    the instant the online store's rows are as of."""
    intervals = store.get_feature_view(view).materialization_intervals
    if not intervals:
        return None
    end = intervals[-1][1]
    return end.replace(tzinfo=UTC) if end.tzinfo is None else end.astimezone(UTC)


__all__ = ["REPO_DIR", "materialized_until", "offline_dir", "open_store", "repo_config_dict"]

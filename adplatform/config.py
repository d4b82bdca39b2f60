"""Settings: one object, from ``ADPLATFORM_*`` environment variables and a profile.

``ADPLATFORM_PROFILE=embedded`` (default) runs everything in-process on files under the
workspace; ``services`` switches to the real servers on 127.0.0.1 (Redis online store,
PostgreSQL-backed MLflow, NATS JetStream stream, Triton/BentoML backends).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from adplatform.workspace import Workspace

Profile = Literal["embedded", "services"]
Backend = Literal["onnx", "triton", "bentoml"]


def _default_shared_data() -> Path:
    # The repository sits beside ../shared; this is resolved lazily, never at import.
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


class Settings(BaseSettings):
    """All runtime configuration. Field names map to ``ADPLATFORM_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="ADPLATFORM_", extra="ignore")

    profile: Profile = "embedded"
    home: Path = Field(default=Path("workspace"), description="everything a run writes")
    shared_data: Path = Field(default_factory=_default_shared_data,
                              description="public data samples (../shared/data)")
    # Online store: SQLite file under the workspace (embedded) or Redis (services).
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Names that keep two deployments (or a test) apart on one Redis, PostgreSQL and NATS:
    # the decision service's key prefix for budgets, caps and notice dedupe, the campaign
    # schema, and the decision log's JetStream stream and subject (services profile).
    redis_prefix: str = "adp"
    postgres_schema: str = "adplatform"
    nats_stream: str = "ADPLATFORM_DECISIONS"
    nats_subject: str = "adplatform.decisions"
    # MLflow: SQLite tracking store under the workspace unless set explicitly.
    mlflow_tracking_uri: str | None = None
    postgres_dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    nats_url: str = "nats://127.0.0.1:4222"
    backend: Backend = "onnx"
    triton_url: str = "127.0.0.1:8001"
    bentoml_url: str = "http://127.0.0.1:3000"
    remote_timeout_ms: float = 30.0   # a remote model backend's budget inside tmax
    api_keys: list[str] = Field(default_factory=list, description="bidder API keys; empty = open")
    # The decision service's notice routes as exchanges reach them (nurl/burl/lurl base),
    # e.g. https://bidder.example/notice; None: http://HOST:PORT/notice of `serve`.
    notice_base_url: str | None = None
    # Vector search: a Milvus server URI (http://host:19530) or a Milvus Lite .db path;
    # None = Milvus Lite at <workspace>/milvus/audience.db.
    milvus_uri: str | None = None
    milvus_token: str | None = None
    seed: int = 7

    @property
    def workspace(self) -> Workspace:
        return Workspace(self.home.resolve())

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.workspace.mlflow_db}"


def env_name(field: str) -> str:
    """The environment variable of a :class:`Settings` field: ``ADPLATFORM_<FIELD>``."""
    return f"{Settings.model_config.get('env_prefix', '')}{field}".upper()


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as the ``ADPLATFORM_*`` variables a child process reads back into
    equal settings (lists as JSON, as pydantic-settings parses them). A field that is
    None has no variable: the child must drop any inherited one to get None too."""
    out: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        if isinstance(value, list | dict):
            out[env_name(name)] = json.dumps(value)
        elif isinstance(value, bool):
            out[env_name(name)] = str(value).lower()
        else:
            out[env_name(name)] = str(value)
    return out


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read on first use (never at import)."""
    return Settings()



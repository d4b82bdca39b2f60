"""Settings: one object, from ``ADPLATFORM_*`` environment variables and a profile.

``ADPLATFORM_PROFILE=embedded`` (default) runs everything in-process on files under the
workspace; ``services`` switches to the real servers on 127.0.0.1 (Redis online store,
PostgreSQL-backed MLflow, NATS JetStream stream, Triton/BentoML backends).
"""

from __future__ import annotations

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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read on first use (never at import)."""
    return Settings()



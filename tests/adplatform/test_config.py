"""Settings handed to a child process through the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from adplatform.config import Settings, env_name, settings_env


def test_settings_env_reads_back_into_equal_settings(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings(home=tmp_path / "ws", profile="services",  # type: ignore[call-arg]
                 redis_url="redis://127.0.0.1:6379/12", redis_prefix="t1",
                 postgres_schema="t_1", nats_stream="S1", nats_subject="s.1",
                 api_keys=["k1", "k2"], remote_timeout_ms=12.5)
    env = settings_env(s)
    assert env["ADPLATFORM_NATS_STREAM"] == "S1" and env_name("nats_stream") in env
    assert "ADPLATFORM_MLFLOW_TRACKING_URI" not in env            # None: no variable
    for k in list(env):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert Settings().model_dump() == s.model_dump()  # type: ignore[call-arg]


def test_new_fields_default_to_the_previous_names(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("redis_prefix", "postgres_schema", "nats_stream", "nats_subject"):
        monkeypatch.delenv(env_name(name), raising=False)
    s = Settings()  # type: ignore[call-arg]
    assert (s.redis_prefix, s.postgres_schema, s.nats_stream, s.nats_subject) == (
        "adp", "adplatform", "ADPLATFORM_DECISIONS", "adplatform.decisions")

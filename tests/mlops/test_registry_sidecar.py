"""The registry sidecar answers like the in-process registry, and keeps mlflow out of the
decision service's process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from adplatform.config import Settings
from mlops.errors import ModelNotFound
from mlops.registry import resolve
from mlops.registry_sidecar import RegistrySidecar, RegistryUnavailable


def test_sidecar_resolves_like_the_registry(trained_workspace: Settings) -> None:
    want = resolve(trained_workspace, "ctr", "champion")
    with RegistrySidecar(trained_workspace) as reg:
        got = reg.resolve("ctr", "champion")
        assert (got.name, got.alias, got.version, got.path, got.tags) == \
            (want.name, want.alias, want.version, want.path, want.tags)
        assert got.onnx_path.is_file()
        assert reg.alias_version("ctr", "champion") == want.version
        assert reg("ctr", "no-such-alias") is None                  # a VersionSource
        assert reg.fetch("ctr", want.version).path == want.path
        with pytest.raises(ModelNotFound):
            reg.resolve("no-such-model", "champion")
        with pytest.raises(ModelNotFound):
            reg.fetch("ctr", "999")
        assert reg.requests == 6 and reg.restarts == 0


def test_a_dead_sidecar_is_restarted_on_the_next_request(trained_workspace: Settings) -> None:
    with RegistrySidecar(trained_workspace) as reg:
        version = reg.alias_version("ctr", "champion")
        assert reg._proc is not None
        reg._proc.kill()
        reg._proc.wait()
        assert reg.alias_version("ctr", "champion") == version
        assert reg.restarts == 1


def test_a_silent_sidecar_times_out(trained_workspace: Settings) -> None:
    reg = RegistrySidecar(trained_workspace, timeout_s=0.05)    # far below mlflow's import
    with pytest.raises(RegistryUnavailable, match="no answer within"):
        reg.alias_version("ctr", "champion")
    assert reg._proc is None                                     # killed, not left behind
    reg.timeout_s = 120.0
    assert reg.alias_version("ctr", "champion") is not None
    reg.close()


PROBE = """
import json, sys
from adplatform.config import Settings
from mlops.serve import build_decision_service, keep_torch_out
assert "torch" not in sys.modules and "mlflow" not in sys.modules
keep_torch_out()                     # as run_server does first
svc = build_decision_service(Settings.model_validate_json(sys.argv[1]))
engine = svc.engine
heavy = sorted(m for m in ("mlflow", "torch", "sklearn", "lightgbm") if sys.modules.get(m) is not None)
json.dump({"versions": engine.models.versions(), "heavy": heavy}, sys.stdout)
svc.close()
"""


def test_the_decision_service_process_imports_neither_mlflow_nor_torch(
        trained_workspace: Settings) -> None:
    out = subprocess.run([sys.executable, "-c", PROBE, trained_workspace.model_dump_json()],
                         capture_output=True, text=True, timeout=300, check=True)
    got = json.loads(out.stdout)
    assert got["versions"]["ctr"] == resolve(trained_workspace, "ctr", "champion").version
    assert got["heavy"] == [], got

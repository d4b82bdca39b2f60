"""The MLflow registry from a process that must not import mlflow: a sidecar child.

The decision service resolves ``models:/NAME@ALIAS`` at start-up and polls the aliases
for hot reload. Importing mlflow in that process costs 4.4 s and 170 MiB peak RSS
(measured on the 2-core dev machine) and a module graph (sqlalchemy, alembic ...) the
collector then walks for the life of the server. :class:`RegistrySidecar` runs the registry client in a child process instead
(``python -m mlops.registry_sidecar``, started on first use) and talks to it over its
stdin/stdout, one JSON object per line::

    -> {"op": "resolve", "name": "ctr", "alias": "champion"}
    <- {"ok": true, "version": "3", "path": "/ws/models/ctr/3", "tags": {...}}
    -> {"op": "alias_version", "name": "ctr", "alias": "champion"}
    <- {"ok": true, "version": "3"}            (null when the alias is unset)
    -> {"op": "fetch", "name": "ctr", "version": "4"}
    <- {"ok": true, "version": "4", "path": "/ws/models/ctr/4", "tags": {...}}
    <- {"ok": false, "error": "not_found" | "registry", "message": "..."}

The files are downloaded by the child into the workspace's model cache, so the parent
only opens local ONNX files. One request at a time (a lock); a reply that does not come
within ``timeout_s`` kills the child, raises :class:`RegistryUnavailable`, and the next
call starts a fresh one. Interface-compatible with the watcher's ``VersionSource``
(``__call__(name, alias)`` and ``reset()``).
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from adplatform.config import Settings
from mlops.errors import MLOpsError, ModelNotFound
from mlops.registry import ResolvedModel

log = logging.getLogger(__name__)

# The child's first request imports mlflow (4.4 s alone on the dev machine) and opens
# the tracking store; later requests are one registry read (+ a download on fetch). The
# bound is generous because a loaded CI machine can be several times slower.
DEFAULT_TIMEOUT_S = 120.0
SETTINGS_ENV = "ADPLATFORM_SIDECAR_SETTINGS"


class RegistryUnavailable(MLOpsError):
    """The registry sidecar died, answered garbage, or did not answer in time."""


class RegistrySidecar:
    """A registry client in a child process; see the module docstring."""

    def __init__(self, settings: Settings, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self.requests = 0
        self.restarts = 0

    # ------------------------------------------------------------------ API

    def resolve(self, name: str, alias: str) -> ResolvedModel:
        """``models:/name@alias`` with its files in the workspace cache."""
        return self._model(self._ask({"op": "resolve", "name": name, "alias": alias}), alias)

    def fetch(self, name: str, version: str) -> ResolvedModel:
        """Version ``version`` of ``name`` with its files in the workspace cache."""
        return self._model(self._ask({"op": "fetch", "name": name, "version": str(version)}),
                           "")

    def alias_version(self, name: str, alias: str) -> str | None:
        version = self._ask({"op": "alias_version", "name": name, "alias": alias})["version"]
        return None if version is None else str(version)

    __call__ = alias_version           # a watcher VersionSource

    def reset(self) -> None:
        """Stop the child; the next request starts a fresh one."""
        with self._lock:
            self._kill()

    def close(self) -> None:
        self.reset()

    def __enter__(self) -> RegistrySidecar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    @staticmethod
    def _model(reply: dict[str, Any], alias: str) -> ResolvedModel:
        return ResolvedModel(name=str(reply["name"]), alias=alias, version=str(reply["version"]),
                             path=Path(reply["path"]), tags=dict(reply["tags"]))

    def _start(self) -> subprocess.Popen[bytes]:
        # The parent's settings exactly (they may not come from the environment).
        env = {**os.environ, SETTINGS_ENV: self.settings.model_dump_json()}
        proc = subprocess.Popen([sys.executable, "-m", "mlops.registry_sidecar"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        log.info("registry sidecar started (pid %d)", proc.pid)
        return proc

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                if self._proc is not None:
                    self.restarts += 1
                    self._kill()
                self._proc = self._start()
            proc = self._proc
            if proc.stdin is None or proc.stdout is None:
                raise RegistryUnavailable("registry sidecar has no pipes")
            try:
                proc.stdin.write(json.dumps(request).encode() + b"\n")
                proc.stdin.flush()
                line = _readline(proc.stdout, self.timeout_s)
            except (OSError, TimeoutError) as exc:
                self._kill()
                raise RegistryUnavailable(f"registry sidecar: {request['op']} "
                                          f"{request['name']}: {exc}") from exc
            self.requests += 1
        if not line:
            raise RegistryUnavailable(f"registry sidecar exited (code {proc.poll()}) on "
                                      f"{request['op']} {request['name']}")
        try:
            reply: dict[str, Any] = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RegistryUnavailable(f"registry sidecar answered {line[:200]!r}") from exc
        if reply.get("ok"):
            return reply
        if reply.get("error") == "not_found":
            raise ModelNotFound(str(reply.get("message")))
        raise RegistryUnavailable(f"registry: {reply.get('message')}")


def _readline(stream: IO[bytes], timeout_s: float) -> bytes:
    """One line from a pipe, or TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer within {timeout_s:.0f}s")
            if sel.select(left):
                return stream.readline()


# ---------------------------------------------------------------------- the child

def _serve(settings: Settings, rd: IO[bytes], wr: IO[bytes]) -> None:
    from mlops.promotion_registry import alias_version, fetch_version
    from mlops.registry import configure, resolve

    client = None
    for line in rd:
        try:
            req = json.loads(line)
            op, name = str(req["op"]), str(req["name"])
            if op == "alias_version":
                client = client or configure(settings)
                reply: dict[str, Any] = {"version": alias_version(client, name,
                                                                  str(req["alias"]))}
            elif op in ("resolve", "fetch"):
                m = (resolve(settings, name, str(req["alias"])) if op == "resolve"
                     else fetch_version(settings, name, str(req["version"])))
                reply = {"name": m.name, "version": m.version, "path": str(m.path),
                         "tags": m.tags}
            else:
                raise ValueError(f"unknown op {op!r}")
            reply["ok"] = True
        except ModelNotFound as exc:
            reply = {"ok": False, "error": "not_found", "message": str(exc)}
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the parent
            log.exception("registry sidecar request failed")
            client = None
            reply = {"ok": False, "error": "registry", "message": f"{type(exc).__name__}: {exc}"}
        wr.write(json.dumps(reply).encode() + b"\n")
        wr.flush()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    settings = Settings.model_validate_json(os.environ[SETTINGS_ENV])
    _serve(settings, sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()


__all__ = ["DEFAULT_TIMEOUT_S", "RegistrySidecar", "RegistryUnavailable"]

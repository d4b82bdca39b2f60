"""The Triton virtual environment: PyTriton's tritonserver, numpy<2, ONNX Runtime.

PyTriton (the only tritonserver installable from PyPI; it bundles a real tritonserver
binary with the Python backend) needs numpy<2, which the main venv cannot have, so the
server runs from its own venv, by default ``<repo>/.venv-triton`` (``ADPLATFORM_TRITON_VENV``
overrides it). :func:`ensure_venv` creates it from the pinned
``requirements-triton.txt`` once; a stamp file makes later calls instant.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from serving.errors import ServingError

log = logging.getLogger(__name__)

REQUIREMENTS = Path(__file__).with_name("requirements-triton.txt")
STAMP = ".adplatform-stamp"
VENV_ENV = "ADPLATFORM_TRITON_VENV"


class TritonEnvError(ServingError):
    """The Triton venv could not be created or inspected."""


def default_venv_path() -> Path:
    """``$ADPLATFORM_TRITON_VENV`` or ``.venv-triton`` at the repository root."""
    override = os.environ.get(VENV_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / ".venv-triton"


def venv_python(path: Path) -> Path:
    return path / "bin" / "python"


def _digest(python: str) -> str:
    h = hashlib.sha256(REQUIREMENTS.read_bytes())
    h.update(python.encode())
    return h.hexdigest()


def _run(cmd: list[str], what: str, timeout_s: float) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TritonEnvError(f"{what} failed: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout)[-2000:]
        raise TritonEnvError(f"{what} failed (exit {done.returncode}): {tail}")
    return done.stdout


def ensure_venv(path: Path | None = None, *, python: str | None = None,
                timeout_s: float = 1800.0) -> Path:
    """Create the Triton venv at ``path`` unless it is already up to date; return ``path``.

    ``python`` is the base interpreter (default: this one, CPython 3.11, for which PyTriton
    ships a Python-backend stub). Idempotent and safe to call from concurrent processes:
    the stamp records the requirements' hash, and a file lock serializes creation.
    """
    path = Path(path) if path is not None else default_venv_path()
    python = python or sys.executable
    digest = _digest(python)
    stamp = path / STAMP
    if stamp.is_file() and stamp.read_text().strip() == digest and venv_python(path).exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and stamp.read_text().strip() == digest:
            return path
        started = time.monotonic()
        log.info("creating the Triton venv %s (pip install; a few minutes the first time)", path)
        _run([python, "-m", "venv", str(path)], "python -m venv", timeout_s)
        _run([str(venv_python(path)), "-m", "pip", "install", "--disable-pip-version-check",
              "-q", "-r", str(REQUIREMENTS)], "pip install -r requirements-triton.txt",
             timeout_s)
        stamp.write_text(digest + "\n")
        log.info("Triton venv ready in %.0f s", time.monotonic() - started)
    return path


def python_libdir(path: Path) -> str:
    """The venv interpreter's LIBDIR: the Python-backend stub loads libpython from there."""
    out = _run([str(venv_python(path)), "-c",
                "import sysconfig; print(sysconfig.get_config_var('LIBDIR') or '')"],
               "reading the Triton venv's LIBDIR", 60.0)
    return out.strip()


__all__ = ["REQUIREMENTS", "TritonEnvError", "default_venv_path", "ensure_venv",
           "python_libdir", "venv_python"]

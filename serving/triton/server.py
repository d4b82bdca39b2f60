"""A real tritonserver (PyTriton's) serving a generated model repository, and its launcher.

Two halves in one file:

- :func:`main` is the server script. It runs with the Triton venv's interpreter
  (``.venv-triton/bin/python serving/triton/server.py --repo DIR ...``; see
  :mod:`serving.triton.venv`) and imports only the standard library at the top, so it
  needs nothing from the adplatform package. PyTriton's bundled tritonserver has only
  the Python backend, so the script serves each ``<name>/<version>/model.onnx`` of the
  repository as a Python-backend model with the same name, version, tensor names,
  batching and shapes as its ``config.pbtxt`` (ONNX Runtime, one intra-op thread),
  plus the ``auction`` model computing all three in one request.
- :func:`start_server` runs in the main venv: it starts that script as a subprocess
  and returns a :class:`TritonProcess` once ``/v2/health/ready`` and the ``auction``
  model answer.

Reload: PyTriton cannot replace a bound model, so :meth:`TritonProcess.reload` is a clean
restart on the same ports (clients see ``BackendUnavailable`` for the few seconds in
between and degrade to their fallback). A production tritonserver reloads in place.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

ACCESS_TOKEN_ENV = "ADPLATFORM_TRITON_ACCESS_TOKEN"
ACCESS_HEADER = "triton-access-token"  # PyTriton guards the admin and statistics APIs
MODEL_NAMES = ("ctr", "fraud", "shading")
AUCTION = "auction"
SLEEPY = "auction_sleep"               # test hook: the auction after a sleep
Engine = Literal["pytriton", "native"]


# --------------------------------------------------------------------------------------
# The server script (Triton venv: pytriton, numpy<2, onnxruntime).
# --------------------------------------------------------------------------------------

@dataclass
class _Served:
    """One repository model run by ONNX Runtime, presented as its config.pbtxt says."""

    name: str
    version: int
    input_name: str
    output_name: str
    input_dims: tuple[int, ...]
    output_dims: tuple[int, ...]
    max_batch_size: int
    reshaped_output: bool
    instances: int
    queue_delay_us: int
    session: Any

    def run(self, x: Any) -> Any:
        return self.session.run([self.output_name], {self.input_name: x})[0]


def _load_models(repo: Path) -> dict[str, _Served]:
    import onnxruntime as ort
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    served: dict[str, _Served] = {}
    for name in MODEL_NAMES:
        folder = repo / name
        if not (folder / "config.pbtxt").is_file():
            continue
        cfg = text_format.Parse((folder / "config.pbtxt").read_text(),
                                model_config_pb2.ModelConfig())
        versions = sorted(int(p.name) for p in folder.iterdir()
                          if p.name.isdigit() and (p / "model.onnx").is_file())
        if not versions:
            raise FileNotFoundError(f"{folder}: no <version>/model.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(folder / str(versions[-1]) / "model.onnx"), opts,
                                       providers=["CPUExecutionProvider"])
        inp, out = cfg.input[0], cfg.output[0]
        served[name] = _Served(
            name=name, version=versions[-1], input_name=inp.name, output_name=out.name,
            input_dims=tuple(inp.dims), output_dims=tuple(out.dims),
            max_batch_size=cfg.max_batch_size, reshaped_output=out.HasField("reshape"),
            instances=sum(g.count for g in cfg.instance_group) or 1,
            queue_delay_us=cfg.dynamic_batching.max_queue_delay_microseconds,
            session=session)
    if "ctr" not in served:
        raise FileNotFoundError(f"{repo}: no ctr model (ctr/config.pbtxt)")
    return served


def _component_infer(model: _Served) -> Callable[[list[Any]], list[dict[str, Any]]]:
    """Requests of several clients, batched by Triton, scored in one ONNX Runtime call."""
    import numpy as np

    def infer(requests: list[Any]) -> list[dict[str, Any]]:
        xs = [np.asarray(r[model.input_name], dtype=np.float32) for r in requests]
        y = model.run(xs[0] if len(xs) == 1 else np.concatenate(xs))
        if model.reshaped_output:                    # model (B,) -> clients (B, 1)
            y = y.reshape((len(y), *model.output_dims))
        answers, start = [], 0
        for x in xs:
            answers.append({model.output_name: y[start:start + len(x)]})
            start += len(x)
        return answers

    return infer


def _auction_infer(models: dict[str, _Served], landscape_width: int,
                   delay_s: float) -> Callable[[list[Any]], list[dict[str, Any]]]:
    """The ``auction`` model: ctr, fraud and shading of one auction in one request."""
    import numpy as np

    blob = json.dumps({n: str(m.version) for n, m in models.items()}, sort_keys=True)
    versions = np.array([blob.encode()], dtype=np.object_)
    # Not computed: NaN (PyTriton cannot send empty tensors); `versions` says what ran.
    no_landscape = np.full((1, max(landscape_width, 1)), np.nan, dtype=np.float32)
    no_fraud = np.full((1,), np.nan, dtype=np.float32)

    def score(request: Any) -> dict[str, Any]:
        keys = set(request.keys())
        pctr = models["ctr"].run(request["ctr_features"]).reshape(-1)
        p_fraud = no_fraud
        if "fraud_features" in keys and "fraud" in models:
            p_fraud = models["fraud"].run(request["fraud_features"]).reshape(-1)[:1]
        landscape = no_landscape
        if "shading_features" in keys and "shading" in models:
            landscape = models["shading"].run(request["shading_features"])
        return {"pctr": pctr.astype(np.float32, copy=False),
                "p_fraud": p_fraud.astype(np.float32, copy=False),
                "landscape": landscape.astype(np.float32, copy=False),
                "versions": versions}

    def infer(requests: list[Any]) -> list[dict[str, Any]]:
        if delay_s > 0:
            time.sleep(delay_s)
        return [score(r) for r in requests]

    return infer


def _bind_all(triton: Any, repo: Path, models: dict[str, _Served], sleep_s: float) -> None:
    import numpy as np
    from google.protobuf import text_format
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from tritonclient.grpc import model_config_pb2

    for m in models.values():
        batched = m.max_batch_size > 0
        config = ModelConfig(
            batching=batched, max_batch_size=max(m.max_batch_size, 1),
            batcher=DynamicBatcher(max_queue_delay_microseconds=m.queue_delay_us))
        triton.bind(model_name=m.name, model_version=m.version,
                    infer_func=[_component_infer(m) for _ in range(m.instances)],
                    inputs=[Tensor(name=m.input_name, dtype=np.float32, shape=m.input_dims)],
                    outputs=[Tensor(name=m.output_name, dtype=np.float32,
                                    shape=m.output_dims)],
                    config=config, strict=False)

    cfg = text_format.Parse((repo / AUCTION / "config.pbtxt").read_text(),
                            model_config_pb2.ModelConfig())
    dtypes = {model_config_pb2.TYPE_FP32: np.float32, model_config_pb2.TYPE_STRING: bytes}
    inputs = [Tensor(name=i.name, dtype=dtypes[i.data_type], shape=tuple(i.dims),
                     optional=i.optional) for i in cfg.input]
    outputs = [Tensor(name=o.name, dtype=dtypes[o.data_type], shape=tuple(o.dims))
               for o in cfg.output]
    width = next(int(o.dims[-1]) for o in cfg.output if o.name == "landscape")
    instances = sum(g.count for g in cfg.instance_group) or 1
    auctions = {AUCTION: 0.0, **({SLEEPY: sleep_s} if sleep_s > 0 else {})}
    for name, delay in auctions.items():
        triton.bind(model_name=name,
                    infer_func=[_auction_infer(models, width, delay) for _ in range(instances)],
                    inputs=inputs, outputs=outputs, config=ModelConfig(batching=False),
                    strict=False)


def main(argv: list[str] | None = None) -> int:
    """Serve ``--repo`` with PyTriton's tritonserver until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="generated model repository")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=0, help="0: no metrics endpoint")
    parser.add_argument("--sleep-model-s", type=float, default=0.0,
                        help=f"test hook: also serve {SLEEPY!r}, the auction after a sleep")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # PyTriton's serve() stops cleanly on it

    signal.signal(signal.SIGTERM, _terminate)
    models = _load_models(args.repo)
    config = TritonConfig(
        http_address=args.host, http_port=args.http_port,
        grpc_address=args.host, grpc_port=args.grpc_port,
        allow_metrics=args.metrics_port > 0, metrics_address=args.host,
        metrics_port=args.metrics_port or None, exit_on_error=True)
    security = TritonSecurityConfig(access_token=os.environ.get(ACCESS_TOKEN_ENV) or None)
    with Triton(config=config, security_config=security) as triton:
        _bind_all(triton, args.repo, models, args.sleep_model_s)
        log.info("serving %s on http %s:%d grpc %s:%d", sorted(models), args.host,
                 args.http_port, args.host, args.grpc_port)
        triton.serve()
    return 0


# --------------------------------------------------------------------------------------
# The launcher (main venv).
# --------------------------------------------------------------------------------------

@dataclass
class TritonProcess:
    """A running server script; ``stop()`` it (or use it as a context manager)."""

    repo: Path
    http_port: int
    grpc_port: int
    host: str = "127.0.0.1"
    metrics_port: int = 0
    sleep_model_s: float = 0.0
    engine: Engine = "pytriton"
    venv: Path | None = None
    log_path: Path | None = None        # default: a temporary file, removed by stop()
    access_token: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _temporary_log: bool = field(default=False, repr=False)

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def launch(self) -> None:
        """Start the script in its own process group (not waiting for readiness)."""
        from serving.triton.venv import ensure_venv, python_libdir, venv_python

        if self.engine not in ("pytriton", "native"):
            raise ValueError(f"engine must be 'pytriton' or 'native', got {self.engine!r}")
        if self.engine == "native" and self.sleep_model_s > 0:
            raise ValueError("the sleep test hook exists only with engine='pytriton'")
        venv = ensure_venv(self.venv)
        self.venv = venv
        env = dict(os.environ)
        # The Python-backend stub loads libpython from the interpreter's LIBDIR.
        libdir = python_libdir(venv)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
        env[ACCESS_TOKEN_ENV] = self.access_token
        env.pop("PYTHONPATH", None)
        script = Path(__file__).resolve()
        if self.engine == "native":
            script = script.with_name("native.py")
        cmd = [str(venv_python(venv)), str(script), "--repo",
               str(Path(self.repo).resolve()), "--host", self.host,
               "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
               "--metrics-port", str(self.metrics_port)]
        if self.sleep_model_s > 0:
            cmd += ["--sleep-model-s", str(self.sleep_model_s)]
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="adplatform-triton-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
            self._temporary_log = True
        with open(self.log_path, "ab") as sink:
            self.popen = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=env,
                                          start_new_session=True)
        log.info("started tritonserver (%s) pid %d for %s; log %s", self.engine,
                 self.popen.pid, self.repo, self.log_path)

    def _get(self, path: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
        request = urllib.request.Request(f"http://{self.http_url}{path}",
                                         headers={ACCESS_HEADER: self.access_token})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Block until the server and the auction model are ready; raise if it died."""
        from serving.errors import BackendUnavailable

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                tail = self.log_tail()
                self.stop()
                raise BackendUnavailable(f"tritonserver exited while starting:\n{tail}")
            try:
                if (self._get("/v2/health/ready")[0] == 200
                        and self._get(f"/v2/models/{AUCTION}/ready")[0] == 200):
                    return
            except OSError as exc:
                log.debug("tritonserver not listening yet: %s", exc)
            time.sleep(0.2)
        tail = self.log_tail()
        self.stop()
        raise BackendUnavailable(f"tritonserver not ready after {timeout_s:.0f} s:\n{tail}")

    def statistics(self, model: str = "") -> dict[str, Any]:
        """The server's ``/v2/models[/<model>]/stats`` (token-guarded by PyTriton)."""
        status, body = self._get(f"/v2/models/{model}/stats" if model else "/v2/models/stats")
        if status != 200:
            raise RuntimeError(f"stats: HTTP {status}: {body[:200]!r}")
        result: dict[str, Any] = json.loads(body)
        return result

    def log_tail(self, chars: int = 4000) -> str:
        if self.log_path is None:
            return "(not started)"
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError as exc:
            return f"(no log: {exc})"

    def _group_pids(self, comm: str | None = None) -> list[int]:
        """Live processes of our process group (the script, tritonserver, backend stubs)."""
        if self.popen is None:
            return []
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:             # the process ended while we looked
                continue
            name = text[text.find("(") + 1:text.rfind(")")]
            fields = text[text.rfind(")") + 2:].split()
            if int(fields[2]) == self.popen.pid and fields[0] != "Z" \
                    and (comm is None or name == comm):
                pids.append(int(stat.parent.name))
        return pids

    def _signal(self, pids: list[int], sig: int) -> None:
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                log.debug("pid %d already gone", pid)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop cleanly (SIGINT: PyTriton unloads and removes its workspace), else SIGKILL."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self._signal(self._group_pids(), signal.SIGINT)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver pid %d ignored SIGINT; killing it", self.popen.pid)
        self._signal(self._group_pids(), signal.SIGKILL)   # anything left in the group
        self.popen.wait()
        log.info("stopped tritonserver pid %d", self.popen.pid)
        if self._temporary_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path, self._temporary_log = None, False

    def kill(self, timeout_s: float = 30.0) -> None:
        """Crash the server: SIGKILL tritonserver itself, as a failure test wants.

        The script notices, cleans its workspace and shared memory, and exits; whatever
        is left after ``timeout_s`` is stopped.
        """
        for pid in self._group_pids("tritonserver"):
            self._signal([pid], signal.SIGKILL)
            log.info("killed tritonserver pid %d", pid)
        if self.popen is not None:
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("the server script outlived its tritonserver; stopping it")
        self.stop()

    def reload(self, new_repo: Path, timeout_s: float = 180.0) -> TritonProcess:
        """Serve ``new_repo``: a clean restart on the same ports. Returns ``self``."""
        self.stop()
        self.repo = Path(new_repo)
        self.launch()
        self.wait_ready(timeout_s)
        return self

    def __enter__(self) -> TritonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(repo: Path, http_port: int = 8000, grpc_port: int = 8001, *,
                 host: str = "127.0.0.1", metrics_port: int = 0, venv: Path | None = None,
                 engine: Engine = "pytriton", sleep_model_s: float = 0.0,
                 log_path: Path | None = None, timeout_s: float = 180.0) -> TritonProcess:
    """Start tritonserver (PyTriton, Triton venv; created if missing) serving ``repo``.

    ``engine="pytriton"`` serves the models through PyTriton's Python API (this file's
    :func:`main`); ``engine="native"`` runs the bundled tritonserver binary on the
    repository itself, so the ``auction`` model is the production BLS ``model.py``
    (:mod:`serving.triton.native`). ``sleep_model_s`` > 0 (PyTriton only) also serves
    ``auction_sleep``, the auction after that sleep: a test hook for timeouts.

    Returns once ``/v2/health/ready`` and the ``auction`` model are ready; raises
    ``BackendUnavailable`` (with the server log's tail) if it dies or times out.
    """
    proc = TritonProcess(repo=Path(repo), http_port=http_port, grpc_port=grpc_port,
                         host=host, metrics_port=metrics_port, sleep_model_s=sleep_model_s,
                         engine=engine, venv=venv, log_path=log_path)
    proc.launch()
    proc.wait_ready(timeout_s)
    return proc


def serve(repo: Path, http_port: int = 8000, grpc_port: int = 8001, **options: Any) -> int:
    """Run :func:`start_server` in the foreground until Ctrl-C or the server exits.

    For the CLI (``adplatform serving triton``); ``options`` go to :func:`start_server`.
    Returns the server's exit code (0 after Ctrl-C).
    """
    proc = start_server(repo, http_port, grpc_port, **options)
    log.info("Triton serving %s: grpc %s, http %s (Ctrl-C stops)", repo, proc.grpc_url,
             proc.http_url)
    popen = proc.popen
    if popen is None:
        raise RuntimeError("the server process was not started")
    try:
        return popen.wait()
    except KeyboardInterrupt:
        log.info("stopping Triton")
        return 0
    finally:
        proc.stop()


if __name__ == "__main__":
    sys.exit(main())

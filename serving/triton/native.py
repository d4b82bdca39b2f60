"""Run a generated repository on PyTriton's bundled tritonserver binary directly.

Script for the Triton venv (stdlib imports at the top; pytriton, numpy and onnxruntime
only inside functions). PyTriton's binary has only the Python backend, so the ONNX
models are served by a small Python-backend ONNX Runtime runner
(:data:`ORT_MODEL`) under their own names, versions, tensor names, batching and
client-visible shapes; the ``auction`` model is the repository's own
``auction/1/model.py`` (the production BLS), unchanged. This is how the tests exercise
the exact BLS code a production Triton runs. :func:`serving.triton.server.start_server`
with ``engine="native"`` launches it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

ACCESS_TOKEN_ENV = "ADPLATFORM_TRITON_ACCESS_TOKEN"
ACCESS_HEADER = "triton-access-token"
RESTRICTED = "model-repository,shared-memory,trace,logging,statistics"
MODEL_NAMES = ("ctr", "fraud", "shading")

# A Python-backend stand-in for the onnxruntime backend: same inputs, same outputs as
# the config shows clients (a reshaped (B,) output is presented as (B, 1)).
ORT_MODEL = '''\
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input = config["input"][0]["name"]
        self.output = config["output"][0]["name"]
        self.batched = config.get("max_batch_size", 0) > 0
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        xs = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        y = self.session.run([self.output], {self.input: np.concatenate(xs)})[0]
        if self.batched and y.ndim == 1:
            y = y.reshape(-1, 1)
        responses, start = [], 0
        for x in xs:
            part = np.ascontiguousarray(y[start:start + len(x)])
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output, part)]))
            start += len(x)
        return responses
'''


def python_variant(repo: Path, out: Path) -> Path:
    """Copy ``repo`` into ``out`` with each ONNX model run by :data:`ORT_MODEL`."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    shutil.copytree(repo, out)
    for name in MODEL_NAMES:
        folder = out / name
        if not (folder / "config.pbtxt").is_file():
            continue
        cfg = text_format.Parse((folder / "config.pbtxt").read_text(),
                                model_config_pb2.ModelConfig())
        cfg.platform = ""
        cfg.backend = "python"
        for output in cfg.output:
            output.ClearField("reshape")          # the runner reshapes (B,) to (B, 1)
        (folder / "config.pbtxt").write_text(text_format.MessageToString(cfg))
        for version in folder.iterdir():
            if version.is_dir() and (version / "model.onnx").is_file():
                (version / "model.py").write_text(ORT_MODEL)
    return out


def _prepare_binary(workdir: Path) -> Path:
    """tritonserver and its backends, with the Python-backend stub of this interpreter."""
    import pytriton

    dist = Path(pytriton.__file__).parent / "tritonserver"
    target = workdir / "tritonserver"
    shutil.copytree(dist, target, ignore=shutil.ignore_patterns("python_backend_stubs"))
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    shutil.copy(dist / "python_backend_stubs" / version / "triton_python_backend_stub",
                target / "backends" / "python" / "triton_python_backend_stub")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from pytriton.utils.distribution import get_libs_path

    workdir = Path(tempfile.mkdtemp(prefix="adplatform-native-triton-"))
    try:
        server = _prepare_binary(workdir)
        repo = python_variant(args.repo.resolve(), workdir / "repo")
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(get_libs_path()), env.get("LD_LIBRARY_PATH", "")) if p)
        # The stub's embedded Python finds this venv through `python3` on PATH.
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        cmd = [str(server / "bin" / "tritonserver"), f"--model-repository={repo}",
               f"--backend-directory={server / 'backends'}",
               f"--backend-config=python,shm-region-prefix-name=adplatform{os.getpid()}",
               f"--http-address={args.host}", f"--http-port={args.http_port}",
               f"--grpc-address={args.host}", f"--grpc-port={args.grpc_port}",
               "--exit-on-error=true", "--log-verbose=0"]
        if args.metrics_port:
            cmd += ["--allow-metrics=true", f"--metrics-address={args.host}",
                    f"--metrics-port={args.metrics_port}"]
        else:
            cmd += ["--allow-metrics=false"]
        token = env.pop(ACCESS_TOKEN_ENV, "")
        if token:
            rule = f"{RESTRICTED}:{ACCESS_HEADER}={token}"
            cmd += [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]
        child = subprocess.Popen(cmd, env=env)

        def _forward(signum: int, frame: object) -> None:
            child.send_signal(signal.SIGINT)      # tritonserver unloads and exits on SIGINT

        signal.signal(signal.SIGTERM, _forward)
        signal.signal(signal.SIGINT, _forward)
        code = child.wait()
        log.info("tritonserver exited with %d", code)
        return 0 if code in (0, -signal.SIGINT) else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        # Python-backend regions a crashed server could not remove (ours by prefix).
        for region in Path("/dev/shm").glob(f"adplatform{os.getpid()}*"):
            region.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())

"""Serving suite: scoring one auction (fraud + CTR for K=20 candidates + shading) per backend.

Targets, each at batch 1 (one auction per call) and batch 64 (64 auctions per call):

- **in-process ONNX**: :class:`serving.onnx_backend.OnnxBackend` (batch 1; its memo of
  shading landscapes off, as the cycled synthetic auctions would always hit it) and, for
  batch 64, the same sessions run once per model on the 64 auctions' stacked rows (as
  :meth:`serving.bento.models.AuctionModels.score_many` does); ONNX Runtime with one
  intra-op thread;
- **Triton**: PyTriton's tritonserver started here on a generated repository;
  batch 1 is one gRPC request to the ``auction`` model (one round trip per auction,
  checked against the server's statistics), batch 64 one request per model with the
  64 auctions' rows stacked (3 round trips per call);
- **BentoML**: ``bentoml serve`` started here; batch 1 is one HTTP request to
  ``/score_auction``, batch 64 one request to ``/score_auctions`` (adaptive batching).

Baselines, measured in the same run: **raw ONNX Runtime**, one ``session.run`` per model
per auction (no stacking: batch 64 is 64 x 3 calls), and **MLflow pyfunc**,
``mlflow.pyfunc.load_model(...).predict`` per model per call (as a generic model server
would call it; batch 64 predicts on the stacked rows).

Latency is measured closed-loop, one call at a time; p50/p99 are per call (batch 64:
per call of 64 auctions, per auction in ``extra``). Throughput is auctions per second:
in process, one thread calling back to back (the service scales by processes); remote,
``REMOTE_THREADS`` client threads for ``THROUGHPUT_S`` seconds.

Models: the bench world's ``@champion`` of ctr, fraud and shading. Models not registered
there are replaced by stand-ins with the serving contract's shapes (fraud: LightGBM on 24
features -> (1,); shading: a 3 x 64 SiLU MLP on 11 features -> (1, 12)); ``extra.models``
says which. Triton and BentoML read the same files (BentoML through a small registry of
its own under ``<world>/bench-serving``). Feature rows are synthetic (N(0, 1), 5% NaN):
tree ensembles cost about the same whatever the values.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adplatform.config import Settings
from bench.harness import Row, with_ratios
from serving.base import AuctionInputs

log = logging.getLogger(__name__)

SUITE = "serving"
K = 20
BATCH = 64
DISTINCT = 256                # distinct auctions cycled through
WIDTHS = {"ctr": 32, "fraud": 24, "shading": 11}
SHADING_OUT = 12              # 3 x 4 log-normal components
MODELS = ("ctr", "fraud", "shading")
REMOTE_THREADS = 4
THROUGHPUT_S = 3.0
ITERATIONS = {"in-process": 5000, "raw": 5000, "pyfunc": 1000, "triton": 2000, "bento": 2000}
BATCH_ITERATIONS = {"in-process": 400, "raw": 200, "pyfunc": 200, "triton": 200, "bento": 200}
GOAL_P50_MS, GOAL_P99_MS, GOAL_PYFUNC_RATIO = 0.2, 0.5, 20.0


@dataclass
class ModelSet:
    files: dict[str, Path]
    versions: dict[str, str]
    origin: dict[str, str]           # "registered vN" or "stand-in"

    def describe(self) -> str:
        return ", ".join(f"{n}={self.origin[n]}" for n in MODELS)


# ---------------------------------------------------------------------- models


def standin_fraud(path: Path, seed: int = 5) -> Path:
    """A LightGBM IVT-style classifier on 24 features: ``fraud_features`` -> ``p_fraud``."""
    import lightgbm as lgb
    import onnx

    from models.lgbm_onnx import lgbm_to_onnx

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(20_000, WIDTHS["fraud"])).astype(np.float32)
    logit = x[:, 0] * 2 + x[:, 1] * x[:, 2] - x[:, 3] ** 2 - 2.5
    y = (rng.random(len(x)) < 1 / (1 + np.exp(-logit))).astype(int)
    params = {"objective": "binary", "num_leaves": 31, "learning_rate": 0.05, "seed": seed,
              "num_threads": 2, "verbose": -1, "deterministic": True}
    booster = lgb.train(params, lgb.Dataset(x, y), num_boost_round=150)
    model = lgbm_to_onnx(booster, WIDTHS["fraud"], input_name="fraud_features",
                         output_name="p_fraud", doc="bench stand-in for the fraud model")
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def standin_shading(path: Path, seed: int = 6, hidden: int = 64, layers: int = 3) -> Path:
    """A SiLU MLP like the shading net: ``shading_features`` (R, 11) -> ``landscape`` (R, 12)."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev, width = "shading_features", WIDTHS["shading"]
    for i in range(layers + 1):
        out_w = hidden if i < layers else SHADING_OUT
        w = (rng.normal(size=(width, out_w)) / np.sqrt(width)).astype(np.float32)
        b = np.zeros(out_w, np.float32)
        inits += [helper.make_tensor(f"w{i}", TensorProto.FLOAT, w.shape, w.ravel()),
                  helper.make_tensor(f"b{i}", TensorProto.FLOAT, b.shape, b)]
        z = "landscape" if i == layers else f"z{i}"
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [z])]
        if i < layers:
            nodes += [helper.make_node("Sigmoid", [z], [f"s{i}"]),
                      helper.make_node("Mul", [z, f"s{i}"], [f"h{i}"])]
            prev = f"h{i}"
        width = out_w
    graph = helper.make_graph(
        nodes, "shading_standin",
        [helper.make_tensor_value_info("shading_features", TensorProto.FLOAT,
                                       [None, WIDTHS["shading"]])],
        [helper.make_tensor_value_info("landscape", TensorProto.FLOAT, [None, SHADING_OUT])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def model_set(world: Settings, folder: Path) -> ModelSet:
    """The world's champions; stand-ins for fraud/shading when they are not registered."""
    from mlops.errors import ModelNotFound
    from mlops.registry import resolve

    files: dict[str, Path] = {}
    versions: dict[str, str] = {}
    origin: dict[str, str] = {}
    for name in MODELS:
        try:
            m = resolve(world, name)
        except ModelNotFound:
            if name == "ctr":
                raise
            path = folder / f"standin-{name}.onnx"
            if not path.is_file():          # built once: the bench registry stays cached
                (standin_fraud if name == "fraud" else standin_shading)(path)
            files[name] = path
            versions[name], origin[name] = "1", "stand-in"
            continue
        files[name], versions[name], origin[name] = m.onnx_path, m.version, f"registered v{m.version}"
    return ModelSet(files=files, versions=versions, origin=origin)


def _digest(files: dict[str, Path]) -> dict[str, str]:
    return {n: hashlib.sha256(p.read_bytes()).hexdigest() for n, p in sorted(files.items())}


def serving_registry(world: Settings, models: ModelSet) -> Settings:
    """A registry holding exactly ``models`` as champions, for BentoML and pyfunc (cached)."""
    import mlflow
    import onnx
    from mlflow.models import infer_signature

    from mlops.registry import ensure_experiment, register

    home = world.workspace.root / "bench-serving"
    settings = Settings(**{**world.model_dump(), "home": home, "mlflow_tracking_uri": None})
    stamp = home / "models.json"
    digests = _digest(models.files)
    if stamp.exists() and json.loads(stamp.read_text()) == digests:
        return settings
    shutil.rmtree(home, ignore_errors=True)
    settings.workspace.ensure()
    ensure_experiment(settings, "bench-serving")
    rng = np.random.default_rng(0)
    sessions = _sessions(models)
    for name in MODELS:
        example = rng.normal(size=(2, WIDTHS[name])).astype(np.float32)
        pred = sessions[name].run(example)
        with mlflow.start_run(run_name=f"bench-{name}"):
            info = mlflow.onnx.log_model(onnx.load(str(models.files[name])), name="model",
                                         input_example=example,
                                         signature=infer_signature(example, pred),
                                         save_as_external_data=False)
            register(settings, info.model_uri, name, {"origin": models.origin[name]})
    stamp.write_text(json.dumps(digests))
    return settings


# ---------------------------------------------------------------------- workload


def auctions(n: int, seed: int, *, shading_rows: int = 1) -> list[AuctionInputs]:
    """``n`` synthetic auctions: K ctr rows, one fraud row, ``shading_rows`` shading rows."""
    rng = np.random.default_rng(seed)

    def rows(r: int, f: int) -> np.ndarray:
        x = rng.normal(size=(r, f)).astype(np.float32)
        x[rng.random(x.shape) < 0.05] = np.nan
        return x

    return [AuctionInputs(ctr=rows(K, WIDTHS["ctr"]), fraud=rows(1, WIDTHS["fraud"]),
                          shading=rows(shading_rows, WIDTHS["shading"])) for _ in range(n)]


def batches(items: list[AuctionInputs], size: int) -> list[list[AuctionInputs]]:
    return [[items[(i * size + j) % len(items)] for j in range(size)] for i in range(len(items))]


def stacked(batch: list[AuctionInputs]) -> dict[str, np.ndarray]:
    return {"ctr": np.concatenate([a.ctr for a in batch]),
            "fraud": np.concatenate([a.fraud for a in batch if a.fraud is not None]),
            "shading": np.concatenate([a.shading for a in batch if a.shading is not None])}


# ---------------------------------------------------------------------- measuring


@dataclass
class Measured:
    lat_ms: np.ndarray
    per_s: float           # calls per second
    errors: int


def latencies(fn: Callable[[int], object], n: int, warmup: int = 100) -> Measured:
    """Closed loop, one call at a time; a failed call counts as an error."""
    errors = 0
    for i in range(warmup):
        fn(i)
    gc.collect()
    took = np.empty(n, dtype=np.float64)
    clock = time.perf_counter_ns
    t_start = clock()
    for i in range(n):
        t0 = clock()
        try:
            fn(i)
        except Exception:  # noqa: BLE001 - counted; a remote backend may fail a call
            errors += 1
        took[i] = clock() - t0
    elapsed = (clock() - t_start) / 1e9
    return Measured(lat_ms=took / 1e6, per_s=n / elapsed if elapsed > 0 else 0.0, errors=errors)


def throughput(make: Callable[[], Callable[[int], object]], threads: int,
               duration_s: float) -> tuple[float, int]:
    """Calls per second of ``threads`` threads, each with its own ``make()``; and errors."""
    counts = [0] * threads
    errors = [0] * threads
    deadline = 0.0                        # set once every thread is ready
    ready = threading.Barrier(threads + 1)

    def worker(t: int) -> None:
        fn = make()
        ready.wait()
        i = t * 7919
        while time.monotonic() < deadline:
            try:
                fn(i)
                counts[t] += 1
            except Exception:  # noqa: BLE001 - counted in the row's errors
                errors[t] += 1
            i += 1

    pool = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads)]
    for th in pool:
        th.start()
    t0 = time.monotonic()
    deadline = t0 + duration_s
    ready.wait()
    for th in pool:
        th.join(duration_s + 30)
    return sum(counts) / max(time.monotonic() - t0, 1e-9), sum(errors)


def _row(target: str, baseline: str, m: Measured, per_call: int, *, per_s: float | None = None,
         errors: int = 0, extra: dict[str, float | str] | None = None) -> Row:
    p50, p99 = (float(v) for v in np.percentile(m.lat_ms, [50, 99]))
    extra = dict(extra or {})
    if per_call > 1:
        extra.update({"auctions_per_call": per_call, "p50_ms_per_auction": p50 / per_call,
                      "p99_ms_per_auction": p99 / per_call})
    extra["load_1min"] = round(os.getloadavg()[0], 2)
    return Row(suite=SUITE, target=target, baseline=baseline, rate=None, p50_ms=p50,
               p99_ms=p99, throughput=(per_s if per_s is not None else m.per_s) * per_call,
               errors=m.errors + errors, extra=extra)


# ---------------------------------------------------------------------- targets


def _sessions(models: ModelSet) -> dict[str, Any]:
    from serving.onnx_backend import _Session

    return {n: _Session(p) for n, p in models.files.items()}


def _local_rows(models: ModelSet, registry: Settings, items: list[AuctionInputs],
                groups: list[list[AuctionInputs]]) -> tuple[list[Row], list[Row]]:
    """(batch-1 rows, batch-64 rows) for raw ORT, pyfunc and the in-process backend."""
    import mlflow

    from mlops.registry import configure
    from serving.onnx_backend import ModelFile, OnnxBackend

    n = len(items)
    raw = _sessions(models)

    def raw_auction(a: AuctionInputs) -> None:
        raw["ctr"].run(a.ctr)
        raw["fraud"].run(a.fraud)
        raw["shading"].run(a.shading)

    def raw_one(i: int) -> None:
        raw_auction(items[i % n])

    def raw_many(i: int) -> None:
        for a in groups[i % len(groups)]:
            raw_auction(a)

    configure(registry)
    pyfunc = {name: mlflow.pyfunc.load_model(f"models:/{name}/1") for name in MODELS}
    stacks = [stacked(g) for g in groups]

    def pyfunc_one(i: int) -> None:
        a = items[i % n]
        pyfunc["ctr"].predict(a.ctr)
        pyfunc["fraud"].predict(a.fraud)
        pyfunc["shading"].predict(a.shading)

    def pyfunc_many(i: int) -> None:
        s = stacks[i % len(stacks)]
        for name in MODELS:
            pyfunc[name].predict(s[name])

    # The landscape memo off: the 256 synthetic auctions cycled here would all hit it,
    # which says nothing about scoring (the decision suite measures it on traffic).
    backend = OnnxBackend([ModelFile(nm, models.versions[nm], p)
                           for nm, p in models.files.items()], shading_memo=0)
    stacked_sessions = _sessions(models)
    cuts = np.cumsum([K] * BATCH)[:-1]

    def inproc_one(i: int) -> None:
        backend.score(items[i % n])

    def inproc_many(i: int) -> None:
        # What AuctionModels.score_many does (each model once on the stacked rows),
        # without its check that wants one shading row per candidate.
        s = stacks[i % len(stacks)]
        np.split(stacked_sessions["ctr"].run(s["ctr"]), cuts)
        list(stacked_sessions["fraud"].run(s["fraud"]))
        np.split(stacked_sessions["shading"].run(s["shading"]), BATCH)

    m_raw1 = latencies(raw_one, ITERATIONS["raw"])
    m_py1 = latencies(pyfunc_one, ITERATIONS["pyfunc"], warmup=20)
    m_in1 = latencies(inproc_one, ITERATIONS["in-process"])
    m_raw64 = latencies(raw_many, BATCH_ITERATIONS["raw"], warmup=5)
    m_py64 = latencies(pyfunc_many, BATCH_ITERATIONS["pyfunc"], warmup=5)
    m_in64 = latencies(inproc_many, BATCH_ITERATIONS["in-process"], warmup=10)
    backend.close()

    raw1 = _row("raw ORT, one run per model", "-", m_raw1, 1)
    py1 = _row("MLflow pyfunc predict per model", "-", m_py1, 1)
    in1 = with_ratios(_row("in-process ONNX (OnnxBackend)", "MLflow pyfunc predict per model",
                           m_in1, 1), py1)
    p50, p99 = float(np.percentile(m_in1.lat_ms, 50)), float(np.percentile(m_in1.lat_ms, 99))
    vs_raw = float(np.percentile(m_raw1.lat_ms, 50)) / p50
    in1.extra.update({
        "goal_p50_le_0.2ms": "met" if p50 <= GOAL_P50_MS else "missed",
        "goal_p99_le_0.5ms": "met" if p99 <= GOAL_P99_MS else "missed",
        "goal_20x_pyfunc": "met" if (in1.ratio_p50 or 0) >= GOAL_PYFUNC_RATIO else "missed",
        "ratio_p50_vs_raw": round(vs_raw, 3)})
    raw64 = _row("raw ORT, one run per model per auction", "-", m_raw64, BATCH)
    py64 = _row("MLflow pyfunc predict per model (stacked)", "-", m_py64, BATCH)
    in64 = with_ratios(_row("in-process ONNX (stacked, one run per model)",
                            "MLflow pyfunc predict per model (stacked)", m_in64, BATCH), py64)
    in64.extra["ratio_p50_vs_raw"] = round(float(np.percentile(m_raw64.lat_ms, 50))
                                           / float(np.percentile(m_in64.lat_ms, 50)), 3)
    return [raw1, py1, in1], [raw64, py64, in64]


def _triton_rows(models: ModelSet, items: list[AuctionInputs], groups: list[list[AuctionInputs]],
                 raw1: Row, raw64: Row, folder: Path) -> list[Row]:
    import tritonclient.grpc as grpcclient

    from adplatform.ports import free_ports
    from serving.triton.client import TritonBackend
    from serving.triton.repository import write_repository
    from serving.triton.server import start_server

    repo = write_repository(models.files, models.versions, folder / "triton-repo",
                            max_batch_size=BATCH * K)
    http_port, grpc_port = free_ports(2)
    t0 = time.monotonic()
    proc = start_server(repo, http_port, grpc_port, log_path=folder / "triton.log")
    started = time.monotonic() - t0
    try:
        client = TritonBackend(proc.grpc_url, "grpc", timeout_s=5.0)
        n = len(items)
        before = _triton_count(proc)
        m1 = latencies(lambda i: client.score(items[i % n]), ITERATIONS["triton"])
        calls = ITERATIONS["triton"] + 100
        after = _triton_count(proc)
        round_trips = (after - before) / calls if before is not None and after is not None \
            else float("nan")

        def make() -> Callable[[int], object]:
            c = TritonBackend(proc.grpc_url, "grpc", timeout_s=5.0)
            return lambda i: c.score(items[i % n])

        per_s, errs = throughput(make, REMOTE_THREADS, THROUGHPUT_S)
        raw_grpc = grpcclient.InferenceServerClient(proc.grpc_url)
        stacks = [stacked(g) for g in groups]
        names = {"ctr": ("ctr_features", "pctr"), "fraud": ("fraud_features", "p_fraud"),
                 "shading": ("shading_features", "landscape")}

        def many(i: int) -> None:
            s = stacks[i % len(stacks)]
            for name, (inp, out) in names.items():
                t = grpcclient.InferInput(inp, list(s[name].shape), "FP32")
                t.set_data_from_numpy(s[name])
                raw_grpc.infer(name, [t], outputs=[grpcclient.InferRequestedOutput(out)],
                               client_timeout=10.0)

        m64 = latencies(many, BATCH_ITERATIONS["triton"], warmup=5)
        client.close()
        raw_grpc.close()
    finally:
        proc.stop()
    extra: dict[str, float | str] = {"round_trips_per_auction": round(round_trips, 3),
                                     "throughput_threads": REMOTE_THREADS,
                                     "server_start_s": round(started, 1)}
    r1 = with_ratios(_row("Triton gRPC (auction model)", raw1.target, m1, 1, per_s=per_s,
                          errors=errs, extra=extra), raw1)
    r64 = with_ratios(_row("Triton gRPC (per model, stacked)", raw64.target, m64, BATCH,
                           extra={"round_trips_per_call": 3}), raw64)
    return [r1, r64]


def _triton_count(proc: Any) -> int | None:
    """Requests the ``auction`` model has answered (None when statistics are unavailable)."""
    try:
        stats = proc.statistics("auction")
        return int(sum(int(s.get("inference_count", 0)) for s in stats.get("model_stats", [])))
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        log.warning("Triton statistics unavailable: %s", exc)
        return None


def _bento_rows(registry: Settings, items: list[AuctionInputs],
                groups: list[list[AuctionInputs]], raw1: Row, raw64: Row,
                folder: Path) -> list[Row]:
    import httpx
    import orjson

    from adplatform.ports import free_port
    from serving.bento import BentoBackend, start_bento
    from serving.bento.codec import encode_array
    from serving.errors import ServingError

    env = {"ADPLATFORM_HOME": str(registry.workspace.root),
           "BENTOML_HOME": str(folder / "bentoml")}
    t0 = time.monotonic()
    proc = start_bento(free_port(), env, log_dir=folder / "bento-logs")
    started = time.monotonic() - t0
    note = "shading rows = 1 (as the engine sends)"
    try:
        client = BentoBackend(proc.url, timeout_s=5.0)
        try:
            client.score(items[0])
        except ServingError as exc:
            if "shading has" not in str(exc):
                raise
            # serving/bento/models.py wants one shading row per candidate; the engine and
            # OnnxBackend send one per auction. Measure with K rows until that is aligned.
            items = [AuctionInputs(ctr=a.ctr, fraud=a.fraud,
                                   shading=np.repeat(a.shading, K, axis=0) if a.shading
                                   is not None else None) for a in items]
            groups = batches(items, BATCH)
            note = "shading rows = K: Bento's check rejects 1 row per auction"
        n = len(items)
        m1 = latencies(lambda i: client.score(items[i % n]), ITERATIONS["bento"])

        def make() -> Callable[[int], object]:
            c = BentoBackend(proc.url, timeout_s=5.0)
            return lambda i: c.score(items[i % n])

        per_s, errs = throughput(make, REMOTE_THREADS, THROUGHPUT_S)

        def wire(a: AuctionInputs) -> dict[str, Any]:
            out = {"ctr": encode_array(a.ctr)}
            if a.fraud is not None:
                out["fraud"] = encode_array(a.fraud)
            if a.shading is not None:
                out["shading"] = encode_array(a.shading)
            return out

        bodies = [orjson.dumps({"auctions": [wire(a) for a in g]}) for g in groups[:32]]
        http = httpx.Client(timeout=10.0, trust_env=False,
                            headers={"content-type": "application/json"})

        def many(i: int) -> None:
            r = http.post(f"{proc.url}/score_auctions", content=bodies[i % len(bodies)])
            if r.status_code != 200:
                raise ServingError(f"/score_auctions answered {r.status_code}")

        m64 = latencies(many, BATCH_ITERATIONS["bento"], warmup=5)
        http.close()
        client.close()
    finally:
        proc.stop()
    extra: dict[str, float | str] = {"round_trips_per_auction": 1, "note": note,
                                     "throughput_threads": REMOTE_THREADS,
                                     "server_start_s": round(started, 1)}
    r1 = with_ratios(_row("BentoML HTTP (/score_auction)", raw1.target, m1, 1, per_s=per_s,
                          errors=errs, extra=extra), raw1)
    r64 = with_ratios(_row("BentoML HTTP (/score_auctions, 64)", raw64.target, m64, BATCH,
                           extra={"round_trips_per_call": 1, "note": note}), raw64)
    return [r1, r64]


def run(world: Settings, *, remote: bool = True, seed: int = 99) -> list[Row]:
    """The serving suite on ``world`` (a trained workspace): rows for every target."""
    folder = world.workspace.root / "bench" / "serving"
    folder.mkdir(parents=True, exist_ok=True)
    models = model_set(world, folder)
    registry = serving_registry(world, models)
    items = auctions(DISTINCT, seed)
    groups = batches(items, BATCH)
    one, many = _local_rows(models, registry, items, groups)
    rows = [*one, *many]
    if remote:
        rows += _triton_rows(models, items, groups, one[0], many[0], folder)
        rows += _bento_rows(registry, items, groups, one[0], many[0], folder)
    for r in rows:
        r.extra["models"] = models.describe()
    return rows


__all__ = ["BATCH", "K", "ModelSet", "auctions", "latencies", "model_set", "run",
           "serving_registry", "standin_fraud", "standin_shading", "throughput"]

"""``make bench``: every suite prints a table and writes JSON under $ADPLATFORM_HOME/bench.

Each figure is paired with a baseline measured in the same run on the same machine.
The suites run on a dedicated, trained bench world (``$ADPLATFORM_HOME/bench-world``),
built once and reused. While they measure, a CPU latency request keeps idle CPUs from
halting (:mod:`bench.cpu_idle`; ``--no-cpu-qos`` measures with the machine's own idle
policy); each JSON file records the idle policy and whether the request was held.
"""

from __future__ import annotations

import argparse
import logging

from rich.console import Console

from adplatform.config import Settings, get_settings
from bench import cpu_idle
from bench.cpu_idle import CpuLatencyRequest
from bench.harness import Row, print_table, write_json

SUITES = ("features", "http", "serving", "decision")


def bench_world(settings: Settings, console: Console) -> Settings:
    """A trained workspace for benchmarks, built once: simulate, materialize, then
    ``train all --size small`` without the real-data section, so that the decision
    service screens with the fraud model, scores with the CTR model and prices with the
    shading model, as in production. A world built before it trained all three models
    is trained again: the models it lacked become ``@champion``; the ones it had keep
    their champion and get a ``@challenger``."""
    world = Settings(**{**settings.model_dump(), "home": settings.workspace.root / "bench-world"})
    ws = world.workspace.ensure()
    if not (ws.mlflow_db.exists() and (ws.world / "campaigns.json").exists()):
        from features.ops import materialize
        from simulator import simulate

        with console.status("building the bench world (simulate, features)"):
            simulate(days=5, seed=settings.seed, workspace=ws)
            materialize(world)
    missing = _untrained(world)
    if missing:
        from training.pipeline import train_all

        with console.status(f"training the bench world's models ({', '.join(missing)} "
                            "missing): train all --size small --no-real"):
            train_all(world, "small", real=False)
    return world


def _untrained(world: Settings) -> list[str]:
    """The models with no ``@champion`` in the world's registry."""
    from mlops.errors import ModelNotFound
    from mlops.registry import resolve

    missing = []
    for name in ("fraud", "ctr", "shading"):
        try:
            resolve(world, name)
        except ModelNotFound:
            missing.append(name)
    return missing


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("suites", nargs="*", default=list(SUITES), choices=SUITES)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load level")
    parser.add_argument("--rates", type=float, nargs="+", default=[250.0, 500.0, 1000.0])
    cpu_idle.add_argument(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    console = Console(width=170)
    settings = get_settings()
    world = (bench_world(settings, console) if {"http", "serving", "decision"} & set(args.suites)
             else settings)
    out = settings.workspace.root / "bench"
    for suite in args.suites:
        with cpu_idle.measuring(args.cpu_qos) as qos:
            rows = _run_suite(suite, settings, world, args, qos)
            machine = cpu_idle.machine_record(qos)
        print_table(console, rows, f"bench: {suite}")
        console.print(f"wrote {write_json(rows, out, suite, machine)}")


def _run_suite(suite: str, settings: Settings, world: Settings, args: argparse.Namespace,
               qos: CpuLatencyRequest) -> list[Row]:
    if suite == "http":
        from bench import http

        return http.run(world, rates=args.rates, duration_s=args.duration, seed=99)
    if suite == "decision":
        from bench import decision

        return decision.run(settings, world, qos=qos)
    if suite == "serving":
        from bench import serving

        return serving.run(world)
    from bench import features

    return features.run(settings)


if __name__ == "__main__":
    main()

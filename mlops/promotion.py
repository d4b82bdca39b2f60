"""Champion/challenger promotion behind gates, and rollback.

:func:`promote` compares a candidate version (default: ``models:/NAME@challenger``) with
the current ``@champion`` on the same held-out data and moves ``champion`` only when
every gate passes. The gates of a model are registered by name in :data:`GATES`
(:func:`register_gates`); ``ctr`` has them (:mod:`mlops.promotion_ctr`):

- **quality**: AUC not worse than the champion's minus ``auc_tolerance``, logloss not
  worse than the champion's plus ``logloss_tolerance`` (absolute), on the held-out set
  rebuilt the way training builds it;
- **calibration**: observed / expected clicks within ``[calibration_low, calibration_high]``;
- **parity**: the registered ONNX loads, keeps the champion's input/output contract
  (names, dtypes, feature count), gives finite outputs in [0, 1] on held-out and
  stressed rows (NaNs, unseen categories), the served session (graph optimisations,
  one thread) matches a reference session, and the native-vs-ONNX parity recorded at
  training meets the export contract;
- **latency**: p99 of single-auction scoring (K candidates, one intra-op thread, as the
  in-process backend serves) below ``latency_budget_ms``, measured on this machine.

Every gate's result goes on the candidate version as tags (``gate.quality=pass``,
``gate.quality.reason``, ``gate.quality.auc``, ...) together with ``promotion.status``,
and into a JSON + markdown report under ``<workspace>/reports/promotion/``. A refused
candidate keeps its aliases (``challenger``). A promoted one becomes ``champion``; the
old champion gets the ``previous_champion`` alias (and the candidate a
``promotion.previous_champion`` tag, so rollbacks can walk back several steps), and
``challenger`` is removed when it pointed at the candidate.

:func:`rollback` moves ``champion`` back to ``previous_champion``. Serving processes
follow the alias (:mod:`serving.watcher`). Gates for fraud and shading: write a class
with :meth:`ModelGates.evaluate` and ``register_gates("fraud", FraudGates)``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from adplatform.config import Settings
from mlops.errors import MLOpsError
from mlops.promotion_registry import PREVIOUS_CHAMPION, alias_version, fetch_version, set_tags
from mlops.registry import CHALLENGER, CHAMPION, ResolvedModel, configure

if TYPE_CHECKING:
    from rich.table import Table

log = logging.getLogger(__name__)

Status = Literal["promoted", "refused", "unchanged"]


class PromotionError(MLOpsError):
    """A promotion or rollback that cannot run (no candidate, no gates, nothing to restore)."""


@dataclass(frozen=True)
class PromotionConfig:
    """Gate thresholds. Tolerances are absolute; the latency budget is per auction."""

    auc_tolerance: float = 0.005
    logloss_tolerance: float = 0.001
    min_auc: float = 0.5                  # with no champion, the candidate must beat chance
    calibration_low: float = 0.9
    calibration_high: float = 1.1
    latency_budget_ms: float = 1.0        # p99, single auction, K candidates, one thread
    latency_candidates: int = 20
    latency_iterations: int = 2000
    parity_rows: int = 5000
    seed: int = 7

    def __post_init__(self) -> None:
        if not 0 < self.calibration_low <= 1 <= self.calibration_high:
            raise ValueError(f"calibration bounds must bracket 1, got [{self.calibration_low}, "
                             f"{self.calibration_high}]")
        if self.latency_budget_ms <= 0 or self.latency_candidates < 1 \
                or self.latency_iterations < 100:
            raise ValueError("latency_budget_ms > 0, latency_candidates >= 1 and "
                             "latency_iterations >= 100 are required")
        if self.auc_tolerance < 0 or self.logloss_tolerance < 0 or self.parity_rows < 1:
            raise ValueError("tolerances must be >= 0 and parity_rows >= 1")


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class GateReport:
    """What a model's gates found: results, notes (not failures), the data they used."""

    gates: list[GateResult]
    notes: list[str] = field(default_factory=list)
    data: dict[str, str] = field(default_factory=dict)


class ModelGates(Protocol):
    """The promotion gates of one model (the extension point, keyed by model name)."""

    def evaluate(self, settings: Settings, candidate: ResolvedModel,
                 champion: ResolvedModel | None, config: PromotionConfig) -> GateReport: ...


GateFactory = Callable[[], ModelGates]


def _ctr_gates() -> ModelGates:
    from mlops.promotion_ctr import CtrGates

    return CtrGates()


GATES: dict[str, GateFactory] = {"ctr": _ctr_gates}


def register_gates(model: str, factory: GateFactory) -> None:
    """Give ``model`` promotion gates (e.g. ``register_gates("fraud", FraudGates)``)."""
    GATES[model] = factory


@dataclass
class PromotionResult:
    model: str
    candidate: str
    champion_before: str | None
    status: Status
    gates: list[GateResult]
    notes: list[str] = field(default_factory=list)
    data: dict[str, str] = field(default_factory=dict)
    report_json: Path | None = None
    report_md: Path | None = None

    @property
    def promoted(self) -> bool:
        return self.status == "promoted"

    @property
    def reasons(self) -> list[str]:
        """Why it was refused: the failed gates' reasons."""
        return [f"{g.name}: {g.reason}" for g in self.gates if not g.passed]


@dataclass(frozen=True)
class RollbackResult:
    model: str
    from_version: str
    to_version: str
    previous_champion: str | None       # what a further rollback would restore
    report_json: Path


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _fmt(v: float) -> str:
    return f"{v:.6g}" if math.isfinite(v) else str(v)


def gate_tags(gates: list[GateResult]) -> dict[str, str]:
    """The MLflow tags of gate results: ``gate.<name>``, ``.reason``, ``.<metric>``."""
    tags: dict[str, str] = {}
    for g in gates:
        tags[f"gate.{g.name}"] = "pass" if g.passed else "fail"
        tags[f"gate.{g.name}.reason"] = g.reason
        for key, value in g.metrics.items():
            tags[f"gate.{g.name}.{key}"] = _fmt(value)
    return tags


def report_dir(settings: Settings) -> Path:
    return settings.workspace.reports / "promotion"


def _markdown(r: PromotionResult, when: str) -> str:
    lines = [f"# Promotion of `{r.model}` version {r.candidate}: {r.status.upper()}", "",
             f"- time: {when}",
             f"- compared with champion: {r.champion_before or 'none (first champion)'}"]
    lines += [f"- {k}: {v}" for k, v in r.data.items()]
    lines += ["", "| gate | result | reason | metrics |", "|---|---|---|---|"]
    for g in r.gates:
        metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in g.metrics.items())
        reason = g.reason.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {g.name} | {'pass' if g.passed else '**fail**'} | {reason} | {metrics} |")
    if r.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in r.notes]
    return "\n".join(lines) + "\n"


def write_report(settings: Settings, result: PromotionResult) -> PromotionResult:
    """Write ``<model>-v<version>-<time>.json`` and ``.md``; returns ``result`` with paths."""
    folder = report_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    when = _now()
    stem = f"{result.model}-v{result.candidate}-{time.strftime('%Y%m%dT%H%M%S')}"
    result.report_json, result.report_md = folder / f"{stem}.json", folder / f"{stem}.md"
    doc = {"model": result.model, "candidate": result.candidate,
           "champion_before": result.champion_before, "status": result.status, "time": when,
           "data": result.data, "notes": result.notes,
           "gates": [asdict(g) for g in result.gates]}
    result.report_json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    result.report_md.write_text(_markdown(result, when))
    return result


def promote(settings: Settings, model: str, version: str | None = None, *,
            config: PromotionConfig | None = None, gates: ModelGates | None = None
            ) -> PromotionResult:
    """Gate ``version`` (default ``@challenger``) against ``@champion``; promote if all pass.

    ``gates`` overrides the registered gates of ``model`` (tests pass one with a
    prepared held-out set). Returns status ``promoted``, ``refused`` (with reasons) or
    ``unchanged`` (the candidate is the champion already). Raises
    :class:`PromotionError` when there is no candidate or no gates for ``model``.
    """
    config = config or PromotionConfig()
    client = configure(settings)
    if gates is None:
        factory = GATES.get(model)
        if factory is None:
            raise PromotionError(f"no promotion gates for model {model!r} (gates exist for "
                                 f"{sorted(GATES)}); add them with register_gates()")
        gates = factory()
    candidate_version = str(version) if version is not None else \
        alias_version(client, model, CHALLENGER)
    if candidate_version is None:
        raise PromotionError(f"models:/{model}@{CHALLENGER} is unset; give a version")
    champion_version = alias_version(client, model, CHAMPION)
    if champion_version == candidate_version:
        log.info("%s version %s is champion already", model, candidate_version)
        return PromotionResult(model=model, candidate=candidate_version,
                               champion_before=champion_version, status="unchanged", gates=[])
    candidate = fetch_version(settings, model, candidate_version)
    champion = fetch_version(settings, model, champion_version) if champion_version else None
    found = gates.evaluate(settings, candidate, champion, config)
    passed = bool(found.gates) and all(g.passed for g in found.gates)
    result = write_report(settings, PromotionResult(
        model=model, candidate=candidate_version, champion_before=champion_version,
        status="promoted" if passed else "refused", gates=found.gates, notes=found.notes,
        data=found.data))
    tags = {**gate_tags(found.gates), "promotion.status": result.status,
            "promotion.compared_with": champion_version or "none",
            "promotion.time": _now(), "promotion.report": str(result.report_md)}
    if passed and champion_version:
        tags["promotion.previous_champion"] = champion_version
    set_tags(client, model, candidate_version, tags)
    if not passed:
        log.warning("%s version %s refused: %s", model, candidate_version,
                    "; ".join(result.reasons))
        return result
    if champion_version:
        client.set_registered_model_alias(model, PREVIOUS_CHAMPION, champion_version)
        set_tags(client, model, champion_version, {"promotion.replaced_by": candidate_version})
    client.set_registered_model_alias(model, CHAMPION, candidate_version)
    if alias_version(client, model, CHALLENGER) == candidate_version:
        client.delete_registered_model_alias(model, CHALLENGER)
    log.info("%s version %s is champion (was %s)", model, candidate_version, champion_version)
    return result


def rollback(settings: Settings, model: str) -> RollbackResult:
    """Move ``champion`` back to ``previous_champion``.

    ``previous_champion`` then points at the version that one replaced (its
    ``promotion.previous_champion`` tag), or is removed. Raises :class:`PromotionError`
    when there is nothing to roll back to.
    """
    client = configure(settings)
    current = alias_version(client, model, CHAMPION)
    previous = alias_version(client, model, PREVIOUS_CHAMPION)
    if current is None or previous is None:
        raise PromotionError(f"models:/{model}@{CHAMPION} is {current}, @{PREVIOUS_CHAMPION} "
                             f"is {previous}: nothing to roll back to")
    if previous == current:
        raise PromotionError(f"models:/{model}@{PREVIOUS_CHAMPION} is the champion already "
                             f"(version {current})")
    client.set_registered_model_alias(model, CHAMPION, previous)
    when = _now()
    set_tags(client, model, current, {"promotion.status": "rolled_back",
                                      "rollback.time": when, "rollback.to": previous})
    older = client.get_model_version(model, previous).tags.get("promotion.previous_champion")
    if older and older not in (previous, current):
        client.set_registered_model_alias(model, PREVIOUS_CHAMPION, older)
    else:
        client.delete_registered_model_alias(model, PREVIOUS_CHAMPION)
        older = None
    folder = report_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{model}-rollback-v{current}-to-v{previous}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps({"model": model, "from": current, "to": previous, "time": when,
                                "previous_champion": older}, indent=2) + "\n")
    log.warning("%s rolled back: champion %s -> %s", model, current, previous)
    return RollbackResult(model=model, from_version=current, to_version=previous,
                          previous_champion=older, report_json=path)


def gates_table(result: PromotionResult) -> Table:
    """A rich table of the gates (for the CLI)."""
    from rich.table import Table

    title = (f"{result.model} version {result.candidate} vs champion "
             f"{result.champion_before or '-'}: {result.status}")
    table = Table("gate", "result", "reason", title=title)
    for g in result.gates:
        table.add_row(g.name, "[green]pass" if g.passed else "[red]FAIL", g.reason)
    return table


__all__ = ["GATES", "GateReport", "GateResult", "ModelGates", "PromotionConfig",
           "PromotionError", "PromotionResult", "RollbackResult", "gate_tags", "gates_table",
           "promote", "register_gates", "report_dir", "rollback", "write_report"]

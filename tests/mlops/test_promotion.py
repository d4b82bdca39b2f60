"""Promotion gates, tags, reports and rollback on a copy of the trained workspace's registry.

The session's ``trained_workspace`` keeps its registry untouched: each module works on a
sandbox that shares its event log, world and feature store (read-only, symlinked) and
copies its MLflow store. Second versions are not retrained: an "equal" candidate is the
champion's ONNX registered again, a bad one an ONNX graph answering a constant.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from rich.console import Console

from adplatform.config import Settings
from mlops.promotion import (
    GATES,
    PromotionConfig,
    PromotionError,
    gate_tags,
    gates_table,
    promote,
    rollback,
)
from mlops.promotion_ctr import CtrGates, CtrHeldOut, calibration_gate, ctr_heldout, quality_gate
from mlops.promotion_registry import PREVIOUS_CHAMPION, alias_version, fetch_version
from mlops.registry import CHALLENGER, CHAMPION, configure, resolve
from tests.conftest import make_settings

# The latency gate is a gate, not a test assertion: a generous budget keeps a loaded CI
# machine from refusing the good model; test_latency_gate_refuses_over_budget uses a tiny one.
LENIENT = PromotionConfig(latency_budget_ms=1000.0, latency_iterations=300)


def sandbox(src: Settings, dst: Path) -> Settings:
    """A workspace reading ``src``'s data (symlinks) with its own copy of the registry."""
    dst.mkdir(parents=True)
    root = src.workspace.root
    for part in ("events", "truth", "world", "feast"):
        (dst / part).symlink_to(root / part, target_is_directory=True)
    shutil.copytree(src.workspace.mlflow_db.parent, dst / "mlflow")
    settings = make_settings(dst)
    settings.workspace.ensure()
    return settings


def register_onnx(settings: Settings, model: onnx.ModelProto, *, tags: dict[str, str],
                  metrics: dict[str, float] | None = None, name: str = "ctr") -> str:
    """Log an ONNX model in a run (with metrics) and register it; returns the version."""
    import mlflow

    from mlops.registry import ensure_experiment, register

    ensure_experiment(settings, name)
    with mlflow.start_run(run_name=f"{name}-promotion-test"):
        info = mlflow.onnx.log_model(model, name="model", save_as_external_data=False,
                                     pip_requirements=["onnxruntime"])
        if metrics:
            mlflow.log_metrics(metrics)
        version, _ = register(settings, info.model_uri, name, tags)
    return version


def register_champion_copy(settings: Settings) -> str:
    """The champion's ONNX, tags and metrics as a new version (an "equal" challenger)."""
    client = configure(settings)
    champion = resolve(settings, "ctr", CHAMPION)
    run_id = client.get_model_version("ctr", champion.version).run_id
    assert run_id is not None
    metrics = dict(client.get_run(run_id).data.metrics)
    return register_onnx(settings, onnx.load(str(champion.onnx_path)), tags=champion.tags,
                         metrics=metrics)


def constant_ctr_onnx(value: float = 0.5, *, input_name: str = "ctr_features",
                      n_features: int = 32) -> onnx.ModelProto:
    """(N, F) -> (N,) filled with ``value``: keeps the contract, predicts nothing."""
    nodes = [helper.make_node("Shape", [input_name], ["shape"]),
             helper.make_node("Slice", ["shape", "zero", "one"], ["rows"]),
             helper.make_node("ConstantOfShape", ["rows"], ["pctr"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [value]))]
    graph = helper.make_graph(
        nodes, "constant_ctr",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("pctr", TensorProto.FLOAT, [None])],
        initializer=[helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
                     helper.make_tensor("one", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def promo(trained_workspace: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return sandbox(trained_workspace, tmp_path_factory.mktemp("promotion") / "ws")


@pytest.fixture(scope="module")
def heldout(promo: Settings) -> CtrHeldOut:
    return ctr_heldout(promo)


def _aliases(settings: Settings) -> dict[str, str | None]:
    client = configure(settings)
    return {a: alias_version(client, "ctr", a) for a in (CHAMPION, CHALLENGER, PREVIOUS_CHAMPION)}


def test_equal_model_is_promoted_and_rollback_restores(promo: Settings,
                                                       heldout: CtrHeldOut) -> None:
    before = _aliases(promo)[CHAMPION]
    assert before is not None
    candidate = register_champion_copy(promo)
    assert _aliases(promo)[CHALLENGER] == candidate

    result = promote(promo, "ctr", config=LENIENT, gates=CtrGates(heldout))

    assert result.status == "promoted", result.reasons
    assert [g.name for g in result.gates] == ["parity", "quality", "calibration", "latency"]
    assert _aliases(promo) == {CHAMPION: candidate, CHALLENGER: None, PREVIOUS_CHAMPION: before}
    tags = fetch_version(promo, "ctr", candidate).tags
    for gate in ("parity", "quality", "calibration", "latency"):
        assert tags[f"gate.{gate}"] == "pass"
    assert float(tags["gate.quality.delta_auc"]) == pytest.approx(0.0, abs=1e-9)
    assert float(tags["gate.latency.p99_ms"]) > 0
    assert tags["promotion.status"] == "promoted"
    assert tags["promotion.previous_champion"] == before
    assert result.report_json is not None and result.report_json.is_file()
    assert result.report_md is not None and "PROMOTED" in result.report_md.read_text()
    assert resolve(promo, "ctr", CHAMPION).version == candidate

    # promoting the champion again changes nothing
    assert promote(promo, "ctr", candidate, gates=CtrGates(heldout)).status == "unchanged"

    back = rollback(promo, "ctr")
    assert (back.from_version, back.to_version) == (candidate, before)
    assert _aliases(promo)[CHAMPION] == before
    assert _aliases(promo)[PREVIOUS_CHAMPION] is None      # the first champion has no predecessor
    assert fetch_version(promo, "ctr", candidate).tags["promotion.status"] == "rolled_back"
    with pytest.raises(PromotionError, match="nothing to roll back"):
        rollback(promo, "ctr")


def test_constant_model_is_refused_and_stays_challenger(promo: Settings,
                                                        heldout: CtrHeldOut) -> None:
    champion = _aliases(promo)[CHAMPION]
    bad = register_onnx(promo, constant_ctr_onnx(0.5), tags={"feature_service": "ctr_v1"})

    result = promote(promo, "ctr", config=LENIENT, gates=CtrGates(heldout))

    assert result.status == "refused"
    failed = {g.name for g in result.gates if not g.passed}
    assert failed == {"quality", "calibration"}, result.reasons
    assert any("WORSE" in r for r in result.reasons)
    assert _aliases(promo)[CHAMPION] == champion
    assert _aliases(promo)[CHALLENGER] == bad
    tags = fetch_version(promo, "ctr", bad).tags
    assert tags["gate.quality"] == "fail" and tags["gate.calibration"] == "fail"
    assert tags["gate.parity"] == "pass"                    # the contract itself is kept
    assert tags["promotion.status"] == "refused"
    assert result.report_md is not None and "REFUSED" in result.report_md.read_text()
    console = Console(record=True, width=200)
    console.print(gates_table(result))
    assert "FAIL" in console.export_text()


def test_broken_contract_is_refused_by_the_parity_gate(promo: Settings,
                                                      heldout: CtrHeldOut) -> None:
    wrong = register_onnx(promo, constant_ctr_onnx(0.02, input_name="features"), tags={})
    result = promote(promo, "ctr", wrong, config=LENIENT, gates=CtrGates(heldout))
    assert result.status == "refused"
    parity = next(g for g in result.gates if g.name == "parity")
    assert not parity.passed and "contract" in parity.reason
    assert fetch_version(promo, "ctr", wrong).tags["gate.parity"] == "fail"


def test_latency_gate_refuses_over_budget(promo: Settings, heldout: CtrHeldOut) -> None:
    champion = _aliases(promo)[CHAMPION]
    candidate = register_champion_copy(promo)
    tight = PromotionConfig(latency_budget_ms=1e-6, latency_iterations=200)
    result = promote(promo, "ctr", candidate, config=tight, gates=CtrGates(heldout))
    assert result.status == "refused"
    assert {g.name for g in result.gates if not g.passed} == {"latency"}
    assert _aliases(promo)[CHAMPION] == champion


def test_unknown_model_and_missing_candidate_are_errors(promo: Settings) -> None:
    with pytest.raises(PromotionError, match="no promotion gates"):
        promote(promo, "shading")
    client = configure(promo)
    challenger = alias_version(client, "ctr", CHALLENGER)
    if challenger is not None:
        client.delete_registered_model_alias("ctr", CHALLENGER)
    with pytest.raises(PromotionError, match="challenger is unset"):
        promote(promo, "ctr")
    assert "ctr" in GATES


def test_gate_functions_on_synthetic_scores() -> None:
    rng = np.random.default_rng(0)
    p_true = rng.uniform(0.01, 0.2, 20_000)
    y = (rng.random(p_true.size) < p_true).astype(np.float64)
    cfg = PromotionConfig()
    good = quality_gate(y, p_true, p_true, cfg)
    assert good.passed and good.metrics["delta_auc"] == 0.0
    noisy = np.clip(p_true + rng.normal(0, 0.1, p_true.size), 1e-4, 0.999)
    assert not quality_gate(y, noisy, p_true, cfg).passed
    assert calibration_gate(y, p_true, None, cfg).passed
    over = calibration_gate(y, p_true * 1.5, None, cfg)
    assert not over.passed and over.metrics["observed_expected"] < 0.9
    assert gate_tags([over])["gate.calibration"] == "fail"
    with pytest.raises(ValueError):
        PromotionConfig(calibration_low=1.2)

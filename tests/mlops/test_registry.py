"""After training, the registry holds `ctr@champion` with its ONNX file, metrics and lineage."""

from __future__ import annotations

import onnx
import pytest

from adplatform.config import Settings
from mlops.errors import ModelNotFound
from mlops.registry import configure, resolve


def test_ctr_champion_has_onnx_metrics_and_lineage(trained_workspace: Settings) -> None:
    import mlflow

    client = configure(trained_workspace)
    mv = client.get_model_version_by_alias("ctr", "champion")
    assert mv.tags["feature_service"] == "ctr_v1"
    assert mv.tags["training_window"] and mv.tags["code_version"]
    model = resolve(trained_workspace, "ctr", "champion")
    graph = onnx.load(model.onnx_path).graph
    assert [i.name for i in graph.input] == ["ctr_features"]
    assert [o.name for o in graph.output] == ["pctr"]
    metrics = client.get_run(mv.run_id).data.metrics
    assert {"auc", "logloss"} <= set(metrics)
    logged = mlflow.search_logged_models(experiment_ids=[client.get_run(mv.run_id).info.experiment_id],
                                         output_format="list")
    assert any({m.key for m in lm.metrics} >= {"auc", "logloss"} for lm in logged)


def test_unknown_alias_is_a_typed_error(trained_workspace: Settings) -> None:
    with pytest.raises(ModelNotFound):
        resolve(trained_workspace, "ctr", "no-such-alias")

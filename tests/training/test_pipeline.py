"""``adplatform train all --size small --report``: fraud, CTR (fraud-filtered), shading.

Runs the CLI on a private copy of the small simulated world (offline features only), so
the versions it registers do not change the registry the rest of the suite shares.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adplatform.config import Settings, get_settings
from tests.conftest import make_settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline_world(simulated_workspace: Settings, tmp_path_factory: pytest.TempPathFactory
                   ) -> Settings:
    from features.ops import build_offline

    settings = make_settings(tmp_path_factory.mktemp("train-all") / "ws")
    ws = settings.workspace.ensure()
    src = simulated_workspace.workspace
    for name in ("events", "truth", "world"):
        shutil.rmtree(ws.root / name, ignore_errors=True)
        shutil.copytree(src.root / name, ws.root / name)
    build_offline(settings)
    return settings


@pytest.fixture(scope="module")
def cli_run(pipeline_world: Settings) -> Iterator[tuple[int, str, dict[str, Any]]]:
    from typer.testing import CliRunner

    from mlops.cli import app

    report = pipeline_world.home / "report.json"
    mp = pytest.MonkeyPatch()
    mp.setenv("ADPLATFORM_HOME", str(pipeline_world.home))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["train", "all", "--size", "small", "--report",
                                          str(report)])
        doc = json.loads(report.read_text()) if report.exists() else {}
        yield result.exit_code, result.output, doc
    finally:
        mp.undo()
        get_settings.cache_clear()


NUMBERS = {
    "ctr": ("auc", "oracle_auc", "logloss", "oracle_logloss", "base_logloss",
            "calibration_ratio", "ece"),
    "shading": ("surplus", "oracle_surplus", "best_constant_surplus", "km_surplus",
                "truthful_surplus", "win_rate"),
    "fraud": ("pr_auc", "recall_at_1pct_fpr", "rules_only_recall"),
}


def test_cli_writes_the_report(cli_run: tuple[int, str, dict[str, Any]]) -> None:
    code, output, report = cli_run
    assert code == 0, output
    assert report["size"] == "small"
    for section, keys in NUMBERS.items():
        for key in keys:
            assert isinstance(report[section][key], float), (section, key)
    kinds = report["fraud"]["per_kind"]
    assert set(kinds) >= {"crawler", "datacenter", "residential"}
    assert all(v is None or 0.0 <= v <= 1.0 for v in kinds.values())
    # Held-out figures that must make sense even on the small world.
    assert 0.5 < report["ctr"]["oracle_auc"] <= 1.0
    assert report["ctr"]["base_logloss"] > report["ctr"]["oracle_logloss"]
    assert report["shading"]["oracle_surplus"] >= report["shading"]["surplus"] > 0
    assert report["shading"]["truthful_surplus"] == 0.0
    assert report["ctr"]["fraud_model_flagged"] > 0     # CTR trained on fraud-filtered data


def test_real_data_section(cli_run: tuple[int, str, dict[str, Any]], shared_data: Path) -> None:
    _, _, report = cli_run
    real = report["real"]
    for name, keys in (("criteo", ("auc_lgbm", "auc_deep", "auc_lr")),
                       ("ipinyou_2259", ("loglik_model", "loglik_km")),
                       ("talkingdata", ("auc",))):
        if name in real.get("skipped", {}):
            continue
        for key in keys:
            assert isinstance(real[name][key], float), (name, key)


def test_registry_holds_the_three_models(cli_run: tuple[int, str, dict[str, Any]],
                                         pipeline_world: Settings) -> None:
    from mlflow import MlflowClient

    from mlops.registry import configure

    configure(pipeline_world)
    client = MlflowClient(tracking_uri=pipeline_world.tracking_uri)
    for name in ("fraud", "ctr", "shading"):
        mv = client.get_model_version_by_alias(name, "champion")
        assert str(mv.version) == "1"
        assert mv.tags["feature_service"] and mv.tags["training_window"]
        assert cli_run[2][name]["alias"] == "champion"
    assert client.get_model_version_by_alias("ctr", "champion").tags["fraud_alias"] == "champion"


def test_full_size_refuses_a_small_world(pipeline_world: Settings) -> None:
    from adplatform.errors import ConfigError
    from training.pipeline import check_scale, plan, workspace_scale

    p = plan("full", real=False)
    scale = workspace_scale(pipeline_world, p.ctr.holdout_days)
    with pytest.raises(ConfigError, match="days"):
        check_scale(scale, p, force=False)
    assert len(check_scale(scale, p, force=True)) == 2

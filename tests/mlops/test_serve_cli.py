"""``adplatform serve --experiment``: the A/B service the demo runs, from the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner


def test_serve_experiment_writes_the_spec_and_serves_both_arms(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlops.demo_ab
    from mlops.cli import app

    served: list[dict[str, Any]] = []
    monkeypatch.setattr(mlops.demo_ab, "serve_experiment",
                        lambda settings, **kw: served.append(kw))
    result = CliRunner().invoke(app, ["serve", "--port", "8123", "--experiment", "ctr_v2_test",
                                      "--share", "0.2"])
    assert result.exit_code == 0, result.output
    assert served == [{"host": "127.0.0.1", "port": 8123, "name": "ctr_v2_test",
                       "share": 0.2}]
    spec = json.loads((home / "experiments" / "ctr_v2_test.json").read_text())
    assert spec["name"] == "ctr_v2_test" and spec["control"] == "champion"
    assert spec["split"] == {"champion": pytest.approx(0.8), "challenger": 0.2}


def test_serve_experiment_refuses_a_share_outside_0_1(home: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import mlops.demo_ab
    from mlops.cli import app

    monkeypatch.setattr(mlops.demo_ab, "serve_experiment", lambda *a, **kw: None)
    result = CliRunner().invoke(app, ["serve", "--experiment", "x", "--share", "1.0"])
    assert result.exit_code == 2 and "share must be in (0, 1)" in result.output
    assert not (home / "experiments" / "x.json").exists()

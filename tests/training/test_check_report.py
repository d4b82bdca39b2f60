"""``python -m training.check_report``: the quality thresholds of a ``train all`` report."""

from __future__ import annotations

import json
from pathlib import Path


def test_check_report_flags_misses(tmp_path: Path) -> None:
    from training.check_report import checks, main

    report = {"size": "full", "workspace": {"days": 14.0},
              "ctr": {"test_clicks": 6000.0, "captured_gain": 0.85, "auc": 0.80,
                      "oracle_auc": 0.81, "calibration_ratio": 1.0,
                      "campaign_ratio_min": 0.97, "campaign_ratio_max": 1.03},
              "shading": {"surplus": 95.0, "oracle_surplus": 100.0,
                          "best_constant_surplus": 85.0, "km_surplus": 90.0},
              "fraud": {"pr_auc": 0.95, "recall_at_1pct_fpr": 0.9, "rules_only_recall": 0.5},
              "real": {"criteo": {"auc_lgbm": 0.75, "auc_deep": 0.74, "auc_lr": 0.73},
                       "ipinyou_2259": {"loglik_model": -1.2, "loglik_km": -1.3},
                       "talkingdata": {"auc": 0.97}}}
    assert all(c.ok for c in checks(report))
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    assert main([str(path)]) == 0
    report["fraud"]["pr_auc"] = 0.89
    del report["real"]["talkingdata"]
    path.write_text(json.dumps(report))
    assert main([str(path)]) == 1
    missed = {c.name for c in checks(report) if not c.ok}
    assert missed == {"PR-AUC", "TalkingData AUC"}


def test_kaplan_meier_needs_the_same_five_percent_margin() -> None:
    from training.check_report import checks

    report = {"shading": {"surplus": 104.0, "oracle_surplus": 110.0,
                          "best_constant_surplus": 90.0, "km_surplus": 100.0}}
    km = {c.name: c for c in checks(report)}["surplus vs Kaplan-Meier"]
    assert km.ok is False and km.value.startswith("+4.00%")
    report["shading"]["km_surplus"] = 99.0
    assert {c.name: c for c in checks(report)}["surplus vs Kaplan-Meier"].ok


def test_context_lines_state_the_ceiling_and_the_noise_floor() -> None:
    from training.check_report import context

    assert context({"ctr": {"auc": 0.7}}) == []
    lines = context({"ctr": {"ceiling_history_captured_gain": 0.54, "ceiling_history_auc": 0.72,
                             "ceiling_oracle_auc": 0.80, "ceiling_no_user_captured_gain": 0.17,
                             "oracle_campaign_ratio_min": 0.93,
                             "oracle_campaign_ratio_max": 1.12}})
    assert "captured gain 0.540" in lines[0] and "vs oracle 0.8000" in lines[0]
    assert lines[1].endswith("no_user 0.170")
    assert "0.930 .. 1.120" in lines[2]

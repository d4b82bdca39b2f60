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

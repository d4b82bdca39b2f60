"""Analytics reports: A/B experiments, delivery and pacing, drift and model health.

Each report is a function returning a dataclass with ``to_dict()`` (the JSON twin) and
``write(out_dir)`` (a self-contained HTML page with embedded PNG plots, plus the JSON)::

    from mlops.reports import Outcomes, ab_report, load_campaigns, load_decisions

    decisions = load_decisions(workspace)                 # event log + live decision log
    outcomes = Outcomes.from_events(workspace.events)
    spec = ExperimentSpec("shading", {"control": 0.5, "treatment": 0.5}, "control")
    report = ab_report(decisions, outcomes, spec,
                       campaigns=load_campaigns(workspace.world / "campaigns.json"))
    report.write(workspace.reports)

Names are imported on first use, so ``import mlops.reports.cli`` (the CLI start) stays
cheap. The statistics (delta method, CUPED, mSPRT, SRM, PSI) live in
:mod:`mlops.reports.stats`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlops.reports.ab import (
        METRIC_NAMES,
        METRICS,
        ABReport,
        ArmSummary,
        CupedInfo,
        ExperimentSpec,
        Metric,
        MetricResult,
        Timeline,
        ab_report,
        infer_experiment,
        load_experiment,
    )
    from mlops.reports.delivery import DeliveryReport, DeliveryRow, delivery_report
    from mlops.reports.drift import (
        REQUEST_FEATURE_COLUMNS,
        Calibration,
        DriftReport,
        DriftThresholds,
        FeatureDrift,
        MarketDrift,
        Window,
        default_windows,
        drift_report,
        load_feature_tables,
    )
    from mlops.reports.errors import ReportError
    from mlops.reports.events import (
        CampaignInfo,
        Outcomes,
        decision_outcomes,
        load_campaigns,
        load_decisions,
    )
    from mlops.reports.stats import (
        Comparison,
        PSIResult,
        RatioEstimate,
        SRMResult,
        compare_ratios,
        msprt_pvalues,
        psi_categorical,
        psi_numeric,
        ratio_estimate,
        sequential_pvalues,
        srm_test,
    )

_EXPORTS: dict[str, str] = {
    "ABReport": "mlops.reports.ab",
    "ArmSummary": "mlops.reports.ab",
    "Calibration": "mlops.reports.drift",
    "CampaignInfo": "mlops.reports.events",
    "Comparison": "mlops.reports.stats",
    "CupedInfo": "mlops.reports.ab",
    "DeliveryReport": "mlops.reports.delivery",
    "DeliveryRow": "mlops.reports.delivery",
    "DriftReport": "mlops.reports.drift",
    "DriftThresholds": "mlops.reports.drift",
    "ExperimentSpec": "mlops.reports.ab",
    "FeatureDrift": "mlops.reports.drift",
    "METRICS": "mlops.reports.ab",
    "METRIC_NAMES": "mlops.reports.ab",
    "MarketDrift": "mlops.reports.drift",
    "Metric": "mlops.reports.ab",
    "MetricResult": "mlops.reports.ab",
    "Outcomes": "mlops.reports.events",
    "PSIResult": "mlops.reports.stats",
    "REQUEST_FEATURE_COLUMNS": "mlops.reports.drift",
    "RatioEstimate": "mlops.reports.stats",
    "ReportError": "mlops.reports.errors",
    "SRMResult": "mlops.reports.stats",
    "Timeline": "mlops.reports.ab",
    "Window": "mlops.reports.drift",
    "ab_report": "mlops.reports.ab",
    "compare_ratios": "mlops.reports.stats",
    "decision_outcomes": "mlops.reports.events",
    "default_windows": "mlops.reports.drift",
    "delivery_report": "mlops.reports.delivery",
    "drift_report": "mlops.reports.drift",
    "infer_experiment": "mlops.reports.ab",
    "load_campaigns": "mlops.reports.events",
    "load_decisions": "mlops.reports.events",
    "load_experiment": "mlops.reports.ab",
    "load_feature_tables": "mlops.reports.drift",
    "msprt_pvalues": "mlops.reports.stats",
    "psi_categorical": "mlops.reports.stats",
    "psi_numeric": "mlops.reports.stats",
    "ratio_estimate": "mlops.reports.stats",
    "sequential_pvalues": "mlops.reports.stats",
    "srm_test": "mlops.reports.stats",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mlops.reports' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "METRICS", "METRIC_NAMES", "REQUEST_FEATURE_COLUMNS", "ABReport", "ArmSummary",
    "Calibration", "CampaignInfo", "Comparison", "CupedInfo", "DeliveryReport", "DeliveryRow",
    "DriftReport", "DriftThresholds", "ExperimentSpec", "FeatureDrift", "MarketDrift", "Metric",
    "MetricResult", "Outcomes", "PSIResult", "RatioEstimate", "ReportError", "SRMResult",
    "Timeline", "Window", "ab_report", "compare_ratios", "decision_outcomes", "default_windows",
    "delivery_report", "drift_report", "infer_experiment", "load_campaigns", "load_decisions",
    "load_experiment", "load_feature_tables", "msprt_pvalues", "psi_categorical", "psi_numeric",
    "ratio_estimate", "sequential_pvalues", "srm_test",
]

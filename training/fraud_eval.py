"""Fraud (IVT) evaluation: thresholds at a false-positive rate on humans, recall per bot kind.

The operating point of an IVT filter is set by what it costs on human traffic: a
threshold is chosen so that at most ``target_fpr`` of human requests score at or above
it (the decision engine refuses to bid when ``p_fraud >= threshold``), and the filter is
judged by the share of each bot kind it catches there. Scores are compared in float32,
the precision every serving backend returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from adplatform.errors import DataError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Bot kinds of the simulator's truth table (``bot_kind``; "" is a human).
BOT_KINDS: tuple[str, ...] = ("crawler", "datacenter", "residential")
#: The false-positive rate the reported recalls are measured at.
EVAL_FPR = 0.01


def threshold_for_fpr(human_scores: np.ndarray, target_fpr: float) -> float:
    """The lowest threshold t with ``mean(human_scores >= t) <= target_fpr``.

    With k = floor(target_fpr * n) humans allowed above the line, t is the float32 just
    above the (k+1)-th highest human score, so ties at that score all fall below it.
    Capped at 1.0: a human flagged by a rule (score 1.0) can push the FPR above target.
    """
    if not 0.0 <= target_fpr < 1.0:
        raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr}")
    s = np.sort(np.asarray(human_scores, dtype=np.float32))[::-1]
    if s.size == 0:
        raise DataError("no human requests to set a threshold on")
    k = int(np.floor(target_fpr * s.size + 1e-9))
    t = np.nextafter(s[k], np.float32(np.inf)) if k < s.size else s[-1]
    return float(min(np.float32(t), np.float32(1.0)))


def rates_at(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float, float]:
    """(recall on bots, false-positive rate on humans) of ``p >= threshold``."""
    y = np.asarray(y, dtype=bool)
    flagged = np.asarray(p, dtype=np.float32) >= np.float32(threshold)
    recall = float(flagged[y].mean()) if y.any() else float("nan")
    fpr = float(flagged[~y].mean()) if (~y).any() else float("nan")
    return recall, fpr


def average_precision(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the precision-recall curve (step-wise, as scikit-learn computes it)."""
    from sklearn.metrics import average_precision_score

    y = np.asarray(y, dtype=bool)
    if not y.any() or y.all():
        return float("nan")
    return float(average_precision_score(y, np.asarray(p, dtype=np.float64)))


def _recall_by_kind(flagged: np.ndarray, kind: np.ndarray) -> dict[str, float]:
    return {k: float(flagged[kind == k].mean()) if (kind == k).any() else float("nan")
            for k in BOT_KINDS}


def evaluate(y: np.ndarray, kind: Sequence[str] | np.ndarray, p: np.ndarray,
             rule_hit: np.ndarray, *, p_model: np.ndarray | None = None,
             threshold: float | None = None, fpr: float = EVAL_FPR) -> dict[str, Any]:
    """Held-out evaluation of combined scores ``p`` against the rules alone.

    ``y``: is_bot; ``kind``: bot kind per request ("" for humans); ``rule_hit``: the GIVT
    rules fired; ``p_model``: the model without the rules (optional); ``threshold``: the
    deployed threshold (chosen on validation data), reported at its realised rates.

    Returns ``pr_auc``, ``recall_at_1pct_fpr`` (at the threshold giving ``fpr`` on these
    humans), ``rules_only_recall``, ``per_kind`` ({kind: recall} at that point), and
    ``rules_per_kind``, ``rules_only_fpr``, ``gain_over_rules``, ``roc_auc``, counts;
    ``model_only`` and ``at_threshold`` when given.
    """
    from training.metrics import auc

    y = np.asarray(y, dtype=bool)
    kind = np.asarray(kind, dtype=object)
    p = np.asarray(p, dtype=np.float32)
    hit = np.asarray(rule_hit, dtype=bool)
    if not (len(y) == len(kind) == len(p) == len(hit)):
        raise ValueError(f"lengths differ: y {len(y)}, kind {len(kind)}, p {len(p)}, "
                         f"rules {len(hit)}")
    if not (~y).any():
        raise DataError("no human requests in the evaluation set")
    t = threshold_for_fpr(p[~y], fpr)
    recall, realised = rates_at(y, p, t)
    flagged = p >= np.float32(t)
    out: dict[str, Any] = {
        "pr_auc": average_precision(y, p),
        "roc_auc": auc(y, p),
        "recall_at_1pct_fpr": recall,
        "fpr_at_1pct_point": realised,
        "per_kind": _recall_by_kind(flagged, kind),
        "rules_only_recall": float(hit[y].mean()) if y.any() else float("nan"),
        "rules_only_fpr": float(hit[~y].mean()),
        "rules_only_pr_auc": average_precision(y, hit.astype(np.float32)),
        "rules_per_kind": _recall_by_kind(hit, kind),
        "n_requests": int(len(y)), "n_bots": int(y.sum()),
        "kind_counts": {k: int((kind == k).sum()) for k in BOT_KINDS},
    }
    out["gain_over_rules"] = out["recall_at_1pct_fpr"] - out["rules_only_recall"]
    if p_model is not None:
        pm = np.asarray(p_model, dtype=np.float32)
        tm = threshold_for_fpr(pm[~y], fpr)
        out["model_only"] = {"pr_auc": average_precision(y, pm),
                             "recall_at_1pct_fpr": rates_at(y, pm, tm)[0],
                             "per_kind": _recall_by_kind(pm >= np.float32(tm), kind)}
    if threshold is not None:
        r, f = rates_at(y, p, threshold)
        out["at_threshold"] = {"threshold": float(threshold), "recall": r, "fpr": f,
                               "per_kind": _recall_by_kind(p >= np.float32(threshold), kind)}
    return out


def flat_metrics(evaluation: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested evaluation -> {"a_b": float} for MLflow (non-finite values dropped)."""
    out: dict[str, float] = {}
    for key, value in evaluation.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_metrics(value, f"{name}_"))
        elif isinstance(value, (int, float, np.integer, np.floating)) and np.isfinite(value):
            out[name] = float(value)
    return out


def curves_figure(y: np.ndarray, p: np.ndarray, rule_hit: np.ndarray, *,
                  p_model: np.ndarray | None = None, threshold: float | None = None,
                  fpr: float = EVAL_FPR) -> Figure:
    """ROC (log FPR axis) and precision-recall curves, with the rules' and threshold's points."""
    from matplotlib.figure import Figure
    from sklearn.metrics import precision_recall_curve, roc_curve

    y = np.asarray(y, dtype=bool)
    hit = np.asarray(rule_hit, dtype=bool)
    fig = Figure(figsize=(11, 4.5))
    roc_ax, pr_ax = fig.subplots(1, 2)
    series = [("model + rules", np.asarray(p, dtype=np.float64))]
    if p_model is not None:
        series.append(("model only", np.asarray(p_model, dtype=np.float64)))
    for label, s in series:
        f, r, _ = roc_curve(y, s)
        roc_ax.plot(np.maximum(f, 1e-5), r, lw=1.5, label=label)
        prec, rec, _ = precision_recall_curve(y, s)
        pr_ax.plot(rec, prec, lw=1.5, label=f"{label} (AP {average_precision(y, s):.3f})")
    r_fpr, r_rec = float(hit[~y].mean()), float(hit[y].mean())
    r_prec = float(y[hit].mean()) if hit.any() else 1.0
    roc_ax.plot([max(r_fpr, 1e-5)], [r_rec], "ks", label="rules only")
    pr_ax.plot([r_rec], [r_prec], "ks", label="rules only")
    if threshold is not None:
        t_rec, t_fpr = rates_at(y, p, threshold)
        flagged = np.asarray(p, dtype=np.float32) >= np.float32(threshold)
        t_prec = float(y[flagged].mean()) if flagged.any() else 1.0
        roc_ax.plot([max(t_fpr, 1e-5)], [t_rec], "r*", ms=12, label=f"threshold {threshold:.4g}")
        pr_ax.plot([t_rec], [t_prec], "r*", ms=12, label=f"threshold {threshold:.4g}")
    roc_ax.axvline(fpr, color="grey", ls=":", lw=1)
    roc_ax.set_xscale("log")
    roc_ax.set_xlim(1e-5, 1.0)
    roc_ax.set_xlabel("false-positive rate on human requests")
    roc_ax.set_ylabel("recall on bot requests")
    roc_ax.set_title("ROC (held-out requests)")
    pr_ax.set_xlabel("recall")
    pr_ax.set_ylabel("precision")
    pr_ax.set_title("Precision-recall (held-out requests)")
    for ax in (roc_ax, pr_ax):
        ax.legend(fontsize=7, loc="lower right" if ax is roc_ax else "lower left")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


__all__ = ["BOT_KINDS", "EVAL_FPR", "average_precision", "curves_figure", "evaluate",
           "flat_metrics", "rates_at", "threshold_for_fpr"]

"""Writes the numbered notebooks from the cell sources below (run: python notebooks/_build.py).

Notebooks are for exploration and communication; everything they compute comes from
the packages. Each reads ``ADPLATFORM_HOME`` (the workspace) and ``NB_SCALE`` (``small``
in the tests, ``demo`` by hand) so the tests can execute them top to bottom quickly.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = '''%matplotlib inline
import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from adplatform.config import Settings

SCALE = os.environ.get("NB_SCALE", "demo")
settings = Settings(home=Path(os.environ.get("ADPLATFORM_HOME", "../workspace")))
ws = settings.workspace.ensure()
ws.root'''

NOTEBOOKS: dict[str, list[tuple[str, str]]] = {
    "01_explore_events.ipynb": [
        ("md", "# 01 — Explore the event log\n\nSimulate a few days of bootstrap traffic "
               "(or reuse the workspace's) and look at what the bidder sees: requests, bids, "
               "wins, impressions, clicks. The ground truth stays in `truth/`."),
        ("code", SETUP),
        ("code", '''from adplatform.eventlog import read_events
from simulator import simulate

if not (ws.events / "requests").exists():
    days, rpd = (3, 10_000) if SCALE == "small" else (7, 50_000)
    print(simulate(days=days, seed=7, workspace=ws, requests_per_day=rpd).as_dict())
req = read_events(ws.events, "requests")
imp = read_events(ws.events, "impressions")
clk = read_events(ws.events, "clicks").drop_duplicates(["request_id", "imp_id"])
auc = read_events(ws.events, "auctions")
len(req), len(auc), len(imp), len(clk)'''),
        ("code", '''daily = pd.DataFrame({
    "requests": req.groupby(req.ts.dt.date).size(),
    "impressions": imp.groupby(imp.ts.dt.date).size(),
    "clicks": clk.groupby(clk.ts.dt.date).size(),
})
daily["ctr"] = daily.clicks / daily.impressions
daily'''),
        ("code", '''fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
req.groupby(req.ts.dt.hour).size().plot.bar(ax=axes[0], title="requests by hour (UTC)")
auc.assign(won=auc.won.astype(int)).groupby(pd.cut(auc.bid_price, 20), observed=True).won.mean()\\
    .plot(ax=axes[1], title="win rate by bid (CPM)")
plt.tight_layout()'''),
    ],
    "02_train_ctr.ipynb": [
        ("md", "# 02 — Train the CTR model\n\nPoint-in-time features from Feast "
               "(`ctr_v1`), LightGBM exported to ONNX, registered in MLflow. This calls "
               "`training.ctr.train_ctr`, the same code as `adplatform train ctr`."),
        ("code", SETUP),
        ("code", '''from features.ops import materialize
from training.ctr import train_ctr

materialize(settings)
result = train_ctr(settings)
result.version, result.alias'''),
        ("code", '''pd.Series(result.metrics).round(4)'''),
        ("code", '''from mlops.registry import resolve
from models.lgbm_onnx import onnx_predict
import numpy as np

model = resolve(settings, "ctr", result.alias)
x = np.zeros((5, len(__import__("features.vectorize", fromlist=["CTR_FEATURES"]).CTR_FEATURES)), np.float32)
onnx_predict(model.onnx_path.read_bytes(), x)'''),
    ],
    "03_bid_shading.ipynb": [
        ("md", "# 03 — Bid shading: the censored bid landscape\n\nFirst-price auctions: we "
               "see the highest competing bid C only partly — a win says C ≤ our bid, a loss "
               "C > our bid (or C itself when the exchange reports the price to beat). "
               "`training.shading.train_shading` fits a log-normal mixture of C per context by "
               "censored maximum likelihood, exports it to ONNX and registers `shading`; "
               "`training.shading_eval` prices held-out simulator auctions with it and with the "
               "baselines: the best constant shading factor and a context-free Kaplan–Meier "
               "(Turnbull) landscape."),
        ("code", SETUP),
        ("code", '''import numpy as np

from models.shading import ShadingConfig
from training.shading import train_shading

small = SCALE == "small"
cfg = ShadingConfig(holdout_days=1, max_epochs=8, hidden=32) if small else ShadingConfig()
# evaluate=False: the held-out evaluation runs below, step by step.
result = train_shading(settings, cfg, evaluate=False)
result.version, result.alias, {k: round(v, 4) for k, v in result.metrics.items()
                                if k in ("test_nll", "epochs", "n_train", "n_test")}'''),
        ("code", '''from features.store import open_store
from models.shading import Censoring
from training.datasets import time_split
from training.shading import auction_frame, censored_data, fit_turnbull, joined_features

df = joined_features(open_store(settings), auction_frame(settings))
train_df, test_df = time_split(df, cfg.holdout_days)
train, _ = censored_data(train_df)
test, test_rows = censored_data(test_df)
km = fit_turnbull(train)          # context-free landscape (Kaplan-Meier with left censoring)
pd.Series(train.kind).map(lambda k: Censoring(k).name).value_counts().rename("training auctions")'''),
        ("code", '''import onnxruntime as ort

from mlops.registry import resolve
from models.shading import INPUT_NAME
from models.shading_landscape import mixture_cdf

# The registered ONNX graph is what the decision service runs: features -> landscape.
session = ort.InferenceSession(str(resolve(settings, "shading", result.alias).onnx_path),
                               providers=["CPUExecutionProvider"])
landscape = session.run(None, {INPUT_NAME: test.x.astype(np.float32)})[0].astype(np.float64)
prices = np.geomspace(0.05, 50.0, 200)
rows = np.random.default_rng(0).choice(len(test), size=6, replace=False)
win = mixture_cdf(landscape[rows])(np.broadcast_to(prices, (len(rows), len(prices))))
fig, ax = plt.subplots(figsize=(8, 4.5))
for i, r in enumerate(rows):
    ax.plot(prices, win[i], lw=1.2, label=f"held-out auction #{r}")
ax.plot(prices, km.cdf(prices), "k--", lw=2, label="Kaplan-Meier (Turnbull), all auctions")
ax.set_xscale("log")
ax.set_xlabel("bid (CPM)")
ax.set_ylabel("P(win | bid)")
ax.set_title("Win curves: the model's landscape per context vs one context-free curve")
ax.legend(fontsize=7);'''),
        ("code", '''from training.shading_eval import evaluate_simulator

# Realised surplus on the held-out human auctions: the simulator regenerates the true
# competing bids and values the event log hides.
ids = test_df.iloc[test_rows]["request_id"]
ev = evaluate_simulator(settings, ids, landscape, train, km=km)
pd.Series({name: ev[key] for name, key in [
    ("shading model", "surplus"), ("oracle (true landscape)", "oracle_surplus"),
    (f"best constant (alpha = {ev['best_constant_factor']:.2f})", "best_constant_surplus"),
    ("Kaplan-Meier landscape", "km_surplus"), ("truthful (b = v)", "truthful_surplus")]},
    name="surplus (USD)").round(2)'''),
        ("code", '''from training.shading_eval import ALPHAS, constant_bids, realised, regenerate

_, held = regenerate(settings, pd.Index(ids))
v, f, c = held.value, held.floor, held.competing
constant = pd.Series([realised(v, constant_bids(v, f, a), c, f)["surplus"] for a in ALPHAS],
                     index=ALPHAS)
fig, ax = plt.subplots(figsize=(8, 4))
constant.plot(ax=ax, label="constant factor: b = max(alpha v, floor)")
ax.axhline(ev["surplus"], color="C1", lw=2, label="shading model")
ax.axhline(ev["km_surplus"], color="k", ls="--", label="Kaplan-Meier landscape")
ax.axhline(ev["oracle_surplus"], color="C2", ls=":", label="oracle")
ax.axvline(ev["best_constant_factor"], color="grey", ls=":", lw=1,
           label="alpha tuned on the training days")
ax.set_xlabel("shading factor alpha")
ax.set_ylabel("held-out surplus (USD)")
ax.set_title("Surplus on held-out auctions")
ax.legend(fontsize=8);'''),
    ],
    "04_fraud.ipynb": [
        ("md", "# 04 — Fraud / invalid traffic\n\n`training.fraud.train_fraud`: LightGBM on "
               "request and behaviour features (`fraud_v1`) plus the general-IVT rules "
               "(crawler user agents, data-centre IPs) inside one ONNX graph; the threshold "
               "gives 1% false positives on validation humans. Here: the held-out "
               "precision-recall curve, recall per bot kind, and the rules alone vs the model."),
        ("code", SETUP),
        ("code", '''from training.fraud import FraudConfig, train_fraud

small = SCALE == "small"
cfg = FraudConfig(num_threads=2, human_keep=0.5 if small else 1.0)
result = train_fraud(settings, cfg)
ev = result.evaluation
pd.Series({"version": result.version, "alias": result.alias,
           "threshold": f"{result.threshold:.4g}", "PR-AUC": f"{ev['pr_auc']:.4f}",
           "recall at 1% FPR": f"{ev['recall_at_1pct_fpr']:.4f}",
           "rules alone: recall": f"{ev['rules_only_recall']:.4f}",
           "rules alone: FPR": f"{ev['rules_only_fpr']:.4f}"})'''),
        ("code", '''from IPython.display import display

from mlops.registry import resolve
from models.fraud_rules import rules_for_requests
from training.datasets import time_split
from training.fraud import request_frame, score_requests
from training.fraud_eval import curves_figure

# The held-out days, scored as the decision service scores them (the registered ONNX graph).
_, held = time_split(request_frame(settings), cfg.holdout_days)
model = resolve(settings, "fraud", result.alias)
p = score_requests(settings, held, model.onnx_path.read_bytes())
y = held["is_bot"].to_numpy()
hits = rules_for_requests(held["ip"].tolist(), held["ua"].tolist(), settings.shared_data).any
display(curves_figure(y, p, hits, threshold=result.threshold))'''),
        ("code", '''from training.fraud_eval import evaluate

check = evaluate(y, held["bot_kind"].to_numpy(), p, hits, threshold=result.threshold)
per_kind = pd.DataFrame({"rules alone": check["rules_per_kind"],
                         "model + rules, 1% FPR": check["per_kind"],
                         "model + rules, deployed threshold": check["at_threshold"]["per_kind"]})
fig, ax = plt.subplots(figsize=(10, 3.5))
per_kind.plot.bar(ax=ax, rot=0)
ax.set_ylabel("recall")
ax.set_ylim(0, 1.05)
ax.set_title("Recall per bot kind (held out)")
ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
plt.tight_layout()
per_kind.assign(requests=pd.Series(check["kind_counts"])).round(3)'''),
    ],
    "05_promotion.ipynb": [
        ("md", "# 05 — Promote a challenger\n\nTrain a new CTR version (it registers as "
               "`challenger`), gate it against `champion` on the same held-out data — quality, "
               "calibration, ONNX parity, latency — and move `champion` only if every gate "
               "passes. Then roll back. Same code as `adplatform promote` / `rollback`."),
        ("code", SETUP),
        ("code", '''from training.ctr import train_ctr

challenger = train_ctr(settings)
challenger.version, challenger.alias'''),
        ("code", '''from mlops.promotion import promote, rollback

result = promote(settings, "ctr")
pd.DataFrame([{"gate": g.name, "passed": g.passed, "reason": g.reason} for g in result.gates])'''),
        ("code", '''result.status, result.candidate, result.champion_before'''),
        ("code", '''if result.status == "promoted":
    print(rollback(settings, "ctr"))'''),
    ],
    "06_ab_report.ipynb": [
        ("md", "# 06 — A/B report: champion vs challenger\n\nA challenger CTR version gets "
               "half of the users (hashed by id) in a live experiment through the decision "
               "service; decisions go to the decision log, outcomes to the event log. The A/B "
               "report (`mlops.reports.ab_report`, also `adplatform report ab --experiment "
               "NAME`) compares the arms: delta-method CIs per ratio metric, CUPED from the "
               "pre-period, always-valid (mSPRT) p-values, a sample-ratio-mismatch check. "
               "The same run closes `adplatform demo`."),
        ("code", SETUP),
        ("code", '''import socket

from mlops.demo_ab import run_ab
from simulator import LiveExchange


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


from mlops.errors import ModelNotFound
from mlops.registry import resolve

try:           # 05 left a challenger (refused or rolled back): put it to the test live
    have_challenger = bool(resolve(settings, "ctr", "challenger").version)
except ModelNotFound:
    have_challenger = False
# Serves champion and challenger (trained first when there is none) behind one
# experiment, sends live auctions, flushes the outcomes and writes the report.
auctions = 800 if SCALE == "small" else 5_000
ab = run_ab(settings, LiveExchange.from_workspace(ws, session=6), auctions=auctions,
            port=free_port(), train=not have_challenger)
rep = ab.report
print(f"experiment {ab.experiment}: ctr v{ab.champion} (champion) vs v{ab.challenger} "
      f"(challenger), {ab.stats.requests} live auctions, {ab.stats.errors} errors")'''),
        ("code", '''arms = pd.DataFrame([{"arm": a.arm, "units": a.units, "requests": a.totals["request"],
                      "bids": a.totals["bid"], "wins": a.totals["won"],
                      "impressions": a.totals["impression"], "clicks": a.totals["clicked"],
                      "spend": a.totals["cost"], "surplus": a.totals["surplus"],
                      **{m: a.metrics[m] for m in ("win_rate", "ctr", "cpc", "roi")}}
                     for a in rep.arms]).set_index("arm")
print(f"sample ratio: units {rep.srm.counts}, p = {rep.srm.p_value:.3g}"
      f"{' (MISMATCH)' if rep.srm.mismatch else ''}")
arms.round(4)'''),
        ("code", '''results = pd.DataFrame([{
    "metric": r.metric, "champion": r.comparison.control, "challenger": r.comparison.treatment,
    "lift": r.comparison.lift, "ci low": r.comparison.lift_ci[0],
    "ci high": r.comparison.lift_ci[1], "p": r.comparison.p_value, "verdict": r.verdict,
    "p (always valid)": r.sequential_p, "sequential verdict": r.sequential_verdict,
} for r in rep.results]).set_index("metric")
results.round(4)'''),
        ("code", '''import numpy as np

# Relative lift of the challenger with its 95% delta-method CI, per metric.
ok = results[np.isfinite(results[["lift", "ci low", "ci high"]].astype(float)).all(axis=1)]
fig, ax = plt.subplots(figsize=(8, 0.45 * len(ok) + 1.2))
y = np.arange(len(ok))
ax.errorbar(ok["lift"], y, xerr=[ok["lift"] - ok["ci low"], ok["ci high"] - ok["lift"]],
            fmt="o", capsize=3)
ax.axvline(0, color="grey", ls="--", lw=1)
ax.set_yticks(y)
ax.set_yticklabels(ok.index)
ax.set_xlim(max(-1.0, ok["ci low"].min()) - 0.05, min(1.5, ok["ci high"].max()) + 0.05)
ax.set_xlabel("relative lift vs champion (95% CI)")
ax.set_title("Challenger vs champion");'''),
        ("code", '''tl = rep.timeline
looks = pd.to_datetime([t.isoformat() for t in tl.looks])
fig, axes = plt.subplots(1, 3, figsize=(14, 3.5))
for ax, metric in zip(axes[:2], ("win_rate", "ctr"), strict=True):
    for arm, values in tl.value[metric].items():
        ax.plot(looks, values, marker=".", label=arm)
        ax.fill_between(looks, tl.ci_low[metric][arm], tl.ci_high[metric][arm], alpha=0.2)
    ax.set_title(f"{metric} (running, 95% CI)")
    ax.legend(fontsize=8)
for metric in ("win_rate", "ctr", "surplus_per_1k"):
    for arm, pv in tl.sequential_p.get(metric, {}).items():
        axes[2].plot(looks, pv, marker=".", label=f"{metric} ({arm})")
axes[2].axhline(rep.alpha, color="red", ls="--", lw=1, label=f"alpha = {rep.alpha}")
axes[2].set_yscale("log")
axes[2].set_title("always-valid p-values")
axes[2].legend(fontsize=7)
for ax in axes:
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
plt.tight_layout()'''),
        ("code", '''# The report page (HTML, plots embedded) and its JSON twin:
print(ab.html)
print(ab.json)
print(f"rebuild: ADPLATFORM_HOME={ws.root} adplatform report ab --experiment {ab.experiment}")'''),
    ],
}


def build() -> None:
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=[new_markdown_cell(src) if kind == "md" else new_code_cell(src)
                                 for kind, src in cells])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
        for i, cell in enumerate(nb.cells):       # stable ids: a rebuild diffs cleanly
            cell.id = f"cell-{i:02d}"
        nbformat.write(nb, HERE / name)


if __name__ == "__main__":
    build()

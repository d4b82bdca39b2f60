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
        ("md", "# 01 — Explore the event log\\n\\nSimulate a few days of bootstrap traffic "
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
        ("md", "# 02 — Train the CTR model\\n\\nPoint-in-time features from Feast "
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
    "05_promotion.ipynb": [
        ("md", "# 05 — Promote a challenger\\n\\nTrain a new CTR version (it registers as "
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
}


def build() -> None:
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=[new_markdown_cell(src) if kind == "md" else new_code_cell(src)
                                 for kind, src in cells])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
        nbformat.write(nb, HERE / name)


if __name__ == "__main__":
    build()

"""``adplatform demo`` end to end at small scale, ending with its A/B experiment.

simulate -> features -> train -> serve -> live auctions -> challenger -> champion vs
challenger on live auctions -> the A/B report (HTML with embedded plots + JSON), whose
path the summary prints.
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from adplatform.ports import free_port
from mlops.demo import run_demo
from mlops.demo_ab import EXPERIMENT
from mlops.reports import load_decisions
from tests.conftest import make_settings

pytestmark = pytest.mark.slow

PNG = b"\x89PNG\r\n\x1a\n"


def test_demo_ends_with_an_ab_report(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "ws")
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False)
    stats = run_demo(settings, days=4, requests_per_day=10_000, auctions=300, ab_auctions=800,
                     seed=11, port=free_port(), console=console)
    text = out.getvalue()
    assert stats.errors == 0 and stats.requests == 300

    reports = settings.workspace.reports
    html, js = reports / f"ab_{EXPERIMENT}.html", reports / f"ab_{EXPERIMENT}.json"
    assert html.exists() and js.exists()
    assert f"A/B report: {html}" in text.replace("\n", "")
    assert "adplatform report ab --experiment " + EXPERIMENT in text

    doc = json.loads(js.read_text(encoding="utf-8"))
    arms = {a["arm"]: a for a in doc["arms"]}
    assert set(arms) == {"champion", "challenger"}
    assert doc["experiment"]["control"] == "champion"
    assert sum(a["totals"]["request"] for a in arms.values()) == 800
    for a in arms.values():
        assert a["totals"]["request"] > 250 and a["totals"]["bid"] > 0
    assert not doc["srm"]["mismatch"]
    assert {r["arm"] for r in doc["results"]} == {"challenger"}

    # The decisions name the arms; the two arms were scored by different CTR versions.
    dec = load_decisions(settings.workspace, source="live")
    arm_rows = dec.loc[dec["variant"].astype(str).str.startswith(EXPERIMENT + ":")]
    assert len(arm_rows) >= 800
    scored = arm_rows.loc[arm_rows["model_version"].fillna("") != ""]      # not no-bids
    versions = scored.groupby("variant")["model_version"].agg(set)
    assert versions[f"{EXPERIMENT}:champion"].isdisjoint(versions[f"{EXPERIMENT}:challenger"])

    # The page is self-contained: its plots are embedded PNGs that decode.
    page = html.read_text(encoding="utf-8")
    images = re.findall(r'<img[^>]+src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= 3, "forest plot, running metrics and sequential p-values"
    for img in images:
        assert base64.b64decode(img)[:8] == PNG
    assert "champion" in page and "challenger" in page

"""Rendering: a self-contained HTML page (PNG plots embedded as base64) and its JSON twin.

Reports build a :class:`Page` of :class:`Section` s (paragraphs, :class:`Table` s,
:class:`Plot` s) and call :func:`write_report`, which writes ``<stem>.html`` and
``<stem>.json`` into the output folder. Matplotlib is used through
:class:`matplotlib.figure.Figure` only (no pyplot, no global backend state).
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""
    # Per row: "" or a CSS class ("bad", "good", "warn") that colours the row.
    classes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Plot:
    png_base64: str
    alt: str
    caption: str = ""


@dataclass(frozen=True)
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)


@dataclass(frozen=True)
class Alert:
    level: str        # "bad" | "warn" | "good" | "info"
    text: str


@dataclass(frozen=True)
class Page:
    title: str
    subtitle: str
    alerts: list[Alert]
    sections: list[Section]


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ page.title }}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #1d2733; }
h1 { margin-bottom: .2rem; } .subtitle { color: #5b6b7c; margin-top: 0; }
h2 { border-bottom: 1px solid #d8dee6; padding-bottom: .3rem; margin-top: 2.2rem; }
table { border-collapse: collapse; margin: .8rem 0 1.2rem; font-size: .88rem; }
caption { text-align: left; color: #5b6b7c; padding-bottom: .3rem; }
th, td { border: 1px solid #d8dee6; padding: .3rem .55rem; text-align: right; }
th { background: #f2f5f8; } td:first-child, th:first-child { text-align: left; }
tr.bad td { background: #fde8e8; } tr.good td { background: #e6f6ea; }
tr.warn td { background: #fff6dc; }
.alert { padding: .55rem .8rem; border-radius: 4px; margin: .4rem 0; }
.alert.bad { background: #fde8e8; border-left: 4px solid #c62828; }
.alert.warn { background: #fff6dc; border-left: 4px solid #e0a800; }
.alert.good { background: #e6f6ea; border-left: 4px solid #2e7d32; }
.alert.info { background: #eaf2fb; border-left: 4px solid #1f6fb2; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #eef1f4; }
figcaption { color: #5b6b7c; font-size: .88rem; }
.scroll { overflow-x: auto; }
footer { margin-top: 3rem; color: #8a98a6; font-size: .8rem; }
</style></head>
<body>
<h1>{{ page.title }}</h1>
<p class="subtitle">{{ page.subtitle }}</p>
{% for a in page.alerts %}<div class="alert {{ a.level }}">{{ a.text }}</div>
{% endfor %}
{% for s in page.sections %}
<section><h2>{{ s.title }}</h2>
{% for p in s.paragraphs %}<p>{{ p }}</p>
{% endfor %}
{% for t in s.tables %}<div class="scroll"><table>{% if t.caption %}<caption>{{ t.caption }}</caption>{% endif %}
<thead><tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>{% for r in t.rows %}<tr{% if t.classes and t.classes[loop.index0] %} class="{{ t.classes[loop.index0] }}"{% endif %}>{% for v in r %}<td>{{ v }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table></div>
{% endfor %}
{% for f in s.plots %}<figure><img alt="{{ f.alt }}" src="data:image/png;base64,{{ f.png_base64 }}">
{% if f.caption %}<figcaption>{{ f.caption }}</figcaption>{% endif %}</figure>
{% endfor %}
</section>
{% endfor %}
<footer>AdPlatform report · JSON twin: {{ json_name }}</footer>
</body></html>
"""


def _environment() -> jinja2.Environment:
    return jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)


def render_page(page: Page, *, json_name: str = "") -> str:
    """The page as one HTML document."""
    return _environment().from_string(_TEMPLATE).render(page=page, json_name=json_name)


def figure_png(fig: Figure, *, dpi: int = 110) -> str:
    """A matplotlib figure as base64-encoded PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def new_figure(width: float = 10.0, height: float = 4.0) -> Figure:
    """A figure not registered with pyplot (safe in threads and servers)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="tight")


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN/inf as null, numpy scalars as Python numbers, dates as ISO text."""
    if isinstance(obj, float | np.floating):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, pd.Timestamp | datetime | date):
        return obj.isoformat()
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: json_safe(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return [json_safe(v) for v in obj.tolist()]
    if isinstance(obj, Sequence) and not isinstance(obj, str | bytes):
        return [json_safe(v) for v in obj]
    return obj


def write_report(out_dir: Path, stem: str, page: Page, doc: Mapping[str, Any]
                 ) -> tuple[Path, Path]:
    """Write ``<stem>.html`` and ``<stem>.json`` into ``out_dir``; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, json_path = out_dir / f"{stem}.html", out_dir / f"{stem}.json"
    html_path.write_text(render_page(page, json_name=json_path.name), encoding="utf-8")
    json_path.write_text(json.dumps(json_safe(doc), indent=2, allow_nan=False) + "\n",
                         encoding="utf-8")
    return html_path, json_path


def fmt(v: Any, kind: str = "num") -> str:
    """Table cell text: ``int``, ``pct``, ``pct1``, ``lift``, ``usd``, ``p`` (p-value) or
    ``num``; NaN and None → "–"."""
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    x = float(v)
    if not math.isfinite(x):
        return "–"
    if kind == "int":
        return f"{x:,.0f}"
    if kind == "pct":
        return f"{x:.3%}"
    if kind == "pct1":
        return f"{x:.1%}"
    if kind == "lift":
        return f"{x:+.2%}"
    if kind == "usd":
        return f"{x:,.2f}"
    if kind == "p":
        return "<0.0001" if x < 1e-4 else f"{x:.4f}"
    return f"{x:.4g}"


__all__ = ["Alert", "Page", "Plot", "Section", "Table", "figure_png", "fmt", "json_safe",
           "new_figure", "render_page", "write_report"]

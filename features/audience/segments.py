"""Segments: named sets of users, stored as ``<workspace>/audiences/<name>.json``.

A segment is either *custom* (imported from a file: an advertiser's CRM list, a
retargeting pool, a seed for a lookalike) or a *lookalike* built from a seed segment.
Names are short identifiers (letters, digits, ``_ . -``): they become values of the
``user_segments`` Feast feature and OpenRTB ``user.data.segment.id`` values, so they
never contain commas or spaces.

User files (:func:`read_user_file`) are ``.json`` (a list of ids, or an object with
``user_ids``), ``.parquet`` or ``.csv`` (a ``user_id`` column), or text (one id a line,
``#`` comments).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from adplatform.config import Settings
from adplatform.errors import DataError
from features.audience.errors import AudienceError, SegmentNotFound

SegmentKind = Literal["custom", "lookalike"]
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
FORMAT_VERSION = 1


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise AudienceError(f"invalid segment name {name!r}: use 1-64 letters, digits, "
                            "'_', '.' or '-', starting with a letter or digit")
    return name


@dataclass(frozen=True)
class Segment:
    """A named set of users (ordered: a lookalike lists its best matches first)."""

    name: str
    user_ids: tuple[str, ...]
    kind: SegmentKind = "custom"
    as_of: datetime | None = None            # time of the data the segment reflects
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    scores: tuple[float, ...] | None = None  # similarity of each user (lookalikes)
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name(self.name)
        if len(set(self.user_ids)) != len(self.user_ids):
            raise AudienceError(f"segment {self.name!r}: duplicate user ids")
        if self.scores is not None and len(self.scores) != len(self.user_ids):
            raise AudienceError(f"segment {self.name!r}: {len(self.scores)} scores for "
                                f"{len(self.user_ids)} users")

    def __len__(self) -> int:
        return len(self.user_ids)

    def to_json(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, "name": self.name, "kind": self.kind,
                "as_of": self.as_of.isoformat() if self.as_of else None,
                "created_at": self.created_at.isoformat(), "source": self.source,
                "size": len(self.user_ids), "user_ids": list(self.user_ids),
                "scores": list(self.scores) if self.scores is not None else None}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Segment:
        def when(v: str | None) -> datetime | None:
            return datetime.fromisoformat(v) if v else None

        return cls(name=d["name"], user_ids=tuple(str(u) for u in d["user_ids"]),
                   kind=d.get("kind", "custom"), as_of=when(d.get("as_of")),
                   created_at=when(d.get("created_at")) or datetime.now(UTC),
                   scores=tuple(float(s) for s in d["scores"]) if d.get("scores") else None,
                   source=dict(d.get("source") or {}))


def audiences_dir(settings: Settings) -> Path:
    return settings.workspace.root / "audiences"


def segment_path(settings: Settings, name: str) -> Path:
    return audiences_dir(settings) / f"{check_name(name)}.json"


def save_segment(settings: Settings, segment: Segment) -> Path:
    """Write (or replace) a segment; atomic, so readers never see half a file."""
    path = segment_path(settings, segment.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(segment.to_json(), ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def load_segment(settings: Settings, name: str) -> Segment:
    path = segment_path(settings, name)
    if not path.exists():
        known = ", ".join(list_segments(settings)) or "none"
        raise SegmentNotFound(f"no segment {name!r} in {path.parent} (known: {known})")
    try:
        return Segment.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"not a segment file: {exc}", path=str(path)) from exc


def list_segments(settings: Settings) -> list[str]:
    """Names of the stored segments, sorted."""
    d = audiences_dir(settings)
    if not d.exists():
        return []
    return sorted(p.stem for p in d.glob("*.json") if NAME_RE.fullmatch(p.stem))


def delete_segment(settings: Settings, name: str) -> bool:
    path = segment_path(settings, name)
    if path.exists():
        path.unlink()
        return True
    return False


def _clean(ids: list[Any], path: Path) -> list[str]:
    out: list[str] = []
    for line, v in enumerate(ids, start=1):
        if v is None or (isinstance(v, float) and pd.isna(v)):
            continue
        if not isinstance(v, str | int):
            raise DataError(f"user id must be a string, got {type(v).__name__}",
                            path=str(path), line=line)
        s = str(v).strip()
        if s:
            out.append(s)
    return list(dict.fromkeys(out))


def read_user_file(path: Path) -> list[str]:
    """User ids from a ``.json``, ``.parquet``, ``.csv`` or text file (deduplicated, in order)."""
    if not path.exists():
        raise DataError("no such file", path=str(path))
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg}", path=str(path), line=exc.lineno) from exc
        ids = doc.get("user_ids") if isinstance(doc, dict) else doc
        if not isinstance(ids, list):
            raise DataError("expected a list of user ids or an object with 'user_ids'",
                            path=str(path))
        return _clean(ids, path)
    if suffix in (".parquet", ".csv"):
        df = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path, dtype=str)
        if "user_id" not in df.columns:
            raise DataError(f"no 'user_id' column (columns: {list(df.columns)})", path=str(path))
        return _clean(df["user_id"].tolist(), path)
    lines = path.read_text(encoding="utf-8").splitlines()
    return _clean([ln.split("#", 1)[0] for ln in lines], path)


__all__ = ["NAME_RE", "Segment", "SegmentKind", "audiences_dir", "check_name",
           "delete_segment", "list_segments", "load_segment", "read_user_file",
           "save_segment", "segment_path"]

"""Creative attributes the feature pipeline and reader need from the campaign file."""

from __future__ import annotations

import json
from pathlib import Path

from adplatform.errors import DataError


def creative_topics(path: Path) -> dict[str, int]:
    """creative_id -> topic, from a campaigns.json; empty when the file is absent."""
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
        return {str(cr["creative_id"]): int(cr.get("topic", -1))
                for c in doc["campaigns"] for cr in c["creatives"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"bad campaign file: {exc}", path=str(path)) from exc

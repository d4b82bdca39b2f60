"""Audiences: user embeddings from co-engagement, a Milvus vector index, lookalike
segments, and segment membership written back to Feast (``user_segments``).

* :mod:`features.audience.embeddings` — users × items (publishers, creatives) matrix,
  tf-idf weighted, factorised by truncated SVD into unit-length vectors.
* :mod:`features.audience.index` — the Milvus collection (Milvus Lite file by default,
  a server by ``ADPLATFORM_MILVUS_URI``).
* :mod:`features.audience.segments` — the segment store, ``<workspace>/audiences/``.
* :mod:`features.audience.lookalike` — :func:`build` and :func:`lookalike`.
* :mod:`features.audience.writeback` — the ``user_segments`` FeatureView and its writer.
* :mod:`features.audience.evaluate` — lookalike quality against simulator truth.
* :mod:`features.audience.cli` — ``adplatform audience …``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from features.audience.errors import AudienceError, IndexUnavailable, SegmentNotFound

if TYPE_CHECKING:
    from features.audience.embeddings import EmbeddingConfig, UserEmbeddings, build_embeddings
    from features.audience.index import AudienceIndex, IndexConfig, milvus_uri
    from features.audience.lookalike import BuildResult, build, lookalike
    from features.audience.segments import (
        Segment,
        list_segments,
        load_segment,
        read_user_file,
        save_segment,
    )
    from features.audience.writeback import VIEW_NAME, segment_view, write_segments

# Heavy dependencies (scikit-learn, Feast, pymilvus) load on first use, so that the CLI
# (which imports features.audience.cli) starts fast.
_LAZY = {
    "EmbeddingConfig": "embeddings", "UserEmbeddings": "embeddings",
    "build_embeddings": "embeddings", "AudienceIndex": "index", "IndexConfig": "index",
    "milvus_uri": "index", "BuildResult": "lookalike", "build": "lookalike",
    "lookalike": "lookalike", "Segment": "segments", "list_segments": "segments",
    "load_segment": "segments", "read_user_file": "segments", "save_segment": "segments",
    "VIEW_NAME": "writeback", "segment_view": "writeback", "write_segments": "writeback",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = ["VIEW_NAME", "AudienceError", "AudienceIndex", "BuildResult", "EmbeddingConfig",
           "IndexConfig", "IndexUnavailable", "Segment", "SegmentNotFound", "UserEmbeddings",
           "build", "build_embeddings", "list_segments", "load_segment", "lookalike",
           "milvus_uri", "read_user_file", "save_segment", "segment_view", "write_segments"]

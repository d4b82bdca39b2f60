"""Build the audience index, and grow seed segments into lookalike audiences.

:func:`build` embeds every user of the event log and (re)indexes the vectors in Milvus.
:func:`lookalike` reads the seed users' vectors back from the index, forms the query
``mean(seed vectors) − mean(all vectors)`` with the residual coordinate zeroed (what sets
the seed apart from the population, see :mod:`features.audience.embeddings`), and asks
Milvus for the nearest users that are not seeds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from adplatform.config import Settings
from features.audience.embeddings import EmbeddingConfig, UserEmbeddings, build_embeddings
from features.audience.errors import AudienceError
from features.audience.index import AudienceIndex, IndexMeta
from features.audience.segments import Segment, check_name, save_segment

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildResult:
    users: int
    dim: int
    as_of: datetime | None
    uri: str
    collection: str
    embed_seconds: float
    index_seconds: float


def build(settings: Settings, config: EmbeddingConfig | None = None, *,
          uri: str | None = None, embeddings: UserEmbeddings | None = None) -> BuildResult:
    """Embed the workspace's users (unless ``embeddings`` are given) and rebuild the index."""
    emb = embeddings if embeddings is not None else build_embeddings(
        settings.workspace.events, config or EmbeddingConfig(seed=settings.seed))
    started = time.perf_counter()
    with AudienceIndex.open(settings, uri) as index:
        meta = index.rebuild(emb)
        return BuildResult(users=meta.count, dim=meta.dim, as_of=meta.as_of,
                           uri=index.config.uri, collection=index.config.collection,
                           embed_seconds=emb.seconds,
                           index_seconds=time.perf_counter() - started)


def seed_query(seed_vectors: np.ndarray, meta: IndexMeta) -> np.ndarray:
    """The search vector of a seed set: its mean minus the population's, residual zeroed."""
    if seed_vectors.ndim != 2 or seed_vectors.shape[1] != meta.dim:
        raise AudienceError(f"seed vectors have shape {seed_vectors.shape}, index dim {meta.dim}")
    q = seed_vectors.astype(np.float64).mean(axis=0) - meta.background.astype(np.float64)
    q[-1] = 0.0
    norm = float(np.linalg.norm(q))
    if not np.isfinite(norm) or norm < 1e-12:
        raise AudienceError("the seed users look exactly like the average user: "
                            "no direction to search")
    return (q / norm).astype(np.float32)


def lookalike(settings: Settings, seed_users: Sequence[str], size: int, name: str, *,
              uri: str | None = None, save: bool = True,
              seed_segment: str | None = None) -> Segment:
    """The ``size`` users most like ``seed_users`` (seeds excluded), as segment ``name``.

    Seeds without an embedding (never seen in the event log) are ignored; at least one
    must have one. The segment is saved to the workspace's segment store unless
    ``save`` is false; write it to Feast with :func:`features.audience.writeback.write_segments`.
    """
    check_name(name)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise AudienceError(f"lookalike size must be a positive integer, got {size!r}")
    seeds = list(dict.fromkeys(str(u) for u in seed_users if str(u)))
    if not seeds:
        raise AudienceError("lookalike needs at least one seed user")
    started = time.perf_counter()
    with AudienceIndex.open(settings, uri) as index:
        meta = index.meta()
        found = index.vectors(seeds)
        if not found:
            raise AudienceError(f"none of the {len(seeds)} seed users has an embedding; "
                                "rebuild the index (`adplatform audience build`) or check ids")
        query = seed_query(np.stack([found[u] for u in seeds if u in found]), meta)
        hits = index.search(query, size, exclude=frozenset(found))
        collection = index.config.collection
    if len(hits) < size:
        log.warning("lookalike %s: asked for %d users, only %d non-seed users are indexed",
                    name, size, len(hits))
    segment = Segment(
        name=name, user_ids=tuple(h.user_id for h in hits), kind="lookalike",
        as_of=meta.as_of, scores=tuple(h.score for h in hits),
        source={"seed_segment": seed_segment, "seed_users": len(seeds),
                "seed_users_indexed": len(found), "size": size, "collection": collection,
                "index_built_at": meta.built_at.isoformat(),
                "seconds": round(time.perf_counter() - started, 3)})
    if save:
        save_segment(settings, segment)
    log.info("lookalike %s: %d users from %d seeds (%d indexed) in %.2fs", name, len(segment),
             len(seeds), len(found), time.perf_counter() - started)
    return segment


__all__ = ["BuildResult", "build", "lookalike", "seed_query"]

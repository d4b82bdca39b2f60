"""User embeddings from co-engagement: a weighted users × items matrix, factorised.

Items are publishers (``pub:<publisher_id>``) and creatives (``ad:<creative_id>``). Every
request a user sends from a publisher is a light *view* of that publisher, every
impression a lighter view of the creative, and every click a strong signal on the
creative and on the publisher it was shown on. Counts are dampened (``log1p``) and
weighted by the item's inverse document frequency (tf-idf), so a visit to a niche
publisher says more than a visit to the most popular site.

The row-normalised matrix is factorised by a seeded randomized truncated SVD; a user's
factor is the projection of their unit row onto the top ``dim`` right singular vectors,
whitened (divided by the singular values, so the many weak interest directions count
as much as the few strong popularity/device ones) and scaled by the user's amount of
evidence, ``‖row‖ ** evidence``: a user seen once at one publisher is a weak, uncertain
signal, a regular is a strong one.

Vectors are stored with unit length: the factors are divided by the largest factor norm
and one last *residual* coordinate, ``sqrt(1 - ‖f‖²)``, takes up the rest. Queries
(:mod:`features.audience.lookalike`) put zero on the residual coordinate, so an inner
product or cosine search ranks users by ``f_u · q``: how strongly *and* how surely their
behaviour matches the query. One-off visitors do not crowd out the regulars.

Same event log, same config, same seed: byte-identical vectors.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import scipy.sparse as sp
from sklearn.utils.extmath import randomized_svd

from adplatform.eventlog import SCHEMAS
from features.audience.errors import AudienceError

log = logging.getLogger(__name__)

PUB_PREFIX = "pub:"
AD_PREFIX = "ad:"
#: Up to this many items the SVD is solved exactly from the items × items Gram matrix.
GRAM_MAX_ITEMS = 4096
#: Components weaker than this fraction of the strongest are numerical noise: dropped
#: (whitening would blow them up).
RELATIVE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class EmbeddingConfig:
    """How the users × items matrix is weighted and factorised."""

    dim: int = 64                    # SVD components (vectors have dim + 1 coordinates)
    view_weight: float = 1.0         # a request from a publisher
    impression_weight: float = 0.25  # an impression of a creative
    click_weight: float = 4.0        # a click, on the creative and on its publisher
    idf: bool = True                 # weight items by log(users / users who engaged)
    whiten: bool = True              # divide factors by the singular values
    evidence: float = 0.5            # factor scale = ‖weighted row‖ ** evidence (0: none)
    min_users_per_item: int = 2      # rarer items carry no co-engagement
    n_iter: int = 7                  # power iterations of the randomized SVD
    seed: int = 7

    def __post_init__(self) -> None:
        def bad(msg: str) -> AudienceError:
            return AudienceError(f"EmbeddingConfig: {msg}")

        if self.dim < 1:
            raise bad(f"dim must be >= 1, got {self.dim}")
        for name in ("view_weight", "impression_weight", "click_weight"):
            if getattr(self, name) < 0:
                raise bad(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.view_weight + self.impression_weight + self.click_weight <= 0:
            raise bad("at least one event weight must be positive")
        if not 0.0 <= self.evidence <= 1.0:
            raise bad(f"evidence must be in [0, 1], got {self.evidence}")
        if self.min_users_per_item < 1 or self.n_iter < 0:
            raise bad("min_users_per_item must be >= 1 and n_iter >= 0")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EmbeddingConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Interactions:
    """A users × items matrix of weighted engagement counts (CSR, rows sorted by user id)."""

    user_ids: np.ndarray            # object, sorted
    item_ids: np.ndarray            # object, sorted
    matrix: sp.csr_matrix           # float64 weighted counts
    as_of: datetime | None          # latest event time read; None for an empty log

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.user_ids), len(self.item_ids))


@dataclass(frozen=True)
class UserEmbeddings:
    """Unit-length user vectors (the last coordinate is the residual, see the module doc)."""

    user_ids: np.ndarray            # object, sorted
    vectors: np.ndarray             # float32 (users, dim + 1)
    background: np.ndarray          # float32 (dim + 1,): mean vector, residual set to 0
    item_ids: np.ndarray            # object
    item_vectors: np.ndarray        # float32 (items, dim): right singular vectors
    singular_values: np.ndarray     # float64 (dim,)
    as_of: datetime | None          # latest event time the embeddings saw
    config: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    seconds: float = 0.0

    @property
    def dim(self) -> int:
        """Coordinates per vector (``config.dim + 1``)."""
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.user_ids)

    def lookup(self, user_ids: list[str]) -> np.ndarray:
        """Rows of ``user_ids`` (-1 for a user without an embedding)."""
        wanted = np.asarray(user_ids, dtype=object)
        if len(self.user_ids) == 0:
            return np.full(len(wanted), -1, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.user_ids, wanted), 0, len(self.user_ids) - 1)
        return np.where(self.user_ids[pos] == wanted, pos, -1).astype(np.int64)

    def save(self, path: Path) -> Path:
        """Write the vectors and their metadata to one ``.npz`` file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"as_of": self.as_of.isoformat() if self.as_of else None,
                "config": self.config.to_json(), "seconds": self.seconds}
        with path.open("wb") as fh:
            np.savez(fh, user_ids=self.user_ids.astype(str), vectors=self.vectors,
                     background=self.background, item_ids=self.item_ids.astype(str),
                     item_vectors=self.item_vectors, singular_values=self.singular_values,
                     meta=np.asarray(json.dumps(meta)))
        return path

    @classmethod
    def load(cls, path: Path) -> UserEmbeddings:
        if not path.exists():
            raise AudienceError(f"{path}: no embeddings; run `adplatform audience build` first")
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return cls(user_ids=z["user_ids"].astype(object), vectors=z["vectors"],
                       background=z["background"], item_ids=z["item_ids"].astype(object),
                       item_vectors=z["item_vectors"], singular_values=z["singular_values"],
                       as_of=datetime.fromisoformat(meta["as_of"]) if meta["as_of"] else None,
                       config=EmbeddingConfig.from_json(meta["config"]),
                       seconds=float(meta["seconds"]))


def _read(events: Path, table: str, columns: list[str]) -> pa.Table:
    """Only ``columns`` of an event table (the whole log), with the schema's types."""
    schema = SCHEMAS[table]
    files = sorted((events / table).glob("date=*/*.parquet"))
    if not files:
        return schema.empty_table().select(columns)
    return ds.dataset([str(f) for f in files], schema=schema,
                      format="parquet").to_table(columns=columns)


def _latest(tables: list[pa.Table]) -> datetime | None:
    stamps = [pc.max(t.column("ts")).as_py() for t in tables if t.num_rows]
    stamps = [t for t in stamps if t is not None]
    return max(stamps) if stamps else None


def _edges(events: Path, config: EmbeddingConfig) -> tuple[pd.DataFrame, datetime | None]:
    """(user_id, item, weight) rows of every engagement, and the latest event time."""
    parts: list[tuple[pa.Array, str, pa.Array, float]] = []   # users, prefix, ids, weight
    read: list[pa.Table] = []
    if config.view_weight > 0:
        req = _read(events, "requests", ["ts", "user_id", "publisher_id"])
        read.append(req)
        parts.append((req["user_id"], PUB_PREFIX, req["publisher_id"], config.view_weight))
    imp = _read(events, "impressions", ["ts", "request_id", "imp_id", "user_id",
                                        "creative_id", "publisher_id"])
    read.append(imp)
    if config.impression_weight > 0:
        parts.append((imp["user_id"], AD_PREFIX, imp["creative_id"], config.impression_weight))
    if config.click_weight > 0:
        clk = _read(events, "clicks", ["ts", "request_id", "imp_id", "user_id", "creative_id"])
        read.append(clk)
        shown = clk.join(imp.select(["request_id", "imp_id", "publisher_id"]),
                         keys=["request_id", "imp_id"], join_type="inner")
        parts.append((clk["user_id"], AD_PREFIX, clk["creative_id"], config.click_weight))
        parts.append((shown["user_id"], PUB_PREFIX, shown["publisher_id"], config.click_weight))
    frames = [pd.DataFrame({"user_id": users.to_numpy(), "item": ids.to_numpy(),
                            "prefix": prefix, "weight": w})
              for users, prefix, ids, w in parts]
    edges = (pd.concat(frames, ignore_index=True) if frames else
             pd.DataFrame({"user_id": [], "item": [], "prefix": [], "weight": []}))
    keep = (edges["user_id"].notna() & (edges["user_id"] != "") & edges["item"].notna()
            & (edges["item"] != ""))
    edges = edges[keep]
    edges = edges.assign(item=edges["prefix"] + edges["item"]).drop(columns="prefix")
    return edges, _latest(read)


def interactions(events: Path, config: EmbeddingConfig | None = None) -> Interactions:
    """The weighted users × items matrix of the event log under ``events``."""
    config = config or EmbeddingConfig()
    edges, as_of = _edges(events, config)
    u, users = pd.factorize(edges["user_id"], sort=True)
    i, items = pd.factorize(edges["item"], sort=True)
    matrix = sp.csr_matrix((edges["weight"].to_numpy(dtype=np.float64), (u, i)),
                           shape=(len(users), len(items)))
    matrix.sum_duplicates()
    return Interactions(np.asarray(users, dtype=object), np.asarray(items, dtype=object),
                        matrix, as_of)


def weight(inter: Interactions, config: EmbeddingConfig) -> sp.csr_matrix:
    """Dampened (``log1p``), idf-weighted counts; columns of too-rare items zeroed."""
    x = inter.matrix.copy()
    x.data = np.log1p(x.data)
    df = np.bincount(x.indices, minlength=inter.shape[1]).astype(np.float64)
    col = np.where(df >= config.min_users_per_item, 1.0, 0.0)
    if config.idf:
        col *= np.log((1.0 + inter.shape[0]) / (1.0 + df)) + 1.0
    x = sp.csr_matrix(x @ sp.diags(col))
    x.eliminate_zeros()
    return x


def _row_norms(x: sp.csr_matrix) -> np.ndarray:
    return np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())


def _truncated_svd(x: sp.csr_matrix, k: int, config: EmbeddingConfig
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` singular values and right singular vectors (``k × items``) of ``x``.

    With few items the exact answer comes from the items × items Gram matrix (one
    sparse product and a small symmetric eigendecomposition); with many, from a seeded
    randomized SVD. Signs are fixed so the largest loading of each vector is positive.
    """
    if x.shape[1] <= GRAM_MAX_ITEMS:
        gram = np.asarray((x.T @ x).toarray())
        evals, evecs = np.linalg.eigh(gram)
        order = np.argsort(-evals, kind="stable")[:k]
        s = np.sqrt(np.clip(evals[order], 0.0, None))
        vt = evecs[:, order].T
    else:
        _, s, vt = randomized_svd(x, n_components=k, n_iter=config.n_iter,
                                  random_state=config.seed)
    pivot = np.argmax(np.abs(vt), axis=1)
    signs = np.sign(vt[np.arange(len(vt)), pivot])
    return s, vt * np.where(signs == 0, 1.0, signs)[:, None]


def embed(inter: Interactions, config: EmbeddingConfig | None = None) -> UserEmbeddings:
    """Factorise the interaction matrix into unit-length user vectors (see the module doc)."""
    config = config or EmbeddingConfig()
    started = time.perf_counter()
    n_users, n_items = inter.shape
    if n_users == 0 or n_items == 0:
        raise AudienceError("no user engagement in the event log: nothing to embed")
    x = weight(inter, config)
    norms = _row_norms(x)
    safe = np.where(norms > 0, norms, 1.0)
    unit = sp.csr_matrix(sp.diags(1.0 / safe) @ x)
    k = min(config.dim, n_items - 1, n_users - 1)
    if k < 1:
        raise AudienceError(f"too little data to embed: {n_users} users x {n_items} items")
    s, vt = _truncated_svd(unit, k, config)
    keep = s > s[0] * RELATIVE_TOLERANCE if s.size and s[0] > 0 else np.zeros(k, dtype=bool)
    s, vt = np.where(keep, s, 0.0), vt * keep[:, None]
    factors = np.asarray(unit @ vt.T)                               # (users, k)
    if config.whiten:
        factors /= np.where(s > 0, s, 1.0)[None, :]
    factors *= (norms ** config.evidence)[:, None]
    lengths = np.linalg.norm(factors, axis=1)
    scale = float(lengths.max()) if lengths.size and lengths.max() > 0 else 1.0
    vectors = np.zeros((n_users, config.dim + 1), dtype=np.float64)
    vectors[:, :k] = factors / scale
    vectors[:, -1] = np.sqrt(np.clip(1.0 - (lengths / scale) ** 2, 0.0, None))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)      # exact unit length
    background = vectors.mean(axis=0)
    background[-1] = 0.0
    item_vectors = np.zeros((n_items, config.dim), dtype=np.float32)
    item_vectors[:, :k] = vt.T
    sv = np.zeros(config.dim)
    sv[:k] = s
    seconds = time.perf_counter() - started
    log.info("embedded %d users x %d items into %d dims in %.2fs", n_users, n_items, k, seconds)
    return UserEmbeddings(user_ids=inter.user_ids, vectors=vectors.astype(np.float32),
                          background=background.astype(np.float32), item_ids=inter.item_ids,
                          item_vectors=item_vectors, singular_values=sv, as_of=inter.as_of,
                          config=config, seconds=seconds)


def build_embeddings(events: Path, config: EmbeddingConfig | None = None) -> UserEmbeddings:
    """Read the event log under ``events`` and embed its users."""
    config = config or EmbeddingConfig()
    started = time.perf_counter()
    emb = embed(interactions(events, config), config)
    return replace(emb, seconds=time.perf_counter() - started)


__all__ = ["AD_PREFIX", "PUB_PREFIX", "EmbeddingConfig", "Interactions", "UserEmbeddings",
           "build_embeddings", "embed", "interactions", "weight"]

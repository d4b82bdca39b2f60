"""The user-embedding vector index in Milvus: a Milvus Lite file by default, a server by URI.

The alias ``user_embeddings`` names the current collection, ``user_embeddings__v<N>``:
each build fills a new collection and then switches the alias, so searches never see a
half-built index. A collection holds ``user_id`` (VARCHAR primary key) and ``vector``
(FLOAT_VECTOR, ``dim + 1`` coordinates, unit length), indexed FLAT with the COSINE
metric by default; IVF_FLAT and HNSW (which need ``faiss-cpu`` in Milvus Lite) and
AUTOINDEX (a server's choice) are configuration. Build metadata the lookalike search
needs — the population's mean vector, the time of the data, the embedding config —
travels with the collection as a collection property, so a Milvus server serves any
process, not only the workspace that built it.

Where the index lives: ``milvus_uri`` in settings (``ADPLATFORM_MILVUS_URI``) when set
— ``http://host:19530`` for a server, or a ``.db`` file path for Milvus Lite — else
``<workspace>/milvus/audience.db``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from adplatform.config import Settings
from features.audience.embeddings import EmbeddingConfig, UserEmbeddings
from features.audience.errors import AudienceError, IndexUnavailable

if TYPE_CHECKING:
    from pymilvus import MilvusClient

log = logging.getLogger(__name__)

DEFAULT_COLLECTION = "user_embeddings"
META_PROPERTY = "adplatform.audience"
ID_FIELD = "user_id"
VECTOR_FIELD = "vector"
MAX_ID_LENGTH = 256
#: A Milvus server answers at most this many hits per search; more are paged by iterator.
MAX_TOPK = 16_384
Metric = Literal["COSINE", "IP"]
IndexType = Literal["FLAT", "IVF_FLAT", "HNSW", "AUTOINDEX"]


def milvus_uri(settings: Settings) -> str:
    """The configured Milvus URI, or the workspace's Milvus Lite file."""
    configured = getattr(settings, "milvus_uri", None)
    if configured:
        return str(configured)
    return str(lite_path(settings))


def lite_path(settings: Settings) -> Path:
    return settings.workspace.root / "milvus" / "audience.db"


def is_lite(uri: str) -> bool:
    """Milvus Lite URIs are local file paths (``*.db``); servers are ``http(s)://``/``tcp://``."""
    return "://" not in uri


@dataclass(frozen=True)
class IndexConfig:
    """Where and how the user vectors are indexed."""

    uri: str
    token: str = ""                          # server auth ("user:password" or an API key)
    collection: str = DEFAULT_COLLECTION
    metric: Metric = "COSINE"
    index_type: IndexType = "FLAT"
    nlist: int = 128                         # IVF_FLAT clusters
    nprobe: int = 16                         # IVF_FLAT clusters searched
    batch_size: int = 10_000                 # rows per insert
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.uri:
            raise AudienceError("IndexConfig.uri is empty")
        if self.batch_size < 1 or self.nlist < 1 or self.nprobe < 1:
            raise AudienceError("IndexConfig: batch_size, nlist and nprobe must be >= 1")

    @classmethod
    def from_settings(cls, settings: Settings, uri: str | None = None,
                      **overrides: Any) -> IndexConfig:
        token = getattr(settings, "milvus_token", None) or ""
        return cls(uri=uri or milvus_uri(settings), token=str(token), **overrides)


@dataclass(frozen=True)
class IndexMeta:
    """What a lookalike search needs to know about the vectors in the collection."""

    dim: int
    count: int
    background: np.ndarray                   # float32 (dim,): mean vector, residual 0
    as_of: datetime | None
    built_at: datetime
    config: EmbeddingConfig

    def to_json(self) -> str:
        return json.dumps({
            "dim": self.dim, "count": self.count,
            "background": [float(v) for v in self.background],
            "as_of": self.as_of.isoformat() if self.as_of else None,
            "built_at": self.built_at.isoformat(), "config": self.config.to_json()})

    @classmethod
    def from_json(cls, text: str) -> IndexMeta:
        d = json.loads(text)
        return cls(dim=int(d["dim"]), count=int(d["count"]),
                   background=np.asarray(d["background"], dtype=np.float32),
                   as_of=datetime.fromisoformat(d["as_of"]) if d["as_of"] else None,
                   built_at=datetime.fromisoformat(d["built_at"]),
                   config=EmbeddingConfig.from_json(d["config"]))


@dataclass(frozen=True)
class Hit:
    user_id: str
    score: float


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


class AudienceIndex:
    """A connection to the user-embedding collection. Use as a context manager."""

    def __init__(self, config: IndexConfig) -> None:
        self.config = config
        self._client: MilvusClient | None = None

    @classmethod
    def open(cls, settings: Settings, uri: str | None = None, **overrides: Any) -> AudienceIndex:
        return cls(IndexConfig.from_settings(settings, uri, **overrides))

    @property
    def client(self) -> MilvusClient:
        if self._client is None:
            from pymilvus import MilvusClient

            uri = self.config.uri
            if is_lite(uri):
                Path(uri).expanduser().parent.mkdir(parents=True, exist_ok=True)
            from pymilvus.exceptions import MilvusException

            try:
                self._client = MilvusClient(uri=uri, token=self.config.token,
                                            timeout=self.config.connect_timeout_s)
            except MilvusException as exc:
                raise IndexUnavailable(f"cannot open Milvus at {uri}: {exc.message}") from exc
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> AudienceIndex:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- building -------------------------------------------------------------------

    def _versions(self) -> dict[int, str]:
        """The physical collections behind the alias: ``<collection>__v<N>`` by N."""
        pattern = re.compile(rf"{re.escape(self.config.collection)}__v(\d+)")
        out: dict[int, str] = {}
        for name in self.client.list_collections():
            m = pattern.fullmatch(name)
            if m:
                out[int(m.group(1))] = name
        return out

    def rebuild(self, emb: UserEmbeddings) -> IndexMeta:
        """Index ``emb``'s vectors in a new collection, then point the alias at it.

        Searches keep answering from the previous collection until the switch (blue/green);
        the previous collection is dropped after it.
        """
        from pymilvus import DataType, MilvusClient

        if len(emb) == 0:
            raise AudienceError("no user embeddings to index")
        too_long = [u for u in emb.user_ids if len(u) > MAX_ID_LENGTH]
        if too_long:
            raise AudienceError(f"{len(too_long)} user ids longer than {MAX_ID_LENGTH} "
                                f"characters, e.g. {too_long[0][:40]!r}...")
        started = time.perf_counter()
        c, alias = self.client, self.config.collection
        meta = IndexMeta(dim=emb.dim, count=len(emb), background=emb.background,
                         as_of=emb.as_of, built_at=datetime.now().astimezone(),
                         config=emb.config)
        old = self._versions()
        name = f"{alias}__v{max(old, default=0) + 1}"
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(ID_FIELD, DataType.VARCHAR, is_primary=True, max_length=MAX_ID_LENGTH)
        schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=emb.dim)
        c.create_collection(name, schema=schema, properties={META_PROPERTY: meta.to_json()})
        params = c.prepare_index_params()
        extra = {"nlist": self.config.nlist} if self.config.index_type == "IVF_FLAT" else {}
        params.add_index(field_name=VECTOR_FIELD, index_type=self.config.index_type,
                         metric_type=self.config.metric, params=extra)
        # Milvus Lite builds indexes synchronously and has no AllocTimestamp to wait on.
        c.create_index(name, params, sync=not is_lite(self.config.uri))
        ids, vectors = emb.user_ids, emb.vectors
        for part in _batches(len(ids), self.config.batch_size):
            rows = [{ID_FIELD: u, VECTOR_FIELD: v}
                    for u, v in zip(ids[part].tolist(), vectors[part].tolist(), strict=True)]
            c.insert(name, rows)
        c.flush(name)
        c.load_collection(name)
        aliased = [v for v in old.values() if alias in c.list_aliases(v).get("aliases", [])]
        if aliased:
            c.alter_alias(name, alias)
        else:
            if alias in c.list_collections():      # a plain collection by that name
                c.drop_collection(alias)
            c.create_alias(name, alias)
        for previous in old.values():
            c.drop_collection(previous)
        log.info("indexed %d user vectors (dim %d) in %s/%s (alias %s) in %.2fs", len(ids),
                 emb.dim, self.config.uri, name, alias, time.perf_counter() - started)
        return meta

    # -- reading --------------------------------------------------------------------

    def _ready(self) -> MilvusClient:
        c, name = self.client, self.config.collection
        if not c.has_collection(name):
            raise AudienceError(f"no collection {name!r} at {self.config.uri}; "
                                "run `adplatform audience build` first")
        c.load_collection(name)
        return c

    def meta(self) -> IndexMeta:
        c = self._ready()
        props = c.describe_collection(self.config.collection).get("properties") or {}
        text = props.get(META_PROPERTY)
        if not text:
            raise AudienceError(f"collection {self.config.collection!r} has no "
                                f"{META_PROPERTY!r} property: not built by adplatform")
        return IndexMeta.from_json(str(text))

    def count(self) -> int:
        c = self._ready()
        rows = c.query(self.config.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def vectors(self, user_ids: Sequence[str], *, chunk: int = 1_000) -> dict[str, np.ndarray]:
        """Stored vectors of those ``user_ids`` that are indexed (the others are absent)."""
        c = self._ready()
        wanted = list(dict.fromkeys(user_ids))
        out: dict[str, np.ndarray] = {}
        for part in _batches(len(wanted), chunk):
            rows = c.get(self.config.collection, ids=wanted[part],
                         output_fields=[ID_FIELD, VECTOR_FIELD])
            for row in rows:
                out[str(row[ID_FIELD])] = np.asarray(row[VECTOR_FIELD], dtype=np.float32)
        return out

    def search(self, query: np.ndarray, limit: int, *,
               exclude: frozenset[str] = frozenset()) -> list[Hit]:
        """The ``limit`` users nearest ``query``, best first, never one in ``exclude``."""
        if limit < 1:
            raise AudienceError(f"search limit must be >= 1, got {limit}")
        c = self._ready()
        # Ask for enough extra hits that dropping the excluded users still leaves `limit`.
        want = limit + len(exclude)
        data = [np.asarray(query, dtype=np.float32).tolist()]
        params: dict[str, Any] = {"metric_type": self.config.metric}
        if self.config.index_type == "IVF_FLAT":
            params["params"] = {"nprobe": self.config.nprobe}
        hits: list[Hit] = []
        if want <= MAX_TOPK:
            result = c.search(self.config.collection, data=data, limit=want,
                              output_fields=[ID_FIELD], search_params=params)
            raw = list(result[0])
        else:
            raw = []
            it = c.search_iterator(self.config.collection, data=data, batch_size=5_000,
                                   limit=want, output_fields=[ID_FIELD],
                                   search_params=params)
            try:
                while batch := it.next():
                    raw.extend(batch)
            finally:
                it.close()
        for h in raw:
            uid = str(h["entity"][ID_FIELD]) if "entity" in h else str(h[ID_FIELD])
            if uid not in exclude:
                hits.append(Hit(uid, float(h["distance"])))
            if len(hits) == limit:
                break
        return hits


__all__ = ["DEFAULT_COLLECTION", "MAX_TOPK", "AudienceIndex", "Hit", "IndexConfig",
           "IndexMeta", "is_lite", "lite_path", "milvus_uri"]

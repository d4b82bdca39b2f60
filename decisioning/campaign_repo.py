"""Where campaigns are kept and edited: a JSON/YAML file or a PostgreSQL table.

:class:`CampaignRepository` is what the ``adplatform campaign`` commands edit;
:class:`PostgresCampaignStore` is the decision engine's store over the PostgreSQL
repository (the same interface as :class:`~decisioning.campaigns.FileCampaignStore`:
``candidates``, ``reserve``, ``reload``, ``reload_if_changed``, ``len``, iteration).

PostgreSQL layout (``schema`` default ``adplatform``; created on first use)::

    <schema>.campaigns(campaign_id text primary key, doc jsonb, status text,
                       version bigint, updated_at timestamptz)

``doc`` is the validated campaign (:class:`~decisioning.campaigns.Campaign`) as JSON;
``version`` comes from ``<schema>.campaign_version`` on every write, so
``max(version)`` and ``count(*)`` tell a store whether to reload. Creative ids are
unique across campaigns (checked on create/update, under a table lock).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from decisioning.budget import BudgetLedger
from decisioning.campaigns import (
    DEFAULT_CONVERSION_RATE,
    Campaign,
    CampaignFile,
    IndexedCampaignStore,
    load_campaigns,
    validate_campaign,
)
from decisioning.errors import CampaignError
from decisioning.pacing import Pacer

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
STATUSES = ("active", "paused", "ended")


@runtime_checkable
class CampaignRepository(Protocol):
    def list(self) -> list[Campaign]: ...

    def get(self, campaign_id: str) -> Campaign: ...

    def create(self, campaign: Campaign) -> Campaign: ...

    def update(self, campaign_id: str, changes: Mapping[str, Any]) -> Campaign:
        """Merge ``changes`` (top-level fields) into the campaign and validate it."""
        ...


def _merged(current: Campaign, changes: Mapping[str, Any]) -> Campaign:
    if "campaign_id" in changes and changes["campaign_id"] != current.campaign_id:
        raise CampaignError(f"campaign {current.campaign_id!r}: campaign_id cannot change")
    doc = current.model_dump(mode="json")
    doc.update(changes)
    return validate_campaign(doc, f"campaign {current.campaign_id!r}")


class FileCampaignRepository:
    """Edits a campaign file in place (validated as a whole, replaced atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def _read(self) -> CampaignFile:
        if not self.path.exists():
            return CampaignFile(version=1, campaigns=[])
        return load_campaigns(self.path)

    def _write(self, campaigns: list[Campaign]) -> None:
        try:
            doc = CampaignFile(version=1, campaigns=campaigns)
        except ValueError as exc:
            raise CampaignError(f"{self.path}: {exc}") from None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(doc.model_dump(mode="json"), indent=2)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".campaigns-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def list(self) -> list[Campaign]:
        return list(self._read().campaigns)

    def get(self, campaign_id: str) -> Campaign:
        for c in self._read().campaigns:
            if c.campaign_id == campaign_id:
                return c
        raise CampaignError(f"{self.path}: no campaign {campaign_id!r}")

    def create(self, campaign: Campaign) -> Campaign:
        with self._lock:
            current = list(self._read().campaigns)
            if any(c.campaign_id == campaign.campaign_id for c in current):
                raise CampaignError(f"{self.path}: campaign {campaign.campaign_id!r} exists")
            self._write([*current, campaign])
        return campaign

    def update(self, campaign_id: str, changes: Mapping[str, Any]) -> Campaign:
        with self._lock:
            current = list(self._read().campaigns)
            for i, c in enumerate(current):
                if c.campaign_id == campaign_id:
                    current[i] = _merged(c, changes)
                    self._write(current)
                    return current[i]
        raise CampaignError(f"{self.path}: no campaign {campaign_id!r}")


class PostgresCampaignRepository:
    """Campaigns in ``<schema>.campaigns``; one short connection per call."""

    def __init__(self, dsn: str, *, schema: str = "adplatform") -> None:
        if not _IDENT.match(schema):
            raise CampaignError(f"schema name {schema!r} must match {_IDENT.pattern}")
        self.dsn, self.schema = dsn, schema
        self._ready = False

    def _connect(self) -> Any:
        import psycopg

        try:
            conn = psycopg.connect(self.dsn, connect_timeout=5)
        except psycopg.OperationalError as exc:
            raise CampaignError(f"PostgreSQL {self.dsn}: cannot connect: {exc}") from exc
        if not self._ready:
            with conn.transaction():
                s = self.schema
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
                conn.execute(f"CREATE SEQUENCE IF NOT EXISTS {s}.campaign_version")
                conn.execute(f"""CREATE TABLE IF NOT EXISTS {s}.campaigns (
                    campaign_id text PRIMARY KEY, doc jsonb NOT NULL, status text NOT NULL,
                    version bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())""")
            self._ready = True
        return conn

    def list(self) -> list[Campaign]:
        with self._connect() as conn:
            rows = conn.execute(f"SELECT campaign_id, doc FROM {self.schema}.campaigns "
                                "ORDER BY campaign_id").fetchall()
        return [validate_campaign(doc, f"{self.schema}.campaigns[{cid!r}]") for cid, doc in rows]

    def version(self) -> tuple[int, int]:
        """(highest write version, number of campaigns): changes whenever a row does."""
        with self._connect() as conn:
            row = conn.execute(f"SELECT coalesce(max(version), 0), count(*) "
                               f"FROM {self.schema}.campaigns").fetchone()
        return int(row[0]), int(row[1])

    def get(self, campaign_id: str) -> Campaign:
        with self._connect() as conn:
            row = conn.execute(f"SELECT doc FROM {self.schema}.campaigns WHERE campaign_id = %s",
                               (campaign_id,)).fetchone()
        if row is None:
            raise CampaignError(f"{self.schema}.campaigns: no campaign {campaign_id!r}")
        return validate_campaign(row[0], f"{self.schema}.campaigns[{campaign_id!r}]")

    def _check_creatives(self, conn: Any, campaign: Campaign) -> None:
        ids = [cr.creative_id for cr in campaign.creatives]
        if len(set(ids)) != len(ids):
            raise CampaignError(f"campaign {campaign.campaign_id!r}: duplicate creative_id")
        clash = conn.execute(
            f"SELECT c.campaign_id, cr->>'creative_id' FROM {self.schema}.campaigns c, "
            "jsonb_array_elements(c.doc->'creatives') cr "
            "WHERE cr->>'creative_id' = ANY(%s) AND c.campaign_id <> %s LIMIT 1",
            (ids, campaign.campaign_id)).fetchone()
        if clash is not None:
            raise CampaignError(f"creative_id {clash[1]!r} is already used by campaign "
                                f"{clash[0]!r}")

    def _save(self, campaign: Campaign, *, insert: bool) -> Campaign:
        from psycopg.types.json import Jsonb

        s = self.schema
        with self._connect() as conn, conn.transaction():
            conn.execute(f"LOCK TABLE {s}.campaigns IN SHARE ROW EXCLUSIVE MODE")
            self._check_creatives(conn, campaign)
            doc = Jsonb(campaign.model_dump(mode="json"))
            if insert:
                done = conn.execute(
                    f"INSERT INTO {s}.campaigns (campaign_id, doc, status, version) VALUES "
                    f"(%s, %s, %s, nextval('{s}.campaign_version')) "
                    "ON CONFLICT (campaign_id) DO NOTHING",
                    (campaign.campaign_id, doc, campaign.status)).rowcount
                if not done:
                    raise CampaignError(f"{s}.campaigns: campaign {campaign.campaign_id!r} "
                                        "exists")
            else:
                conn.execute(
                    f"UPDATE {s}.campaigns SET doc = %s, status = %s, updated_at = now(), "
                    f"version = nextval('{s}.campaign_version') WHERE campaign_id = %s",
                    (doc, campaign.status, campaign.campaign_id))
        return campaign

    def create(self, campaign: Campaign) -> Campaign:
        return self._save(campaign, insert=True)

    def update(self, campaign_id: str, changes: Mapping[str, Any]) -> Campaign:
        return self._save(_merged(self.get(campaign_id), changes), insert=False)

    def drop(self) -> None:
        """Drop the schema and everything in it (tests)."""
        with self._connect() as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
            conn.commit()
        self._ready = False


class PostgresCampaignStore(IndexedCampaignStore):
    """The engine's campaign store over :class:`PostgresCampaignRepository`.

    Loads every campaign at start; :meth:`reload_if_changed` (or the watcher thread
    from :meth:`~decisioning.campaigns.IndexedCampaignStore.watch`) swaps in a new index
    when a row changed. A failed reload keeps the current campaigns.
    """

    def __init__(self, repo: PostgresCampaignRepository, *, ledger: BudgetLedger | None = None,
                 conversion_rate: float = DEFAULT_CONVERSION_RATE,
                 pacer: Pacer | None = None) -> None:
        self.repo = repo
        self._version = (-1, -1)
        super().__init__((), ledger=ledger, conversion_rate=conversion_rate, pacer=pacer)
        self.reload()

    def reload(self) -> None:
        version = self.repo.version()
        campaigns = self.repo.list()
        try:
            CampaignFile(version=1, campaigns=campaigns)     # ids unique across rows
        except ValueError as exc:
            raise CampaignError(f"{self.repo.schema}.campaigns: {exc}") from None
        self.replace(campaigns)
        self._version = version

    def reload_if_changed(self) -> bool:
        if self.repo.version() == self._version:
            return False
        self.reload()
        return True


__all__ = ["STATUSES", "CampaignRepository", "FileCampaignRepository",
           "PostgresCampaignRepository", "PostgresCampaignStore"]

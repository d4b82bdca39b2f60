"""Campaigns, their file format, and candidate selection for an imp.

The file (JSON, or YAML by suffix) is what the simulator writes to
``<workspace>/world/campaigns.json``::

    {"version": 1, "campaigns": [{"campaign_id": "c01", "advertiser": "Acme Shoes",
      "adomain": ["acmeshoes.example"], "cat": ["IAB18"], "goal": "cpc", "cpc": 0.8,
      "cpa": null, "daily_budget": 2000.0, "status": "active",
      "targeting": {"countries": [], "device_types": [], "domains": [], "formats": [],
                    "segments": []},
      "creatives": [{"creative_id": "cr01a", "format": "banner", "w": 300, "h": 250,
                     "topic": 3, "cat": ["IAB18"], "adm": "<a href=...>...</a>"}]}]}

Unknown keys are errors (a typo must not silently widen targeting); empty targeting
lists mean no restriction. :class:`IndexedCampaignStore` precomputes an index by
(format, w, h) and every per-creative check that does not depend on the request, so a
lookup costs O(candidates), not O(campaigns).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from decisioning.budget import BudgetLedger, InMemoryBudgetLedger, to_micros
from decisioning.errors import CampaignError
from decisioning.openrtb import BidRequest, Imp, error_path
from decisioning.pacing import Pacer
from decisioning.request_context import RequestFacts, domain_keys
from features.context import AdRef

logger = logging.getLogger(__name__)

AdFormat = Literal["banner", "video", "native", "audio"]

#: P(conversion | click) used to value CPA campaigns until a conversion model exists.
DEFAULT_CONVERSION_RATE = 0.05


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Targeting(_Strict):
    countries: list[str] = Field(default_factory=list)      # device/user geo.country
    device_types: list[int] = Field(default_factory=list)   # OpenRTB devicetype
    domains: list[str] = Field(default_factory=list)        # site domain / app bundle
    formats: list[AdFormat] = Field(default_factory=list)
    segments: list[str] = Field(default_factory=list)       # user.data[].segment[].id


class Creative(_Strict):
    creative_id: str = Field(min_length=1)
    format: AdFormat
    w: int = Field(default=0, ge=0)
    h: int = Field(default=0, ge=0)
    topic: int = Field(default=-1, ge=-1)
    cat: list[str] = Field(default_factory=list)
    adm: str = ""

    @model_validator(mode="after")
    def _sized_banner(self) -> Creative:
        if self.format == "banner" and not (self.w and self.h):
            raise ValueError("a banner creative needs w and h > 0")
        return self


class Campaign(_Strict):
    campaign_id: str = Field(min_length=1)
    advertiser: str = ""
    adomain: list[str] = Field(min_length=1)
    cat: list[str] = Field(default_factory=list)
    goal: Literal["cpc", "cpa"]
    cpc: float | None = Field(default=None, gt=0)
    cpa: float | None = Field(default=None, gt=0)
    daily_budget: float | None = Field(default=None, ge=0)   # None: unlimited
    frequency_cap: int | None = Field(default=None, ge=1)    # impressions/user/day
    status: Literal["active", "paused", "ended"] = "active"
    targeting: Targeting = Field(default_factory=Targeting)
    creatives: list[Creative] = Field(min_length=1)

    @model_validator(mode="after")
    def _goal_price(self) -> Campaign:
        if self.goal == "cpc" and self.cpc is None:
            raise ValueError("goal 'cpc' needs a cpc > 0")
        if self.goal == "cpa" and self.cpa is None:
            raise ValueError("goal 'cpa' needs a cpa > 0")
        return self

    def value_per_click(self, conversion_rate: float) -> float:
        """CPM value of one unit of pCTR: cpc × 1000, or p_conv × cpa × 1000."""
        if self.goal == "cpc":
            return (self.cpc or 0.0) * 1000.0
        return conversion_rate * (self.cpa or 0.0) * 1000.0


class CampaignFile(_Strict):
    version: Literal[1]
    campaigns: list[Campaign]

    @model_validator(mode="after")
    def _unique_ids(self) -> CampaignFile:
        seen_c: set[str] = set()
        seen_cr: set[str] = set()
        for c in self.campaigns:
            if c.campaign_id in seen_c:
                raise ValueError(f"duplicate campaign_id {c.campaign_id!r}")
            seen_c.add(c.campaign_id)
            for cr in c.creatives:
                if cr.creative_id in seen_cr:
                    raise ValueError(f"duplicate creative_id {cr.creative_id!r}")
                seen_cr.add(cr.creative_id)
        return self


def _parse(path: Path, text: str) -> object:
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CampaignError(f"{path}: malformed YAML: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CampaignError(f"{path}: malformed JSON: {exc}") from exc


def load_campaigns(path: Path) -> CampaignFile:
    """Read and validate a campaign file; :class:`CampaignError` names file and field."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CampaignError(f"{path}: campaign file not found") from None
    except OSError as exc:
        raise CampaignError(f"{path}: cannot read campaign file: {exc}") from exc
    data = _parse(path, text)
    try:
        return CampaignFile.model_validate(data)
    except ValidationError as exc:
        raise CampaignError(f"{path}: invalid campaign file: {describe_errors(exc)}") from None


def describe_errors(exc: ValidationError, limit: int = 5) -> str:
    """``"campaigns[0].cpc: Input should be greater than 0; ..."`` (first ``limit``)."""
    errs = exc.errors(include_url=False, include_context=False)
    lines = [f"{error_path(e['loc']) or '<root>'}: {e['msg']}" for e in errs[:limit]]
    more = f" (and {len(errs) - limit} more)" if len(errs) > limit else ""
    return "; ".join(lines) + more


def validate_campaign(data: object, where: str = "campaign") -> Campaign:
    """A :class:`Campaign` from a mapping; :class:`CampaignError` names each bad field."""
    try:
        return Campaign.model_validate(data)
    except ValidationError as exc:
        raise CampaignError(f"{where}: invalid campaign: {describe_errors(exc)}") from None


# --------------------------------------------------------------------------- selection


def _cat_keys(cats: Iterable[str]) -> frozenset[str]:
    """Categories and their IAB tier-1 parents, upper-cased: IAB18-3 → {IAB18-3, IAB18}."""
    out: set[str] = set()
    for c in cats:
        u = c.strip().upper()
        out.add(u)
        out.add(u.split("-", 1)[0])
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Blocklist:
    """A request's blocked categories (``bcat``) and advertiser domains (``badv``)."""

    bcat: frozenset[str] = frozenset()
    badv: frozenset[str] = frozenset()

    @classmethod
    def from_request(cls, req: BidRequest) -> Blocklist:
        if not req.bcat and not req.badv:
            return _NO_BLOCKS
        bcat = frozenset(c.strip().upper() for c in req.bcat or ())
        badv = frozenset(k for d in req.badv or () for k in domain_keys(d))
        return cls(bcat, badv)


_NO_BLOCKS = Blocklist()


@dataclass(frozen=True, slots=True)
class Candidate:
    """One (campaign, creative) that may bid on an imp."""

    campaign: Campaign
    creative: Creative
    ad: AdRef
    adomain: tuple[str, ...]
    cat: tuple[str, ...]            # campaign and creative categories
    value_per_click: float          # CPM value of pCTR = 1 (see Campaign.value_per_click)


@dataclass(frozen=True, slots=True)
class _Entry:
    candidate: Candidate
    campaign_id: str
    budget_micros: int | None
    cat_keys: frozenset[str]
    adomain_keys: frozenset[str]
    countries: frozenset[str] | None
    device_types: frozenset[int] | None
    domains: frozenset[str] | None
    segments: frozenset[str] | None

    def eligible(self, facts: RequestFacts, blocks: Blocklist) -> bool:
        if blocks.bcat and not blocks.bcat.isdisjoint(self.cat_keys):
            return False
        if blocks.badv and not blocks.badv.isdisjoint(self.adomain_keys):
            return False
        if self.countries is not None and facts.country.upper() not in self.countries:
            return False
        if self.device_types is not None and facts.device_type not in self.device_types:
            return False
        if self.domains is not None and self.domains.isdisjoint(facts.domain_keys):
            return False
        # Segment targeting needs user data: never matches an unpersonalised request.
        return self.segments is None or not self.segments.isdisjoint(facts.segments)


def _entry(c: Campaign, cr: Creative, conversion_rate: float) -> _Entry:
    t = c.targeting
    cats = tuple(dict.fromkeys([*c.cat, *cr.cat]))
    cand = Candidate(campaign=c, creative=cr,
                     ad=AdRef(campaign_id=c.campaign_id, creative_id=cr.creative_id,
                              topic=cr.topic),
                     adomain=tuple(c.adomain), cat=cats,
                     value_per_click=c.value_per_click(conversion_rate))
    domains = frozenset(k for d in t.domains for k in domain_keys(d)) if t.domains else None
    return _Entry(
        candidate=cand, campaign_id=c.campaign_id,
        budget_micros=None if c.daily_budget is None else to_micros(c.daily_budget),
        cat_keys=_cat_keys(cats),
        adomain_keys=frozenset(k for d in c.adomain for k in domain_keys(d)),
        countries=frozenset(x.upper() for x in t.countries) if t.countries else None,
        device_types=frozenset(t.device_types) if t.device_types else None,
        domains=domains,
        segments=frozenset(t.segments) if t.segments else None,
    )


@dataclass(frozen=True, slots=True)
class _Index:
    campaigns: tuple[Campaign, ...]
    sized: dict[tuple[str, int, int], tuple[_Entry, ...]]   # (format, w, h) -> entries
    any_size: dict[str, tuple[_Entry, ...]]                 # unsized creatives by format
    by_format: dict[str, tuple[_Entry, ...]]                # all creatives by format
    budgets: dict[str, int | None]                          # campaign -> daily budget µ$


def _build_index(campaigns: Sequence[Campaign], conversion_rate: float) -> _Index:
    sized: dict[tuple[str, int, int], list[_Entry]] = {}
    any_size: dict[str, list[_Entry]] = {}
    by_format: dict[str, list[_Entry]] = {}
    for c in sorted(campaigns, key=lambda c: -c.value_per_click(conversion_rate)):
        if c.status != "active":
            continue
        formats = set(c.targeting.formats)
        for cr in c.creatives:
            if formats and cr.format not in formats:
                continue
            e = _entry(c, cr, conversion_rate)
            by_format.setdefault(cr.format, []).append(e)
            if cr.w and cr.h:
                sized.setdefault((cr.format, cr.w, cr.h), []).append(e)
            else:
                any_size.setdefault(cr.format, []).append(e)
    budgets = {c.campaign_id: None if c.daily_budget is None else to_micros(c.daily_budget)
               for c in campaigns}
    return _Index(tuple(campaigns), {k: tuple(v) for k, v in sized.items()},
                  {k: tuple(v) for k, v in any_size.items()},
                  {k: tuple(v) for k, v in by_format.items()}, budgets)


@runtime_checkable
class CampaignStore(Protocol):
    """Where the engine finds candidates and records spend."""

    def candidates(self, imp: Imp, facts: RequestFacts, blocks: Blocklist, day: date,
                   limit: int, *, now: datetime | None = None) -> list[Candidate]:
        """Active, size-matching, targeted, unblocked, in-budget (and, given ``now``,
        paced) ads; at most ``limit``."""
        ...

    def reserve(self, campaign_id: str, key: str, amount_micros: int, day: date, *,
                spend: bool = False) -> bool:
        """Reserve (or spend, with ``spend``) within the campaign's daily budget."""
        ...

    def release(self, campaign_id: str, key: str) -> None:
        """Drop a reservation (a bid that was not sent after all)."""
        ...

    def record_spend(self, campaign_id: str, amount: float, day: date) -> None: ...

    def __len__(self) -> int: ...


class IndexedCampaignStore:
    """Campaigns held in memory with a (format, w, h) index; thread-safe for reads.

    Within a bucket entries are ordered by value per click (highest first), so when more
    than ``limit`` ads match, the most valuable ones are kept.
    """

    def __init__(self, campaigns: Sequence[Campaign] | CampaignFile = (), *,
                 ledger: BudgetLedger | None = None,
                 conversion_rate: float = DEFAULT_CONVERSION_RATE,
                 pacer: Pacer | None = None) -> None:
        self.ledger: BudgetLedger = ledger if ledger is not None else InMemoryBudgetLedger()
        self.pacer = pacer
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._conversion_rate = conversion_rate
        self._index = _build_index((), conversion_rate)
        self.replace(campaigns.campaigns if isinstance(campaigns, CampaignFile) else campaigns)

    def replace(self, campaigns: Sequence[Campaign]) -> None:
        """Swap in a new campaign set (readers see the old or the new index, never a mix)."""
        self._index = _build_index(campaigns, self._conversion_rate)

    @property
    def campaigns(self) -> tuple[Campaign, ...]:
        return self._index.campaigns

    def __len__(self) -> int:
        return len(self._index.campaigns)

    def __iter__(self) -> Iterator[Campaign]:
        return iter(self._index.campaigns)

    @staticmethod
    def _buckets(index: _Index, imp: Imp) -> Iterator[tuple[_Entry, ...]]:
        if imp.banner is not None:
            for w, h in imp.banner.sizes():
                yield index.sized.get(("banner", w, h), ())
        video = imp.video
        if video is not None:
            if video.w and video.h:
                yield index.sized.get(("video", video.w, video.h), ())
                yield index.any_size.get("video", ())
            else:
                yield index.by_format.get("video", ())
        if imp.audio is not None:
            yield index.by_format.get("audio", ())
        if imp.native is not None:
            yield index.by_format.get("native", ())

    def candidates(self, imp: Imp, facts: RequestFacts, blocks: Blocklist, day: date,
                   limit: int, *, now: datetime | None = None) -> list[Candidate]:
        out: list[Candidate] = []
        committed = self.ledger.committed_micros
        pacer = self.pacer if now is not None else None
        # Per campaign, once per imp: may it bid (budget left, and the pacer's draw)?
        # A campaign has several creatives per slot; its ledger is read once for all.
        allowed: dict[str, bool] = {}
        for bucket in self._buckets(self._index, imp):
            for e in bucket:
                if not e.eligible(facts, blocks):
                    continue
                budget = e.budget_micros
                if budget is not None:
                    ok = allowed.get(e.campaign_id)
                    if ok is None:
                        spent = committed(e.campaign_id, day)
                        ok = spent < budget and (pacer is None or now is None
                                                 or pacer.allow(spent, budget, now))
                        allowed[e.campaign_id] = ok
                    if not ok:
                        continue
                out.append(e.candidate)
                if len(out) >= limit:
                    return out
        return out

    def budget_micros(self, campaign_id: str) -> int | None:
        """The campaign's daily budget in micro-dollars (None: unlimited or unknown)."""
        return self._index.budgets.get(campaign_id)

    def reserve(self, campaign_id: str, key: str, amount_micros: int, day: date, *,
                spend: bool = False) -> bool:
        return self.ledger.reserve(campaign_id, key, amount_micros, day,
                                   budget_micros=self._index.budgets.get(campaign_id),
                                   spend=spend)

    def release(self, campaign_id: str, key: str) -> None:
        self.ledger.release(campaign_id, key)

    def record_spend(self, campaign_id: str, amount: float, day: date) -> None:
        self.ledger.charge(campaign_id, amount, day)

    def reload_if_changed(self) -> bool:
        """Reload when the source changed (stores with a source override this)."""
        return False

    def watch(self, interval_s: float = 5.0) -> None:
        """Call :meth:`reload_if_changed` every ``interval_s`` in a daemon thread, so
        edits (``adplatform campaign ...``) reach a running service; a failed reload
        keeps the current campaigns and is logged."""
        def run() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.reload_if_changed()
                except CampaignError as exc:
                    logger.warning("campaign reload failed (keeping the current ones): %s",
                                   exc)

        if self._watcher is None:
            self._watcher = threading.Thread(target=run, name="campaign-watch", daemon=True)
            self._watcher.start()

    def close(self) -> None:
        """Stop the watcher, then close the ledger."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self.ledger.close()


class FileCampaignStore(IndexedCampaignStore):
    """An :class:`IndexedCampaignStore` read from a JSON/YAML file, reloadable."""

    def __init__(self, path: Path, *, ledger: BudgetLedger | None = None,
                 conversion_rate: float = DEFAULT_CONVERSION_RATE,
                 pacer: Pacer | None = None) -> None:
        self.path = Path(path)
        self._mtime_ns = 0
        super().__init__((), ledger=ledger, conversion_rate=conversion_rate, pacer=pacer)
        self.reload()

    def reload(self) -> None:
        """Re-read the file; on error the current campaigns stay and the error is raised."""
        mtime = self.path.stat().st_mtime_ns if self.path.exists() else 0
        self.replace(load_campaigns(self.path).campaigns)
        self._mtime_ns = mtime

    def reload_if_changed(self) -> bool:
        """Reload when the file's mtime moved; returns whether it reloaded."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            raise CampaignError(f"{self.path}: campaign file not found") from None
        if mtime == self._mtime_ns:
            return False
        self.reload()
        return True


__all__ = [
    "DEFAULT_CONVERSION_RATE", "Blocklist", "Campaign", "CampaignFile", "CampaignStore",
    "Candidate", "Creative", "FileCampaignStore", "IndexedCampaignStore", "Targeting",
    "describe_errors", "load_campaigns", "validate_campaign",
]

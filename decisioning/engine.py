"""The per-auction decision engine: a plain object with injected dependencies.

For each imp of a request::

    candidates (campaign store) → features (featurizer; defaults if the store is down)
    → scores (model backend) → value = pCTR × value per click (CPM)
    → price (BidPricer) → keep prices ≥ floor → best value (or explore) → bid

Every (request id, imp id) gets exactly one :class:`DecisionRecord`, bid or no-bid with
its reason (see :data:`NO_BID_REASONS`). Past the budget (``tmax − margin_ms`` from
``received_at``) every imp answers no-bid, reason ``"deadline"``. A failing dependency
degrades (defaults, or a no-bid) and is counted in :meth:`DecisionEngine.stats`; it never
raises out of :meth:`DecisionEngine.decide`.

``decide`` does no I/O of its own (the sink buffers; its writer runs in a thread), so
its cost is CPU plus whatever the featurizer and backend do.
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from itertools import count
from urllib.parse import quote

import numpy as np

from adplatform.errors import ConfigError
from decisioning.campaigns import Blocklist, CampaignStore, Candidate
from decisioning.clock import Clock, SystemClock
from decisioning.decision_log import DecisionRecord, DecisionSink
from decisioning.openrtb import BidRequest, Imp
from decisioning.openrtb_response import Bid, BidResponse, SeatBid
from decisioning.pricing import BidPricer, ShadeFactorPricer
from decisioning.request_context import RequestFacts, imp_context, request_facts
from features.context import AdRef, RequestContext
from features.errors import StoreUnavailable
from features.featurizer import AuctionFeaturizer
from serving.base import AuctionInputs, ModelBackend
from serving.errors import ServingError

logger = logging.getLogger(__name__)

#: Every reason a decision record can carry besides "bid".
NO_BID_REASONS = (
    "deadline",             # past tmax − margin
    "currency",             # we cannot bid in any currency the request allows / floor currency
    "private_auction",      # pmp.private_auction = 1 and we hold no deals
    "no_candidates",        # nothing matches format, size, targeting, blocks, budget
    "features_error",       # the featurizer failed and so did its defaults
    "model_unavailable",    # the backend raised ServingError (down, timeout)
    "model_error",          # the backend failed otherwise or returned the wrong shape
    "fraud",                # P(invalid traffic) ≥ fraud_threshold
    "below_floor",          # no candidate's price reaches the floor
)

_MTYPE = {"banner": 1, "video": 2, "audio": 3, "native": 4}
_LOG_EVERY_S = 10.0


@dataclass
class EngineConfig:
    margin_ms: float = 10.0             # answer this long before tmax
    default_tmax_ms: int = 100          # when the request has no tmax
    shade_factor: float = 0.7           # the pre-shading-model pricing policy
    exploration_share: float = 0.0      # ε: share of bids on a random eligible candidate
    max_candidates: int = 20
    notice_base_url: str | None = None  # nurl/burl/lurl base; None: no notice URLs
    currency: str = "USD"
    fx_rates: Mapping[str, float] = field(default_factory=dict)  # 1 X = rate × currency
    fraud_threshold: float | None = 0.5  # no bid when P(IVT) ≥ this; None: ignore fraud
    seat: str | None = None
    variant: str = "default"
    feature_service: str = ""           # logged when the featurizer names none
    seed: int | None = None             # exploration RNG seed

    def __post_init__(self) -> None:
        checks = [
            (self.margin_ms >= 0, "margin_ms must be >= 0"),
            (self.default_tmax_ms > 0, "default_tmax_ms must be > 0"),
            (0.0 < self.shade_factor <= 1.0, "shade_factor must be in (0, 1]"),
            (0.0 <= self.exploration_share < 1.0, "exploration_share must be in [0, 1)"),
            (self.max_candidates >= 1, "max_candidates must be >= 1"),
            (all(r > 0 for r in self.fx_rates.values()), "fx_rates must be > 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"EngineConfig: {msg}")


@dataclass(slots=True)
class _Outcome:
    imp_id: str
    reason: str
    candidate: Candidate | None = None
    price: float = 0.0
    pctr: float | None = None
    value: float | None = None
    propensity: float = 1.0
    model_version: str = ""
    feature_service: str = ""


class DecisionEngine:
    """Decides bids for OpenRTB requests. Thread-safe; holds no per-request state."""

    def __init__(self, *, featurizer: AuctionFeaturizer, models: ModelBackend,
                 campaigns: CampaignStore, sink: DecisionSink, clock: Clock | None = None,
                 config: EngineConfig | None = None, pricer: BidPricer | None = None) -> None:
        self.featurizer = featurizer
        self.models = models
        self.campaigns = campaigns
        self.sink = sink
        self.clock: Clock = clock or SystemClock()
        self.config = config or EngineConfig()
        self.pricer: BidPricer = pricer or ShadeFactorPricer(self.config.shade_factor)
        name = getattr(featurizer, "feature_service", None)
        self.feature_service = name if isinstance(name, str) and name else \
            self.config.feature_service
        self._rng = random.Random(self.config.seed)
        self._bid_prefix = secrets.token_hex(4) + "-"
        self._bid_seq = count(1)
        self._notices: dict[str, tuple[str, str, str]] = {}
        self._version_text: dict[tuple[tuple[str, str], ...], str] = {}
        self._lock = threading.Lock()
        self._stats: dict[str, int] = {}
        self._last_logged: dict[str, float] = {}

    # ------------------------------------------------------------------ public

    def decide(self, req: BidRequest, received_at: float) -> BidResponse | None:
        """Bid response for ``req``, or None for no bid on every imp.

        ``received_at`` is ``self.clock.monotonic()`` read when the request arrived.
        """
        clock, cfg = self.clock, self.config
        now = clock.now()
        tmax = req.tmax or cfg.default_tmax_ms
        deadline = received_at + max(0.0, tmax - cfg.margin_ms) / 1000.0
        facts = request_facts(req)
        blocks = Blocklist.from_request(req)
        currency_ok = not req.cur or cfg.currency in {c.upper() for c in req.cur}
        first_price = req.at != 2
        day = now.date()
        outcomes = [self._decide_imp(req, imp, facts, blocks, now, day, deadline,
                                     currency_ok, first_price) for imp in req.imp]
        end = clock.monotonic()
        late = end > deadline
        latency_ms = (end - received_at) * 1000.0
        policy, variant = self.pricer.policy, cfg.variant
        records: list[DecisionRecord] = []
        bids: list[Bid] = []
        for o in outcomes:
            if o.candidate is not None and late:
                o.reason, o.candidate, o.price = "deadline", None, 0.0
            cand = o.candidate
            if cand is not None:
                bids.append(self._bid(o, cand))
                self.campaigns.record_spend(cand.campaign.campaign_id, o.price / 1000.0, day)
            records.append(DecisionRecord(
                ts=now, request_id=req.id, imp_id=o.imp_id, bid=cand is not None,
                price=o.price, campaign_id=cand.campaign.campaign_id if cand else "",
                creative_id=cand.creative.creative_id if cand else "", reason=o.reason,
                pctr=o.pctr, value=o.value, propensity=o.propensity, policy=policy,
                variant=variant, model_version=o.model_version,
                feature_service=o.feature_service, latency_ms=latency_ms))
        self.sink.extend(records)
        self._count_outcomes(outcomes)
        if not bids:
            return None
        return BidResponse.model_construct(
            id=req.id, cur=cfg.currency,
            seatbid=[SeatBid.model_construct(bid=bids, seat=cfg.seat)])

    def stats(self) -> dict[str, int]:
        """Counters: ``requests``, ``decisions``, ``bids``, ``nobid.<reason>``,
        ``fallback.<kind>`` (``features_unavailable``, ``features_error``)."""
        with self._lock:
            return dict(self._stats)

    def readiness(self) -> dict[str, object]:
        """What ``/readyz`` reports; ``ready`` is False without campaigns or models."""
        problems: list[str] = []
        versions: dict[str, str] = {}
        try:
            versions = self.models.versions()
        except ServingError as exc:
            problems.append(f"models: {exc}")
        n = len(self.campaigns)
        if n == 0:
            problems.append("campaigns: none loaded")
        return {"ready": not problems, "campaigns": n, "models": versions,
                "feature_service": self.feature_service, "problems": problems}

    def close(self) -> None:
        """Flush and close the decision sink, then close the model backend."""
        try:
            self.sink.close()
        finally:
            self.models.close()

    # ------------------------------------------------------------------ per imp

    def _decide_imp(self, req: BidRequest, imp: Imp, facts: RequestFacts,
                    blocks: Blocklist, now: datetime, day: date, deadline: float,
                    currency_ok: bool, first_price: bool) -> _Outcome:
        cfg = self.config
        if self.clock.monotonic() > deadline:
            return _Outcome(imp.id, "deadline")
        floor = imp.bidfloor
        cur = imp.bidfloorcur.upper()
        if cur != cfg.currency and floor > 0:
            rate = cfg.fx_rates.get(cur)
            if rate is None:
                return _Outcome(imp.id, "currency")
            floor *= rate
        if not currency_ok:
            return _Outcome(imp.id, "currency")
        if imp.pmp is not None and imp.pmp.private_auction == 1:
            return _Outcome(imp.id, "private_auction")
        cands = self.campaigns.candidates(imp, facts, blocks, day, cfg.max_candidates)
        if not cands:
            return _Outcome(imp.id, "no_candidates")
        ctx = imp_context(facts, req.id, imp, now, bidfloor=floor)
        ads = [c.ad for c in cands]
        inputs, feature_service = self._inputs(ctx, ads)
        if inputs is None:
            return _Outcome(imp.id, "features_error", feature_service=feature_service)
        if self.clock.monotonic() > deadline:
            return _Outcome(imp.id, "deadline", feature_service=feature_service)
        try:
            scores = self.models.score(inputs)
        except ServingError as exc:
            self._log_limited("model_unavailable", "model backend unavailable: %s", exc)
            return _Outcome(imp.id, "model_unavailable", feature_service=feature_service)
        except Exception:  # noqa: BLE001 - a backend bug degrades to no-bid, logged below
            self._log_limited("model_error", "model backend failed", exc_info=True)
            return _Outcome(imp.id, "model_error", feature_service=feature_service)
        model_version = self._model_version(scores.versions)
        pctr = np.asarray(scores.pctr, dtype=np.float64).reshape(-1)
        if pctr.shape[0] != len(cands):
            self._log_limited("model_shape", "backend returned %d scores for %d candidates",
                              pctr.shape[0], len(cands))
            return _Outcome(imp.id, "model_error", model_version=model_version,
                            feature_service=feature_service)
        pctr = np.clip(np.nan_to_num(pctr, nan=0.0, posinf=0.0, neginf=0.0), 0.0, 1.0)
        values = pctr * np.fromiter((c.value_per_click for c in cands), np.float64, len(cands))
        best = int(np.argmax(values))
        if (cfg.fraud_threshold is not None and scores.fraud is not None
                and scores.fraud >= cfg.fraud_threshold):
            return _Outcome(imp.id, "fraud", pctr=float(pctr[best]), value=float(values[best]),
                            model_version=model_version, feature_service=feature_service)
        prices = np.asarray(self.pricer.price(values, ctx, scores, first_price=first_price),
                            dtype=np.float64)
        ok = np.flatnonzero((prices >= floor) & (prices > 0.0) & np.isfinite(prices))
        if ok.size == 0:
            return _Outcome(imp.id, "below_floor", pctr=float(pctr[best]),
                            value=float(values[best]), model_version=model_version,
                            feature_service=feature_service)
        best = int(ok[np.argmax(values[ok])])
        choice, propensity = best, 1.0
        eps = cfg.exploration_share
        if eps > 0.0:
            if ok.size > 1 and self._rng.random() < eps:
                choice = int(ok[self._rng.randrange(ok.size)])
            propensity = eps / ok.size + ((1.0 - eps) if choice == best else 0.0)
        return _Outcome(imp.id, "bid", candidate=cands[choice], price=float(prices[choice]),
                        pctr=float(pctr[choice]), value=float(values[choice]),
                        propensity=propensity, model_version=model_version,
                        feature_service=feature_service)

    def _inputs(self, ctx: RequestContext,
                ads: Sequence[AdRef]) -> tuple[AuctionInputs | None, str]:
        try:
            return self.featurizer.build(ctx, ads), self.feature_service
        except StoreUnavailable as exc:
            self._count("fallback.features_unavailable")
            self._log_limited("features_unavailable", "online store unavailable: %s", exc)
        except Exception:  # noqa: BLE001 - a featurizer bug degrades to defaults, logged
            self._count("fallback.features_error")
            self._log_limited("features_error", "featurizer failed", exc_info=True)
        try:
            return self.featurizer.defaults(ctx, ads), "defaults"
        except Exception:  # noqa: BLE001 - logged; the imp answers no-bid
            self._log_limited("features_defaults", "featurizer defaults failed",
                              exc_info=True)
            return None, "defaults"

    # ------------------------------------------------------------------ helpers

    def _bid(self, o: _Outcome, cand: Candidate) -> Bid:
        cr = cand.creative
        nurl, burl, lurl = self._notice_urls(cand) if self.config.notice_base_url else \
            (None, None, None)
        return Bid.model_construct(
            id=f"{self._bid_prefix}{next(self._bid_seq):x}", impid=o.imp_id, price=o.price,
            adid=cr.creative_id, crid=cr.creative_id, cid=cand.campaign.campaign_id,
            adomain=list(cand.adomain), cat=list(cand.cat) or None,
            w=cr.w or None, h=cr.h or None, adm=cr.adm or None, mtype=_MTYPE.get(cr.format),
            nurl=nurl, burl=burl, lurl=lurl)

    def _notice_urls(self, cand: Candidate) -> tuple[str, str, str]:
        """nurl / burl / lurl for a creative; the exchange substitutes the macros."""
        key = cand.creative.creative_id
        urls = self._notices.get(key)
        if urls is None:
            base = (self.config.notice_base_url or "").rstrip("/")
            q = (f"?id=${{AUCTION_ID}}&imp=${{AUCTION_IMP_ID}}&bid=${{AUCTION_BID_ID}}"
                 f"&cid={quote(cand.campaign.campaign_id, safe='')}&crid={quote(key, safe='')}")
            urls = (f"{base}/win{q}&price=${{AUCTION_PRICE}}&cur=${{AUCTION_CURRENCY}}",
                    f"{base}/bill{q}&price=${{AUCTION_PRICE}}&cur=${{AUCTION_CURRENCY}}",
                    f"{base}/loss{q}&loss=${{AUCTION_LOSS}}&mtw=${{AUCTION_MIN_TO_WIN}}")
            self._notices[key] = urls
        return urls

    def _model_version(self, versions: Mapping[str, str]) -> str:
        if not versions:
            try:
                versions = self.models.versions()
            except ServingError as exc:
                self._log_limited("model_versions", "model versions unavailable: %s", exc)
                return ""
        key = tuple(sorted(versions.items()))
        text = self._version_text.get(key)
        if text is None:
            text = self._version_text[key] = ",".join(f"{k}={v}" for k, v in key)
        return text

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] = self._stats.get(key, 0) + n

    def _count_outcomes(self, outcomes: Sequence[_Outcome]) -> None:
        with self._lock:
            s = self._stats
            s["requests"] = s.get("requests", 0) + 1
            s["decisions"] = s.get("decisions", 0) + len(outcomes)
            for o in outcomes:
                key = "bids" if o.candidate is not None else f"nobid.{o.reason}"
                s[key] = s.get(key, 0) + 1

    def _log_limited(self, key: str, msg: str, *args: object, exc_info: bool = False) -> None:
        """Log a dependency failure at most once per 10 s per kind (failures are counted)."""
        t = time.monotonic()
        with self._lock:
            if t - self._last_logged.get(key, -_LOG_EVERY_S) < _LOG_EVERY_S:
                return
            self._last_logged[key] = t
        logger.warning(msg, *args, exc_info=exc_info)


__all__ = ["NO_BID_REASONS", "DecisionEngine", "EngineConfig"]

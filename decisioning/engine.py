"""The per-auction decision engine: a plain object with injected dependencies.

For each request: past its budget already (it waited in the server queue)? → shed,
no-bid on every imp. Otherwise the experiment variant is drawn (alias set of models,
bidding policy, shadow), then for each imp::

    candidates (campaign store: targeting, budget, pacing) → frequency caps
    → features (featurizer; defaults if the store is down)
    → scores (the variant's backend; the fallback backend if it is down)
    → value = pCTR × value per click (CPM) → price (the variant's BidPricer)
    → keep prices ≥ floor → best value (or explore) → reserve budget → bid

Every (request id, imp id) gets exactly one :class:`DecisionRecord`, bid or no-bid with
its reason (see :data:`NO_BID_REASONS`). Past the budget (``tmax − margin_ms`` from
``received_at``) every imp answers no-bid, reason ``"deadline"`` — including a bid whose
budget reservation came back late. A failing dependency degrades (defaults, the
fallback backend, or a no-bid) and is counted in :meth:`DecisionEngine.stats`; it never
raises out of :meth:`DecisionEngine.decide`.

``decide`` does no disk I/O (the sink buffers). Network I/O happens only through the
injected featurizer, backend, a Redis budget ledger (one reservation per bid) and a
Redis frequency counter (one read per imp with capped candidates).
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
from typing import Literal

import numpy as np

from adplatform.errors import ConfigError
from decisioning.budget import BudgetUnavailable
from decisioning.campaigns import Blocklist, CampaignStore, Candidate
from decisioning.clock import Clock, SystemClock
from decisioning.decision_log import DecisionRecord, DecisionSink, StartableSink
from decisioning.experiments import Experiment, ShadowRunner, Variant
from decisioning.frequency import FrequencyCounter, FrequencyUnavailable
from decisioning.metrics import LatencyHistogram
from decisioning.notices import NoticeUrls
from decisioning.openrtb import BidRequest, Imp
from decisioning.openrtb_response import Bid, BidResponse, SeatBid, construct
from decisioning.pricing import BidPricer, ShadeFactorPricer
from decisioning.privacy import pseudonymise
from decisioning.request_context import RequestFacts, imp_context, request_facts
from features.context import AdRef, RequestContext
from features.errors import StoreUnavailable
from features.featurizer import AuctionFeaturizer
from serving.base import AuctionInputs, AuctionScores, ModelBackend
from serving.errors import ServingError

logger = logging.getLogger(__name__)

#: Every reason a decision record can carry besides "bid".
NO_BID_REASONS = (
    "deadline",             # past tmax − margin (on arrival: shed; or during the decision)
    "currency",             # we cannot bid in any currency the request allows / floor currency
    "private_auction",      # pmp.private_auction = 1 and we hold no deals
    "no_candidates",        # nothing matches format, size, targeting, blocks, budget, caps
    "features_error",       # the featurizer failed and so did its defaults
    "model_unavailable",    # the backend (and the fallback backend) raised ServingError
    "model_error",          # the backend failed otherwise or returned the wrong shape
    "fraud",                # P(invalid traffic) ≥ fraud_threshold
    "below_floor",          # no candidate's price reaches the floor
    "budget",               # the ledger refused the reservation (budget reached meanwhile)
    "budget_unavailable",   # the shared budget ledger is unreachable (fail closed)
)

_MTYPE = {"banner": 1, "video": 2, "audio": 3, "native": 4}
_LOG_EVERY_S = 10.0
_INF = float("inf")
DEFAULT_ALIAS_SET = "default"


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
    variant: str = "default"            # logged when no experiment runs
    feature_service: str = ""           # logged when the featurizer names none
    seed: int | None = None             # exploration RNG seed
    tcf_vendor_id: int | None = None    # our IAB TCF vendor id; None: purposes only
    id_salt: str = ""                   # key of pseudonymous user keys (same in all processes)
    # When spend is counted: "billing" (reserve at bid, settle on the billing notice),
    # "bid" (charge the bid price at once), "auto" (billing iff notice URLs are on).
    spend_on: Literal["auto", "bid", "billing"] = "auto"

    def __post_init__(self) -> None:
        checks = [
            (self.margin_ms >= 0, "margin_ms must be >= 0"),
            (self.default_tmax_ms > 0, "default_tmax_ms must be > 0"),
            (0.0 < self.shade_factor <= 1.0, "shade_factor must be in (0, 1]"),
            (0.0 <= self.exploration_share < 1.0, "exploration_share must be in [0, 1)"),
            (self.max_candidates >= 1, "max_candidates must be >= 1"),
            (all(r > 0 for r in self.fx_rates.values()), "fx_rates must be > 0"),
            (self.spend_on in ("auto", "bid", "billing"), "spend_on: auto | bid | billing"),
            (self.spend_on != "billing" or bool(self.notice_base_url),
             "spend_on='billing' needs notice_base_url (billing notices count the spend)"),
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
    policy: str = ""                    # the pricing policy applied; "" before pricing


@dataclass(slots=True)
class _ShadowJob:
    request_id: str
    imp_id: str
    ts: datetime
    received_at: float
    ctx: RequestContext
    inputs: AuctionInputs
    cands: list[Candidate]
    floor: float
    first_price: bool
    variant: Variant
    feature_service: str


class DecisionEngine:
    """Decides bids for OpenRTB requests. Thread-safe; holds no per-request state.

    ``models`` is the default backend (alias set ``"default"``); ``backends`` adds named
    alias sets (``{"champion": ..., "challenger": ...}``) that experiment variants pick.
    ``fallback_models`` scores when a variant's backend raises :class:`ServingError`.
    """

    def __init__(self, *, featurizer: AuctionFeaturizer, models: ModelBackend,
                 campaigns: CampaignStore, sink: DecisionSink, clock: Clock | None = None,
                 config: EngineConfig | None = None, pricer: BidPricer | None = None,
                 backends: Mapping[str, ModelBackend] | None = None,
                 fallback_models: ModelBackend | None = None,
                 experiment: Experiment | None = None,
                 shadow_sink: DecisionSink | None = None,
                 frequency: FrequencyCounter | None = None) -> None:
        self.featurizer = featurizer
        self.models = models
        self.campaigns = campaigns
        self.sink = sink
        self.clock: Clock = clock or SystemClock()
        self.config = cfg = config or EngineConfig()
        self.pricer: BidPricer = pricer or ShadeFactorPricer(cfg.shade_factor)
        self.backends: dict[str, ModelBackend] = {DEFAULT_ALIAS_SET: models, **(backends or {})}
        self.fallback_models = fallback_models
        self.experiment = experiment
        self.shadow_sink = shadow_sink
        self.frequency = frequency
        self._default_variant = Variant(cfg.variant)
        for v in experiment.variants if experiment else ():
            for alias in (v.models, v.shadow):
                if alias is not None and alias not in self.backends:
                    raise ConfigError(f"variant {v.name!r} names alias set {alias!r}; the "
                                      f"engine has {sorted(self.backends)}")
        self._shadow: ShadowRunner[_ShadowJob] | None = (
            ShadowRunner(self._run_shadow) if shadow_sink is not None else None)
        name = getattr(featurizer, "feature_service", None)
        self.feature_service = name if isinstance(name, str) and name else cfg.feature_service
        self._rng = random.Random(cfg.seed)
        self._bid_prefix = secrets.token_hex(6) + "-"
        self._bid_seq = count(1)
        self._urls = NoticeUrls(cfg.notice_base_url) if cfg.notice_base_url else None
        self._spend_at_bid = cfg.spend_on == "bid" or (cfg.spend_on == "auto"
                                                       and not cfg.notice_base_url)
        self._version_text: dict[tuple[tuple[str, str], ...], str] = {}
        self._lock = threading.Lock()
        self._stats: dict[str, int] = {}
        self._reserved: dict[str, int] = {}
        self._latency = LatencyHistogram()
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
        shed = clock.monotonic() > deadline
        facts = request_facts(req, vendor_id=cfg.tcf_vendor_id)
        variant = self._assign(req, facts)
        user_key = pseudonymise(facts.user_id, cfg.id_salt) \
            if facts.personalised and facts.user_id else ""
        shadows: list[_ShadowJob] = []
        if shed:
            outcomes = [_Outcome(imp.id, "deadline") for imp in req.imp]
        else:
            blocks = Blocklist.from_request(req)
            currency_ok = not req.cur or cfg.currency in {c.upper() for c in req.cur}
            first_price = req.at != 2
            outcomes = [self._decide_imp(req, imp, facts, blocks, now, deadline, currency_ok,
                                         first_price, variant, user_key, shadows)
                         for imp in req.imp]
        day = now.date()
        late = clock.monotonic() > deadline
        bids: list[Bid] = []
        for o in outcomes:
            if o.candidate is not None:
                bid = None if late else self._commit(o, o.candidate, day, deadline, user_key)
                if bid is None:
                    if late:
                        o.reason = "deadline"
                    o.candidate, o.price = None, 0.0
                else:
                    bids.append(bid)
        end = clock.monotonic()
        latency_ms = (end - received_at) * 1000.0
        policy = (variant.policy or self.pricer).policy
        self.sink.extend([DecisionRecord(
            ts=now, request_id=req.id, imp_id=o.imp_id, bid=o.candidate is not None,
            price=o.price, campaign_id=o.candidate.campaign.campaign_id if o.candidate else "",
            creative_id=o.candidate.creative.creative_id if o.candidate else "",
            reason=o.reason, pctr=o.pctr, value=o.value, propensity=o.propensity,
            policy=o.policy or policy, variant=variant.name, model_version=o.model_version,
            feature_service=o.feature_service, latency_ms=latency_ms) for o in outcomes])
        self._count_outcomes(outcomes, latency_ms / 1000.0, shed, facts.privacy)
        if shadows and self._shadow is not None:
            for job in shadows:
                if not self._shadow.submit(job):
                    self._count("shadow.dropped")
        if not bids:
            return None
        return construct(BidResponse, id=req.id, cur=cfg.currency,
                         seatbid=[construct(SeatBid, bid=bids, seat=cfg.seat)])

    def stats(self) -> dict[str, int]:
        """Counters: ``requests``, ``decisions``, ``bids``, ``nobid.<reason>``, ``shed``,
        ``fallback.<kind>`` (``features_unavailable``, ``features_error``,
        ``model_unavailable``, ``budget_unavailable``, ``frequency_unavailable``),
        ``privacy.<reason>`` (unpersonalised requests), ``shadow.dropped``."""
        with self._lock:
            return dict(self._stats)

    def latency(self) -> tuple[list[tuple[str, float]], float]:
        """The decision latency histogram: cumulative (le, count) buckets and the sum."""
        with self._lock:
            return self._latency.snapshot()

    def reserved_micros(self) -> dict[str, int]:
        """Budget reserved (or charged) at bid time by this engine, per campaign."""
        with self._lock:
            return dict(self._reserved)

    def readiness(self) -> dict[str, object]:
        """What ``/readyz`` reports; ``ready`` is False without campaigns or models."""
        problems: list[str] = []
        versions: dict[str, dict[str, str]] = {}
        for alias, backend in self.backends.items():
            try:
                versions[alias] = backend.versions()
            except ServingError as exc:
                problems.append(f"models: {exc}" if alias == DEFAULT_ALIAS_SET
                                else f"models[{alias}]: {exc}")
        n = len(self.campaigns)
        if n == 0:
            problems.append("campaigns: none loaded")
        return {"ready": not problems, "campaigns": n,
                "models": versions.get(DEFAULT_ALIAS_SET, {}),
                "backends": versions, "feature_service": self.feature_service,
                "problems": problems}

    def drain_shadow(self) -> None:
        """Wait until every submitted shadow job ran (tests, reports)."""
        if self._shadow is not None:
            self._shadow.drain()

    def start(self) -> None:
        """Start-up work the first auctions should not pay for: the log sinks' writer
        processes (:class:`~decisioning.decision_log.StartableSink`). The app's lifespan
        calls it before serving."""
        for sink in (self.sink, self.shadow_sink):
            if isinstance(sink, StartableSink):
                sink.start()

    def close(self) -> None:
        """Flush and close the sinks, then close backends and the campaign store."""
        closers = []
        if self._shadow is not None:
            closers.append(self._shadow.close)
        closers.append(self.sink.close)
        if self.shadow_sink is not None:
            closers.append(self.shadow_sink.close)
        seen: set[int] = set()
        for backend in (*self.backends.values(), self.fallback_models):
            if backend is not None and id(backend) not in seen:
                seen.add(id(backend))
                closers.append(backend.close)
        store_close = getattr(self.campaigns, "close", None)
        if callable(store_close):
            closers.append(store_close)
        errors: list[BaseException] = []
        for close in closers:
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - close the rest, then raise the first
                errors.append(exc)
        if errors:
            raise errors[0]

    # ------------------------------------------------------------------ per imp

    def _assign(self, req: BidRequest, facts: RequestFacts) -> Variant:
        if self.experiment is None:
            return self._default_variant
        unit = facts.user_id if facts.personalised and facts.user_id else f"req:{req.id}"
        return self.experiment.assign(unit)

    def _decide_imp(self, req: BidRequest, imp: Imp, facts: RequestFacts,
                    blocks: Blocklist, now: datetime, deadline: float, currency_ok: bool,
                    first_price: bool, variant: Variant, user_key: str,
                    shadows: list[_ShadowJob]) -> _Outcome:
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
        day = now.date()
        cands = self.campaigns.candidates(imp, facts, blocks, day, cfg.max_candidates, now=now)
        if cands and self.frequency is not None and user_key:
            cands = self._under_caps(cands, user_key, day)
        if not cands:
            return _Outcome(imp.id, "no_candidates")
        ctx = imp_context(facts, req.id, imp, now, bidfloor=floor)
        inputs, feature_service = self._inputs(ctx, [c.ad for c in cands])
        if inputs is None:
            return _Outcome(imp.id, "features_error", feature_service=feature_service)
        if self.clock.monotonic() > deadline:
            return _Outcome(imp.id, "deadline", feature_service=feature_service)
        scores, failure = self._score(self.backends[variant.models], inputs)
        if scores is None:
            return _Outcome(imp.id, failure, feature_service=feature_service)
        if variant.shadow is not None and self._shadow is not None:
            shadows.append(_ShadowJob(req.id, imp.id, now, self.clock.monotonic(), ctx, inputs,
                                      cands, floor, first_price, variant, feature_service))
        return self._evaluate(imp.id, scores, cands, ctx, floor, first_price,
                              variant.policy or self.pricer, feature_service,
                              explore=cfg.exploration_share)

    def _under_caps(self, cands: list[Candidate], user_key: str, day: date) -> list[Candidate]:
        capped = [c.campaign.campaign_id for c in cands if c.campaign.frequency_cap]
        if not capped or self.frequency is None:
            return cands
        try:
            seen = dict(zip(capped, self.frequency.counts(user_key, capped, day), strict=True))
        except FrequencyUnavailable as exc:
            self._count("fallback.frequency_unavailable")
            self._log_limited("frequency", "frequency counters unavailable: %s", exc)
            return [c for c in cands if not c.campaign.frequency_cap]
        return [c for c in cands if not c.campaign.frequency_cap
                or seen.get(c.campaign.campaign_id, 0) < c.campaign.frequency_cap]

    def _score(self, backend: ModelBackend,
               inputs: AuctionInputs) -> tuple[AuctionScores | None, str]:
        try:
            return backend.score(inputs), ""
        except ServingError as exc:
            self._log_limited("model_unavailable", "model backend unavailable: %s", exc)
            fallback = self.fallback_models
            if fallback is None or fallback is backend:
                return None, "model_unavailable"
        except Exception:  # noqa: BLE001 - a backend bug degrades to no-bid, logged here
            self._log_limited("model_error", "model backend failed", exc_info=True)
            return None, "model_error"
        self._count("fallback.model_unavailable")
        try:
            return fallback.score(inputs), ""
        except Exception:  # noqa: BLE001 - the fallback failing too is a no-bid, logged
            self._log_limited("model_fallback", "fallback backend failed", exc_info=True)
            return None, "model_unavailable"

    def _evaluate(self, imp_id: str, scores: AuctionScores, cands: Sequence[Candidate],
                  ctx: RequestContext, floor: float, first_price: bool, pricer: BidPricer,
                  feature_service: str, *, explore: float) -> _Outcome:
        model_version = self._model_version(scores.versions)
        raw = np.asarray(scores.pctr, dtype=np.float64).reshape(-1)
        n = len(cands)
        if raw.shape[0] != n:
            self._log_limited("model_shape", "backend returned %d scores for %d candidates",
                              raw.shape[0], n)
            return _Outcome(imp_id, "model_error", model_version=model_version,
                            feature_service=feature_service)
        # An auction has ~20 candidates: plain floats cost less than a numpy call per step
        # (the same IEEE operations, so the same results as the vectorised form).
        # Non-finite -> 0, then into [0, 1].
        pctr = [p if 0.0 <= p <= 1.0 else 1.0 if 1.0 < p < _INF else 0.0
                for p in raw.tolist()]
        values = [p * c.value_per_click for p, c in zip(pctr, cands, strict=True)]
        best = max(range(n), key=values.__getitem__)      # the first maximum, as argmax
        cfg = self.config
        if (cfg.fraud_threshold is not None and scores.fraud is not None
                and scores.fraud >= cfg.fraud_threshold):
            return _Outcome(imp_id, "fraud", pctr=pctr[best], value=values[best],
                            model_version=model_version, feature_service=feature_service)
        prices = np.asarray(pricer.price(np.array(values), ctx, scores,
                                         first_price=first_price),
                            dtype=np.float64).reshape(-1).tolist()
        policy = pricer.policy_for(scores, n)
        ok = [i for i, p in enumerate(prices) if floor <= p < _INF and p > 0.0]
        if not ok:
            return _Outcome(imp_id, "below_floor", pctr=pctr[best], value=values[best],
                            model_version=model_version, feature_service=feature_service,
                            policy=policy)
        best = max(ok, key=values.__getitem__)
        choice, propensity = best, 1.0
        if explore > 0.0:
            # ε-greedy over the eligible candidates: P(best) = 1 − ε + ε/n, others ε/n.
            if len(ok) > 1 and self._rng.random() < explore:
                choice = ok[self._rng.randrange(len(ok))]
            propensity = explore / len(ok) + ((1.0 - explore) if choice == best else 0.0)
        return _Outcome(imp_id, "bid", candidate=cands[choice], price=prices[choice],
                        pctr=pctr[choice], value=values[choice],
                        propensity=propensity, model_version=model_version,
                        feature_service=feature_service, policy=policy)

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

    # ------------------------------------------------------------------ bids

    def _commit(self, o: _Outcome, cand: Candidate, day: date, deadline: float,
                user_key: str) -> Bid | None:
        """Reserve (or charge) the bid's price; None (o.reason set) when it cannot bid."""
        bid_id = f"{self._bid_prefix}{next(self._bid_seq):x}"
        cid = cand.campaign.campaign_id
        amount = max(0, round(o.price * 1000.0))        # CPM → µ$ per impression
        if self._spend_at_bid or cand.campaign.daily_budget is not None:
            try:
                ok = self.campaigns.reserve(cid, bid_id, amount, day, spend=self._spend_at_bid)
            except BudgetUnavailable as exc:
                self._count("fallback.budget_unavailable")
                self._log_limited("budget", "budget ledger unavailable: %s", exc)
                o.reason = "budget_unavailable"
                return None
            if not ok:
                o.reason = "budget"
                return None
            if self.clock.monotonic() > deadline:
                o.reason = "deadline"
                self._release(cid, bid_id)
                return None
            with self._lock:
                self._reserved[cid] = self._reserved.get(cid, 0) + amount
        return self._bid(o, cand, bid_id, user_key)

    def _release(self, campaign_id: str, bid_id: str) -> None:
        if self._spend_at_bid:
            return                  # a charge at bid time is not taken back
        try:
            self.campaigns.release(campaign_id, bid_id)
        except BudgetUnavailable as exc:
            self._log_limited("release", "reservation not released (it expires): %s", exc)

    def _bid(self, o: _Outcome, cand: Candidate, bid_id: str, user_key: str) -> Bid:
        cr = cand.creative
        cid = cand.campaign.campaign_id
        nurl = burl = lurl = None
        if self._urls is not None:
            nurl, burl, lurl = self._urls.for_bid(cid, cr.creative_id, bid_id, user_key)
        return construct(
            Bid, id=bid_id, impid=o.imp_id, price=o.price,
            adid=cr.creative_id, crid=cr.creative_id, cid=cid,
            adomain=list(cand.adomain), cat=list(cand.cat) or None,
            w=cr.w or None, h=cr.h or None, adm=cr.adm or None, mtype=_MTYPE.get(cr.format),
            nurl=nurl, burl=burl, lurl=lurl)

    # ------------------------------------------------------------------ shadow

    def _run_shadow(self, job: _ShadowJob) -> None:
        """Score with the shadow alias set; log what it would have done (never bids)."""
        alias = job.variant.shadow or DEFAULT_ALIAS_SET
        scores, failure = self._score(self.backends[alias], job.inputs)
        if scores is None:
            o = _Outcome(job.imp_id, failure, feature_service=job.feature_service)
        else:
            o = self._evaluate(job.imp_id, scores, job.cands, job.ctx, job.floor,
                               job.first_price, job.variant.policy or self.pricer,
                               job.feature_service, explore=0.0)
        cand = o.candidate
        if self.shadow_sink is not None:
            self.shadow_sink.extend([DecisionRecord(
                ts=job.ts, request_id=job.request_id, imp_id=o.imp_id, bid=cand is not None,
                price=o.price, campaign_id=cand.campaign.campaign_id if cand else "",
                creative_id=cand.creative.creative_id if cand else "", reason=o.reason,
                pctr=o.pctr, value=o.value, propensity=1.0,
                policy=o.policy or (job.variant.policy or self.pricer).policy,
                variant=f"{job.variant.name}:shadow:{alias}", model_version=o.model_version,
                feature_service=o.feature_service,
                latency_ms=(self.clock.monotonic() - job.received_at) * 1000.0)])

    # ------------------------------------------------------------------ helpers

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

    def _count_outcomes(self, outcomes: Sequence[_Outcome], latency_s: float, shed: bool,
                        privacy: str) -> None:
        with self._lock:
            s = self._stats
            s["requests"] = s.get("requests", 0) + 1
            s["decisions"] = s.get("decisions", 0) + len(outcomes)
            for o in outcomes:
                key = "bids" if o.candidate is not None else f"nobid.{o.reason}"
                s[key] = s.get(key, 0) + 1
            if shed:
                s["shed"] = s.get("shed", 0) + 1
            if privacy != "ok":
                key = f"privacy.{privacy}"
                s[key] = s.get(key, 0) + 1
            self._latency.observe(latency_s)

    def _log_limited(self, key: str, msg: str, *args: object, exc_info: bool = False) -> None:
        """Log a dependency failure at most once per 10 s per kind (failures are counted)."""
        t = time.monotonic()
        with self._lock:
            if t - self._last_logged.get(key, -_LOG_EVERY_S) < _LOG_EVERY_S:
                return
            self._last_logged[key] = t
        logger.warning(msg, *args, exc_info=exc_info)


__all__ = ["DEFAULT_ALIAS_SET", "NO_BID_REASONS", "DecisionEngine", "EngineConfig"]

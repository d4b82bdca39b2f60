"""Prometheus metrics for the decision service, read from the engine and notice service.

Counters live in the engine (one lock, updated once per request) and are exposed by a
custom collector at scrape time, so the request path never touches prometheus_client::

    adplatform_bid_requests_total                      requests decided
    adplatform_decisions_total{outcome}                "bid" or the no-bid reason, per imp
    adplatform_fallbacks_total{kind}                   degraded dependency calls by reason
    adplatform_shed_total                              requests past their budget on arrival
    adplatform_unpersonalised_total{reason}            requests without personalisation
    adplatform_decision_latency_seconds                histogram, receive → decision
    adplatform_budget_reserved_micros_total{campaign}  reserved at bid time (this process)
    adplatform_budget_spent_micros_total{campaign}     settled by billing notices
    adplatform_notices_total{kind,result}              recorded | duplicate
    adplatform_notice_errors_total{kind}               invalid | unavailable | ...
    adplatform_shadow_dropped_total                    shadow jobs dropped (queue full)
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

if TYPE_CHECKING:
    from decisioning.engine import DecisionEngine
    from decisioning.notices import NoticeService

#: Upper bounds (seconds) of the latency histogram buckets.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class LatencyHistogram:
    """Bucket counts and a sum; not locked (the engine updates it under its lock)."""

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS_S) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)    # last: +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.buckets, seconds)] += 1
        self.total += seconds

    def snapshot(self) -> tuple[list[tuple[str, float]], float]:
        """Cumulative (le, count) pairs ending with +Inf, and the sum."""
        out: list[tuple[str, float]] = []
        acc = 0
        for le, n in zip([*map(str, self.buckets), "+Inf"], self.counts, strict=True):
            acc += n
            out.append((le, float(acc)))
        return out, self.total


class DecisionCollector:
    """A prometheus_client collector over an engine (and optionally notices)."""

    def __init__(self, engine: DecisionEngine, notices: NoticeService | None = None) -> None:
        self._engine = engine
        self._notices = notices

    def collect(self) -> Iterator[Metric]:
        stats = self._engine.stats()
        req = CounterMetricFamily("adplatform_bid_requests", "bid requests decided")
        req.add_metric([], stats.get("requests", 0))
        yield req
        dec = CounterMetricFamily("adplatform_decisions", "decisions by outcome",
                                  labels=["outcome"])
        fb = CounterMetricFamily("adplatform_fallbacks", "degraded dependency calls",
                                 labels=["kind"])
        priv = CounterMetricFamily("adplatform_unpersonalised",
                                   "requests not personalised, by privacy reason",
                                   labels=["reason"])
        dec.add_metric(["bid"], stats.get("bids", 0))
        for key, n in sorted(stats.items()):
            head, _, tail = key.partition(".")
            if head == "nobid":
                dec.add_metric([tail], n)
            elif head == "fallback":
                fb.add_metric([tail], n)
            elif head == "privacy":
                priv.add_metric([tail], n)
        yield dec
        yield fb
        yield priv
        shed = CounterMetricFamily("adplatform_shed", "requests past their budget on arrival")
        shed.add_metric([], stats.get("shed", 0))
        yield shed
        buckets, total = self._engine.latency()
        hist = HistogramMetricFamily("adplatform_decision_latency_seconds",
                                     "decision latency from receipt (engine clock)")
        hist.add_metric([], buckets, total)
        yield hist
        resv = CounterMetricFamily("adplatform_budget_reserved_micros",
                                   "budget reserved at bid time by this process, µ$",
                                   labels=["campaign"])
        for cid, n in sorted(self._engine.reserved_micros().items()):
            resv.add_metric([cid], n)
        yield resv
        shadow = CounterMetricFamily("adplatform_shadow_dropped", "shadow jobs dropped")
        shadow.add_metric([], stats.get("shadow.dropped", 0))
        yield shadow
        if self._notices is not None:
            yield from self._notice_metrics(self._notices)

    @staticmethod
    def _notice_metrics(notices: NoticeService) -> Iterator[Metric]:
        spent = CounterMetricFamily("adplatform_budget_spent_micros",
                                    "spend settled by billing notices in this process, µ$",
                                    labels=["campaign"])
        for cid, n in sorted(dict(notices.spend_micros).items()):
            spent.add_metric([cid], n)
        yield spent
        got = CounterMetricFamily("adplatform_notices", "notices by kind and result",
                                  labels=["kind", "result"])
        err = CounterMetricFamily("adplatform_notice_errors", "notices not applied",
                                  labels=["kind"])
        for key, n in sorted(notices.stats().items()):
            kind, _, result = key.partition(".")
            if result:
                got.add_metric([kind, result], n)
            else:
                err.add_metric([kind], n)
        yield got
        yield err


__all__ = ["LATENCY_BUCKETS_S", "DecisionCollector", "LatencyHistogram"]

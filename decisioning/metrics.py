"""Prometheus metrics for the decision service, read from the engine and notice service.

Counters live in the engine (one lock, updated once per request) and are exposed by a
custom collector at scrape time, so the request path never touches prometheus_client::

    adplatform_bid_requests_total                      requests decided
    adplatform_decisions_total{outcome}                "bid" or the no-bid reason, per imp
    adplatform_fallbacks_total{kind}                   degraded dependency calls by reason
    adplatform_shed_total                              requests past their budget on arrival
    adplatform_unpersonalised_total{reason}            requests without personalisation
    adplatform_decision_latency_seconds                histogram, receive → decision
    adplatform_budget_reserved_micros_total{campaign}  reserved at bid time
    adplatform_budget_spent_micros_total{campaign}     settled by billing notices
    adplatform_notices_total{kind,result}              recorded | duplicate
    adplatform_notice_errors_total{kind}               invalid | unavailable | ...
    adplatform_shadow_dropped_total                    shadow jobs dropped (queue full)

Served by several worker processes (``adplatform serve --workers N``), a scrape reaches
one of them: :class:`WorkerMetrics` makes its answer the sum over all workers.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

if TYPE_CHECKING:
    from decisioning.engine import DecisionEngine
    from decisioning.notices import NoticeService

log = logging.getLogger(__name__)

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


def metric_values(engine: DecisionEngine, notices: NoticeService | None = None
                  ) -> dict[str, Any]:
    """Every number the collector exposes, as plain JSON-able values (one process)."""
    buckets, total = engine.latency()
    return {"stats": engine.stats(), "latency": [[le, n] for le, n in buckets],
            "latency_sum": total, "reserved": engine.reserved_micros(),
            "spent": dict(notices.spend_micros) if notices is not None else {},
            "notices": notices.stats() if notices is not None else None}


def merge_values(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counters of several processes summed per label; histogram buckets summed per
    bound (cumulative counts add up); notices present if any part has them."""
    latency = {le: 0.0 for le in (*map(str, LATENCY_BUCKETS_S), "+Inf")}
    out: dict[str, Any] = {"stats": {}, "latency": latency, "latency_sum": 0.0,
                           "reserved": {}, "spent": {}, "notices": None}
    for part in parts:
        for key in ("stats", "reserved", "spent"):
            for name, n in part[key].items():
                out[key][name] = out[key].get(name, 0) + n
        for le, n in part["latency"]:
            out["latency"][le] = out["latency"].get(le, 0.0) + n
        out["latency_sum"] += part["latency_sum"]
        if part["notices"] is not None:
            merged = out["notices"] = out["notices"] or {}
            for name, n in part["notices"].items():
                merged[name] = merged.get(name, 0) + n
    out["latency"] = list(out["latency"].items())
    return out


class WorkerMetrics:
    """The metrics of worker processes serving one port, summed on every scrape.

    A scrape reaches one worker, so each worker publishes its values to
    ``folder/worker-<i>.json`` every ``interval_s`` (write, then rename: a reader never
    sees half a file) and its ``/metrics`` adds the other workers' files to its own live
    values: every scrape answers for the whole service, at most ``interval_s`` behind
    for the others. A replacement worker starts from its predecessor's last published
    values, so the service's counters do not fall when a worker is replaced (a SIGKILLed
    one loses at most its last ``interval_s``).
    """

    def __init__(self, folder: Path, index: int, *, interval_s: float = 1.0) -> None:
        self.folder, self.index, self.interval_s = Path(folder), index, interval_s
        self.folder.mkdir(parents=True, exist_ok=True)
        self._path = self.folder / f"worker-{index}.json"
        self._base = self._read(self._path) if self._path.exists() else None
        self._source: Callable[[], dict[str, Any]] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            return dict(json.loads(path.read_bytes()))
        except (OSError, ValueError) as exc:
            log.warning("worker metrics %s unreadable (left out): %s", path, exc)
            return None

    def own(self) -> dict[str, Any]:
        """This worker's values, its predecessor's last published ones included."""
        live = self._source() if self._source is not None else merge_values([])
        return merge_values([live, self._base]) if self._base is not None else live

    def others(self) -> list[dict[str, Any]]:
        found = (self._read(p) for p in sorted(self.folder.glob("worker-*.json"))
                 if p != self._path)
        return [v for v in found if v is not None]

    def publish(self) -> None:
        tmp = self._path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(json.dumps(self.own()).encode())
        tmp.replace(self._path)

    def start(self, source: Callable[[], dict[str, Any]]) -> None:
        """Publish ``source()`` every ``interval_s`` from a daemon thread."""
        self._source = source
        self._thread = threading.Thread(target=self._run, daemon=True, name="worker-metrics")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.publish()
            except OSError as exc:
                log.warning("worker metrics not published (retried): %s", exc)

    def close(self) -> None:
        """Stop publishing, after a last publish of the final values."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._source is not None:
            self.publish()


class DecisionCollector:
    """A prometheus_client collector over an engine (and optionally notices); with
    ``workers``, the sum over every worker process of the service."""

    def __init__(self, engine: DecisionEngine, notices: NoticeService | None = None,
                 workers: WorkerMetrics | None = None) -> None:
        self._engine = engine
        self._notices = notices
        self._workers = workers

    def values(self) -> dict[str, Any]:
        if self._workers is None:
            return metric_values(self._engine, self._notices)
        return merge_values([self._workers.own(), *self._workers.others()])

    def collect(self) -> Iterator[Metric]:
        v = self.values()
        stats = v["stats"]
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
        hist = HistogramMetricFamily("adplatform_decision_latency_seconds",
                                     "decision latency from receipt (engine clock)")
        hist.add_metric([], [(le, float(n)) for le, n in v["latency"]], v["latency_sum"])
        yield hist
        resv = CounterMetricFamily("adplatform_budget_reserved_micros",
                                   "budget reserved at bid time by this service, µ$",
                                   labels=["campaign"])
        for cid, n in sorted(v["reserved"].items()):
            resv.add_metric([cid], n)
        yield resv
        shadow = CounterMetricFamily("adplatform_shadow_dropped", "shadow jobs dropped")
        shadow.add_metric([], stats.get("shadow.dropped", 0))
        yield shadow
        if v["notices"] is not None:
            yield from self._notice_metrics(v["spent"], v["notices"])

    @staticmethod
    def _notice_metrics(spend: Mapping[str, int], counts: Mapping[str, int]
                        ) -> Iterator[Metric]:
        spent = CounterMetricFamily("adplatform_budget_spent_micros",
                                    "spend settled by billing notices in this service, µ$",
                                    labels=["campaign"])
        for cid, n in sorted(spend.items()):
            spent.add_metric([cid], n)
        yield spent
        got = CounterMetricFamily("adplatform_notices", "notices by kind and result",
                                  labels=["kind", "result"])
        err = CounterMetricFamily("adplatform_notice_errors", "notices not applied",
                                  labels=["kind"])
        for key, n in sorted(counts.items()):
            kind, _, result = key.partition(".")
            if result:
                got.add_metric([kind, result], n)
            else:
                err.add_metric([kind], n)
        yield got
        yield err


__all__ = ["LATENCY_BUCKETS_S", "DecisionCollector", "LatencyHistogram", "WorkerMetrics",
           "merge_values", "metric_values"]

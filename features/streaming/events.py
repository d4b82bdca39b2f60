"""The live events the streaming features count, their wire format, and the same events
read back from the event log (for the backfill).

An event is what the decision service and the exchange notifications know at the time:
a bid request it saw (``request``), an impression it won (``impression``), a click
(``click``), each with the request's ip and device and the ad's campaign. On the wire it
is one compact JSON object; ``ts`` is integer microseconds since the epoch, UTC.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

import orjson
import pandas as pd

from adplatform.eventlog import read_events
from features.streaming.errors import StreamingError

EventKind = Literal["request", "impression", "click"]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)

# Event fields besides kind and ts; all strings, "" when unknown.
KEY_FIELDS = ("request_id", "imp_id", "user_id", "campaign_id", "creative_id", "publisher_id",
              "ip", "device_id")


def to_us(ts: datetime) -> int:
    """Microseconds since the epoch of a timezone-aware datetime."""
    if ts.tzinfo is None:
        raise StreamingError(f"event time {ts!r} has no timezone; use UTC")
    delta = ts - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(ts_us: int) -> datetime:
    return datetime.fromtimestamp(ts_us // 1_000_000, tz=UTC).replace(microsecond=ts_us % 1_000_000)


@dataclass(frozen=True, slots=True)
class StreamEvent:
    kind: str
    ts_us: int
    request_id: str = ""
    imp_id: str = ""
    user_id: str = ""
    campaign_id: str = ""
    creative_id: str = ""
    publisher_id: str = ""
    ip: str = ""
    device_id: str = ""

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise StreamingError(f"unknown event kind {self.kind!r}; known: {', '.join(EVENT_KINDS)}")

    @classmethod
    def at(cls, kind: EventKind, ts: datetime, **fields: str) -> StreamEvent:
        """An event at a timezone-aware time: ``StreamEvent.at("click", now, ip=...)``."""
        return cls(kind=kind, ts_us=to_us(ts), **fields)

    @property
    def ts(self) -> datetime:
        return from_us(self.ts_us)

    def to_bytes(self) -> bytes:
        return orjson.dumps({k: v for k, v in asdict(self).items() if v != ""})

    @classmethod
    def from_bytes(cls, data: bytes) -> StreamEvent:
        try:
            raw: Any = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise StreamingError(f"event is not JSON: {data[:80]!r}") from exc
        if not isinstance(raw, dict) or "kind" not in raw or not isinstance(raw.get("ts_us"), int):
            raise StreamingError(f"event needs 'kind' and integer 'ts_us': {data[:80]!r}")
        unknown = set(raw) - {"kind", "ts_us", *KEY_FIELDS}
        if unknown:
            raise StreamingError(f"event has unknown fields {sorted(unknown)}")
        if not all(isinstance(raw.get(f, ""), str) for f in KEY_FIELDS):
            raise StreamingError(f"event key fields must be strings: {data[:80]!r}")
        return cls(**raw)


def log_events(events_dir: Path) -> pd.DataFrame:
    """Every request, impression and click of the event log as stream events.

    Columns: ``kind``, ``ts_us`` and :data:`KEY_FIELDS`; impressions and clicks get the
    ip and device of their request (the event log keeps those on the request only),
    exactly as the live publisher attaches them. Sorted by time (stable).
    """
    req = read_events(events_dir, "requests")
    imp = read_events(events_dir, "impressions")
    clk = read_events(events_dir, "clicks")
    where = req[["request_id", "imp_id", "ip", "device_id"]].drop_duplicates(["request_id", "imp_id"])
    parts = [req.assign(kind="request"),
             imp.merge(where, on=["request_id", "imp_id"], how="left").assign(kind="impression"),
             clk.merge(where, on=["request_id", "imp_id"], how="left").assign(kind="click")]
    frames = []
    for df in parts:
        out = pd.DataFrame({"kind": df["kind"].astype(str),
                            "ts_us": _ts_us(df["ts"]) if len(df) else pd.Series([], dtype="int64")})
        for f in KEY_FIELDS:
            out[f] = df[f].fillna("").astype(str) if f in df else ""
        frames.append(out)
    events = pd.concat(frames, ignore_index=True)
    return events.sort_values("ts_us", kind="stable").reset_index(drop=True)


def events_from_frame(df: pd.DataFrame) -> Iterator[StreamEvent]:
    """The rows of a :func:`log_events` frame as events, in order."""
    cols = [df[f].to_numpy(dtype=object) for f in KEY_FIELDS]
    kinds = df["kind"].to_numpy(dtype=object)
    times = df["ts_us"].to_numpy(dtype="int64")
    for i in range(len(df)):
        yield StreamEvent(kind=str(kinds[i]), ts_us=int(times[i]),
                          **{f: str(c[i]) for f, c in zip(KEY_FIELDS, cols, strict=True)})


def _ts_us(ts: pd.Series) -> pd.Series:
    return ts.dt.tz_convert("UTC").astype("datetime64[us, UTC]").astype("int64")


__all__ = ["EVENT_KINDS", "KEY_FIELDS", "EventKind", "StreamEvent", "events_from_frame",
           "from_us", "log_events", "to_us"]

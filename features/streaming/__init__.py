"""Streaming features: live windowed counters pushed to Feast's online store.

Events (bid requests, impressions, clicks) are published to an :class:`EventBus`
(in-process queue, NATS JetStream or Redis Streams); one :class:`StreamAggregator`
counts them into time-bucketed windows and pushes the changed keys, batched, through
Feast push sources. :func:`backfill_frames` computes the same windows from the event log
for the offline store, with the same code, so offline and online agree.

Views (see :mod:`features.streaming.definitions`)::

    ip_velocity              ip               ip_requests_5m, ip_clicks_5m
    device_velocity          device_id        device_requests_5m, device_clicks_5m
    user_campaign_frequency  user_id, campaign_id
                                              user_campaign_imps_today, user_campaign_clicks_today
"""

from features.streaming.aggregator import (
    AggregatorStats,
    FeastPushSink,
    PushSink,
    StreamAggregator,
    StreamClock,
)
from features.streaming.backfill import backfill_frames, replay, write_backfill
from features.streaming.bus import TRANSPORTS, EventBus, InProcessBus, Transport, open_bus
from features.streaming.definitions import (
    DEVICE_VELOCITY,
    IP_VELOCITY,
    STREAM_VIEWS,
    USER_CAMPAIGN_FREQUENCY,
    StreamFeature,
    StreamView,
    stream_view,
    streaming_definitions,
)
from features.streaming.errors import BusError, StreamingError
from features.streaming.events import EVENT_KINDS, StreamEvent, events_from_frame, log_events
from features.streaming.freshness import apply_streaming, measure_freshness
from features.streaming.online import StreamReader, read_online
from features.streaming.skew import StreamSkewReport, stream_skew_check
from features.streaming.windows import FIVE_MINUTES, TODAY_UTC, Window, WindowTable

__all__ = [
    "DEVICE_VELOCITY", "EVENT_KINDS", "FIVE_MINUTES", "IP_VELOCITY", "STREAM_VIEWS", "TODAY_UTC",
    "TRANSPORTS", "USER_CAMPAIGN_FREQUENCY", "AggregatorStats", "BusError", "EventBus",
    "FeastPushSink", "InProcessBus", "PushSink", "StreamAggregator", "StreamClock", "StreamEvent",
    "StreamFeature", "StreamReader", "StreamSkewReport", "StreamView", "StreamingError", "Transport", "Window", "WindowTable",
    "apply_streaming", "backfill_frames", "events_from_frame", "log_events", "measure_freshness", "open_bus",
    "read_online", "replay", "stream_skew_check", "stream_view", "streaming_definitions",
    "write_backfill",
]

"""Prometheus metrics of the default server (``prometheus_client``, one registry per server, served as text at
``GET /metrics`` on the server's own listener).

``METRICS`` is the one list of what is exported (name, type, labels, meaning); ``docs/serving.md`` shows the same
table and a test checks that the names there equal the names ``/metrics`` exports.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics

disable_created_metrics()  # no *_created series: they double the text and carry no measurement

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class MetricSpec:
    name: str  # the exported sample name(s) start with this (a counter adds _total, a histogram _bucket/_sum/_count)
    kind: str  # counter | gauge | histogram
    labels: tuple[str, ...]
    help: str


METRICS = (
    MetricSpec("clip_debias_requests_total", "counter", ("route", "status"), "Requests answered, by route and HTTP "
               "status."),
    MetricSpec("clip_debias_images_total", "counter", (), "Images run through the model (summed over model calls)."),
    MetricSpec("clip_debias_batch_size", "histogram", (), "Images per model call."),
    MetricSpec("clip_debias_request_latency_seconds", "histogram", ("route",), "Request head received to answer "
               "sent, seconds."),
    MetricSpec("clip_debias_model_latency_seconds", "histogram", (), "One model call (a batch), seconds."),
    MetricSpec("clip_debias_queue_images", "gauge", (), "Images waiting for a model call."),
    MetricSpec("clip_debias_rejected_total", "counter", ("reason",), "Requests refused before the model: queue_full, "
               "too_large, timeout, bad_request."),
    MetricSpec("clip_debias_ready", "gauge", (), "1 once the artifact is loaded, its digest checked and the model "
               "warmed up; 0 while starting or draining."),
)


class ServerMetrics:
    """The metrics of ``METRICS`` in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        spec = {m.name: m for m in METRICS}

        def make(name: str, cls: type, **kw: object) -> object:
            m = spec[name]
            base = name.removesuffix("_total") if cls is Counter else name
            return cls(base, m.help, m.labels, registry=self.registry, **kw)

        self.requests = make("clip_debias_requests_total", Counter)
        self.images = make("clip_debias_images_total", Counter)
        self.batch_size = make("clip_debias_batch_size", Histogram, buckets=BATCH_BUCKETS)
        self.request_latency = make("clip_debias_request_latency_seconds", Histogram, buckets=LATENCY_BUCKETS_S)
        self.model_latency = make("clip_debias_model_latency_seconds", Histogram, buckets=LATENCY_BUCKETS_S)
        self.queue_images = make("clip_debias_queue_images", Gauge)
        self.rejected = make("clip_debias_rejected_total", Counter)
        self.ready = make("clip_debias_ready", Gauge)

    def text(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

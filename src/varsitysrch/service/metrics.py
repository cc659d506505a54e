"""Prometheus metrics of one app, in its own :class:`prometheus_client.CollectorRegistry`.

Two apps in one process (tests, or two catalogues served side by side) never share or
clash on a series.  Names (all prefixed ``varsitysrch_``):

``http_requests_total``, ``http_errors_total``         counters by method, route template, status
``http_request_duration_seconds``                      histogram, same labels
``http_requests_in_flight``                            gauge
``embed_duration_seconds``, ``embed_batch_size``       one observation per inference batch
``queue_rejections_total``                             503s by stage (decode, embed)
``queue_depth``                                        gauge by stage (waiting + running)
``thumbnails_total``                                   thumbnails by result (hit, miss)
``model_reloads_total``                                reloads by result (ok, error)
``catalogue_images``, ``clusters``, ``model_generation``, ``start_time_seconds``  gauges
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .._errors import missing

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
REQ_LABELS = ("method", "route", "status")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise missing("prometheus-client", "serve", "the HTTP service's /metrics") from exc
    return prometheus_client


class Metrics:
    """The app's counters, histograms and gauges; :meth:`render` gives the text format."""

    def __init__(self) -> None:
        pc = _prometheus()
        self._pc = pc
        self.registry = reg = pc.CollectorRegistry(auto_describe=True)
        self.requests = pc.Counter(
            "varsitysrch_http_requests",
            "HTTP requests by method, route template and status.",
            REQ_LABELS,
            registry=reg,
        )
        self.errors = pc.Counter(
            "varsitysrch_http_errors", "HTTP responses with status >= 400.", REQ_LABELS, registry=reg
        )
        self.latency = pc.Histogram(
            "varsitysrch_http_request_duration_seconds",
            "HTTP request latency in seconds, by method, route template and status.",
            REQ_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.in_flight = pc.Gauge(
            "varsitysrch_http_requests_in_flight", "HTTP requests being served.", registry=reg
        )
        self.embed = pc.Histogram(
            "varsitysrch_embed_duration_seconds",
            "Time of one inference batch (query images embedded together).",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.batch_size = pc.Histogram(
            "varsitysrch_embed_batch_size",
            "Query images per inference batch (micro-batching).",
            buckets=BATCH_BUCKETS,
            registry=reg,
        )
        self.rejections = pc.Counter(
            "varsitysrch_queue_rejections",
            "Requests answered 503 because a bounded queue was full, by stage.",
            ("stage",),
            registry=reg,
        )
        self.queue_depth = pc.Gauge(
            "varsitysrch_queue_depth", "Jobs waiting or running, by stage.", ("stage",), registry=reg
        )
        self.thumbs = pc.Counter(
            "varsitysrch_thumbnails",
            "Thumbnails served from the disk cache (hit) or made (miss).",
            ("result",),
            registry=reg,
        )
        self.reloads = pc.Counter(
            "varsitysrch_model_reloads",
            "Model reloads after the model or CSV file changed, by result.",
            ("result",),
            registry=reg,
        )
        self.started = pc.Gauge(
            "varsitysrch_start_time_seconds", "Start time of the service (Unix time).", registry=reg
        )
        self.started.set(time.time())

    def gauge_from(self, name: str, help_: str, fn: Callable[[], float]) -> None:
        """A gauge read from ``fn`` at every scrape (catalogue facts of the served model)."""
        self._pc.Gauge(name, help_, registry=self.registry).set_function(fn)

    def queue_from(self, stage: str, fn: Callable[[], float]) -> None:
        self.queue_depth.labels(stage).set_function(fn)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        labels = (method, route, str(status))
        self.requests.labels(*labels).inc()
        if status >= 400:
            self.errors.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.embed.observe(seconds)

    def render(self) -> bytes:
        return bytes(self._pc.generate_latest(self.registry))

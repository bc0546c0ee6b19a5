"""Prometheus metrics (a registry per app) and the middleware that counts and times requests."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Metrics:
    """Prometheus metrics in a registry of their own (one per app, so tests and apps do not collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "flare_seg_http_requests",
            "HTTP requests by route template, method and status code",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "flare_seg_http_request_duration_seconds",
            "HTTP request latency in seconds, upload and queueing included",
            ["route", "method"],
            buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "flare_seg_inference_seconds",
            "wall time of one segmentation on the worker, seconds",
            buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "flare_seg_queue_depth",
            "requests queued for the inference worker (their uploads have arrived and passed the checks)",
            registry=self.registry,
        )
        self.uploads_in_progress = Gauge(
            "flare_seg_uploads_in_progress", "upload bodies being received now", registry=self.registry
        )
        self.rejected_uploads = Counter(
            "flare_seg_upload_rejections",
            "uploads ended early: reason=stalled (408), too_many (503) or disk (507)",
            ["reason"],
            registry=self.registry,
        )
        self.in_progress = Gauge(
            "flare_seg_inference_in_progress", "segmentations running now (0 or 1)", registry=self.registry
        )
        self.rejected_queue_full = Counter(
            "flare_seg_queue_full_rejections",
            "requests answered 503 because the queue was full",
            registry=self.registry,
        )
        self.model_ready = Gauge(
            "flare_seg_model_ready", "1 once the models are loaded and warmed up", registry=self.registry
        )


class MetricsMiddleware:
    """Pure ASGI middleware counting requests and timing them by route template (not raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(time.perf_counter() - start)

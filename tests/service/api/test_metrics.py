"""Tests for flare_seg.service.api.metrics: Prometheus metrics per app.

With a fake segmenter (no TensorFlow, no models)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from flare_seg.service.api import create_app
from tests.service.api.conftest import (
    make_settings,
    upload,
)

pytestmark = pytest.mark.usefixtures("clean_env")


def test_metrics(client: TestClient, ct_bytes: bytes) -> None:
    assert client.post("/segment", **upload(ct_bytes)).status_code == 200
    assert client.get("/jobs/nope").status_code == 404
    text = client.get("/metrics").text
    assert 'flare_seg_http_requests_total{method="POST",route="/segment",status="200"} 1.0' in text
    assert 'flare_seg_http_requests_total{method="GET",route="/jobs/{job_id}",status="404"} 1.0' in text
    assert 'flare_seg_http_request_duration_seconds_count{method="POST",route="/segment"} 1.0' in text
    assert "flare_seg_inference_seconds_count 1.0" in text
    assert "flare_seg_queue_depth 0.0" in text
    assert "flare_seg_model_ready 1.0" in text


def test_metrics_registries_are_per_app(tmp_path: Path) -> None:
    first = create_app(make_settings(tmp_path))
    second = create_app(make_settings(tmp_path))
    assert first.state.metrics.registry is not second.state.metrics.registry

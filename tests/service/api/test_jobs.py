"""Tests for flare_seg.service.api.jobs: the job flow, the bounded queue and the single worker.

With a fake segmenter (no TensorFlow, no models)."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient

from flare_seg.service.api.jobs import DurableJobStore, Job
from flare_seg.service.api.schemas import JobStatus
from tests.service.api.conftest import (
    make_settings,
    read_mask,
    running,
    service_of,
    upload,
    wait_until,
)
from tests.service.conftest import FakeSegmenter

pytestmark = pytest.mark.usefixtures("clean_env")


def test_jobs_flow(tmp_path: Path, ct_bytes: bytes) -> None:
    gate = threading.Event()
    with running(make_settings(tmp_path), FakeSegmenter(gate=gate)) as client:
        response = client.post("/jobs", **upload(ct_bytes, "abdomen_0000.nii.gz"))
        assert response.status_code == 202, response.text
        created = response.json()
        assert created["status"] == "queued"
        assert created["status_url"] == f"/jobs/{created['id']}"
        assert created["result_url"] == f"/jobs/{created['id']}/result"
        assert response.headers["location"] == created["status_url"]

        early = client.get(created["result_url"])
        assert early.status_code == 409 and "poll" in early.json()["detail"]
        assert client.get(created["status_url"]).json()["status"] in ("queued", "running")

        gate.set()
        wait_until(lambda: client.get(created["status_url"]).json()["status"] == "done")
        status = client.get(created["status_url"]).json()
        assert status["case"] == "abdomen" and status["error"] is None
        assert status["summary"]["volumes_ml"]["liver"] > 0
        assert status["finished_at"] and status["expires_at"]

        result = client.get(created["result_url"])
        assert result.status_code == 200
        assert result.headers["content-type"] == "application/gzip"
        assert 'filename="abdomen_mask.nii.gz"' in result.headers["content-disposition"]
        assert json.loads(result.headers["x-organ-volumes-ml"])["liver"] > 0
        mask = read_mask(result.content, tmp_path)
        assert mask.GetDirection() == sitk.ReadImage(str(tmp_path / "case01_0000.nii.gz")).GetDirection()

        # expiry: the periodic cleanup removes the job and its file after job_ttl_s
        service = service_of(client)
        result_path = service.jobs.get(created["id"]).result_path  # type: ignore[union-attr]
        assert result_path.is_file()
        assert service.cleanup(now_s=time.time()) == 0
        assert service.cleanup(now_s=time.time() + 3601) == 1
        assert not result_path.exists()
        assert client.get(created["status_url"]).status_code == 404
        assert client.get(created["result_url"]).status_code == 404


def test_unknown_job_404(client: TestClient) -> None:
    for url in ("/jobs/doesnotexist", "/jobs/doesnotexist/result"):
        response = client.get(url)
        assert response.status_code == 404
        assert "unknown or expired" in response.json()["detail"]


def test_failed_job_and_failed_segment(tmp_path: Path, ct_bytes: bytes) -> None:
    segmenter = FakeSegmenter(fail_with=RuntimeError("GPU on fire"))
    with running(make_settings(tmp_path), segmenter) as client:
        job = client.post("/jobs", **upload(ct_bytes)).json()
        wait_until(lambda: client.get(job["status_url"]).json()["status"] == "failed")
        status = client.get(job["status_url"]).json()
        assert "internal error" in status["error"] and "GPU on fire" not in status["error"]
        result = client.get(job["result_url"])
        assert result.status_code == 409 and "failed" in result.json()["detail"]

        response = client.post("/segment", **upload(ct_bytes))
        assert response.status_code == 500
        assert response.json()["detail"] == "internal error during segmentation"


def test_queue_full_503_with_retry_after(tmp_path: Path, ct_bytes: bytes) -> None:
    gate = threading.Event()
    segmenter = FakeSegmenter(gate=gate)
    with running(make_settings(tmp_path, queue_size=1), segmenter) as client:
        first = client.post("/jobs", **upload(ct_bytes)).json()
        assert segmenter.started.wait(timeout=10)  # running, blocked on the gate
        second = client.post("/jobs", **upload(ct_bytes))
        assert second.status_code == 202  # waits in the queue (queue_size=1)
        for endpoint in ("/jobs", "/segment"):
            rejected = client.post(endpoint, **upload(ct_bytes))
            assert rejected.status_code == 503, rejected.text
            assert int(rejected.headers["retry-after"]) >= 1
            assert "busy" in rejected.json()["detail"]
        assert "flare_seg_queue_depth 1.0" in client.get("/metrics").text
        assert "flare_seg_inference_in_progress 1.0" in client.get("/metrics").text

        gate.set()
        for job in (first, second.json()):
            wait_until(lambda job=job: client.get(job["status_url"]).json()["status"] == "done")
        assert client.post("/segment", **upload(ct_bytes)).status_code == 200
        assert "flare_seg_queue_full_rejections_total 2.0" in client.get("/metrics").text


def test_sync_requests_are_serialized(tmp_path: Path, ct_bytes: bytes) -> None:
    """Concurrent /segment calls never run the segmenter at the same time."""
    active = {"now": 0, "max": 0}
    lock = threading.Lock()

    class Counting(FakeSegmenter):
        def segment_image(self, image: sitk.Image) -> Any:
            with lock:
                active["now"] += 1
                active["max"] = max(active["max"], active["now"])
            time.sleep(0.05)
            with lock:
                active["now"] -= 1
            return super().segment_image(image)

    with running(make_settings(tmp_path, queue_size=4), Counting()) as client:
        statuses: list[int] = []

        def post() -> None:
            statuses.append(client.post("/segment", **upload(ct_bytes)).status_code)

        threads = [threading.Thread(target=post) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
    assert statuses == [200, 200, 200]
    assert active["max"] == 1


def test_job_store_get_returns_a_consistent_copy(tmp_path: Path) -> None:
    """A record read from the store does not change under the reader when the worker updates the job."""
    store = DurableJobStore.open(tmp_path, ttl_s=60)
    job = Job(
        id="j1",
        case="case01",
        display_name="case01_0000.nii.gz",
        upload_path=tmp_path / "u.nii.gz",
        result_path=tmp_path / "r.nii.gz",
        created_at=datetime.now(UTC),
    )
    store.add(job)
    seen = store.get("j1")
    assert seen is not None and seen is not job and seen.status == JobStatus.queued
    assert store.mark_running("j1")
    store.finish("j1", error="boom")
    assert seen.status == JobStatus.queued and seen.error is None
    again = store.get("j1")
    assert again is not None and (again.status, again.error) == (JobStatus.failed, "boom")
    assert again.expires_at is not None and again.finished_at is not None
    assert (again.expires_at - again.finished_at).total_seconds() == pytest.approx(60)
    assert store.get("nope") is None


def test_job_with_statistics(client: TestClient, ct_bytes: bytes) -> None:
    created = client.post("/jobs?statistics=true", **upload(ct_bytes, "abdomen_0000.nii.gz")).json()
    wait_until(lambda: client.get(created["status_url"]).json()["status"] == "done")
    summary = client.get(created["status_url"]).json()["summary"]
    assert summary["statistics"]["liver"]["voxel_count"] > 0
    liver = summary["statistics"]["liver"]
    assert liver["volume_ml"] == pytest.approx(summary["volumes_ml"]["liver"], abs=1e-3)
    plain = client.post("/jobs", **upload(ct_bytes, "b_0000.nii.gz")).json()
    wait_until(lambda: client.get(plain["status_url"]).json()["status"] == "done")
    assert client.get(plain["status_url"]).json()["summary"]["statistics"] is None

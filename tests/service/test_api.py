"""Tests for flare_seg.service.api with a fake segmenter (no TensorFlow, no models)."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from fastapi.encoders import jsonable_encoder
from fastapi.testclient import TestClient

from flare_seg.service.api import Service, case_name, create_app
from flare_seg.service.settings import Settings, load_settings
from tests.service.conftest import (
    ANISOTROPIC_SPACING_MM_XYZ,
    FakeSegmenter,
    make_ct,
    nifti1_header,
    nifti2_header,
)

pytestmark = pytest.mark.usefixtures("clean_env")

MiB = 1024 * 1024


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    return load_settings(models_dir=tmp_path, work_dir=tmp_path / "work", **overrides)


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


@contextmanager
def running(
    settings: Settings, segmenter: FakeSegmenter | None = None, wait_ready: bool = True, **kwargs: Any
) -> Iterator[TestClient]:
    segmenter = segmenter or FakeSegmenter()
    app = create_app(settings, lambda s: segmenter, **kwargs)
    with TestClient(app) as client:
        if wait_ready:
            wait_until(lambda: client.get("/ready").status_code == 200)
        yield client


def upload(data: bytes, filename: str = "case01_0000.nii.gz") -> dict[str, Any]:
    return {"files": {"file": (filename, data, "application/gzip")}}


def service_of(client: TestClient) -> Service:
    service: Service = client.app.state.service  # type: ignore[attr-defined]
    return service


@pytest.fixture
def ct_bytes(ct_file: Path) -> bytes:
    return ct_file.read_bytes()


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with running(make_settings(tmp_path)) as c:
        yield c


def read_mask(data: bytes, tmp_path: Path) -> sitk.Image:
    path = tmp_path / "answer.nii.gz"
    path.write_bytes(data)
    return sitk.ReadImage(str(path))


def test_import_creates_no_app_or_settings() -> None:
    """Importing the API with a broken environment succeeds: nothing is built at import time."""
    env = {**os.environ, "FLARE_SEG_PORT": "not-a-port", "FLARE_SEG_MODELS_DIR": "/nonexistent"}
    code = (
        "import fastapi, flare_seg.service.api as api, flare_seg.service.settings as s;"
        "assert not [v for v in vars(api).values() if isinstance(v, (fastapi.FastAPI, s.Settings))]"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


def test_segment_returns_mask_with_exact_geometry(client: TestClient, ct_file: Path, tmp_path: Path) -> None:
    response = client.post("/segment", **upload(ct_file.read_bytes()))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/gzip"
    assert response.headers["content-disposition"] == 'attachment; filename="case01.nii.gz"'
    assert response.headers["x-model-version"] == "fake-1.0"
    assert float(response.headers["x-inference-seconds"]) >= 0
    volumes = json.loads(response.headers["x-organ-volumes-ml"])
    assert volumes["kidney"] == 0.0 and volumes["liver"] > 0
    assert json.loads(response.headers["x-warnings"]) == []

    mask = read_mask(response.content, tmp_path)
    ct = sitk.ReadImage(str(ct_file))
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert mask.GetSize() == ct.GetSize()
    assert mask.GetSpacing() == ct.GetSpacing()
    assert mask.GetOrigin() == ct.GetOrigin()
    assert mask.GetDirection() == ct.GetDirection()
    assert mask.GetDirection() != (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(ct) > 100)
    voxel_ml = float(np.prod(ANISOTROPIC_SPACING_MM_XYZ)) / 1000
    liver_voxels = np.count_nonzero(sitk.GetArrayFromImage(mask))
    assert volumes["liver"] == pytest.approx(liver_voxels * voxel_ml, rel=1e-3)


def test_segment_accepts_uncompressed_nii(client: TestClient, tmp_path: Path) -> None:
    path = tmp_path / "plain.nii"
    sitk.WriteImage(make_ct(), str(path), useCompression=False)
    response = client.post("/segment", **upload(path.read_bytes(), "plain.nii"))
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == 'attachment; filename="plain.nii.gz"'
    assert read_mask(response.content, tmp_path).GetSize() == make_ct().GetSize()


@pytest.mark.parametrize("how", ["query", "accept"])
def test_segment_json_mode(client: TestClient, ct_bytes: bytes, how: str) -> None:
    if how == "query":
        response = client.post("/segment?format=json", **upload(ct_bytes))
    else:
        response = client.post("/segment", headers={"Accept": "application/json"}, **upload(ct_bytes))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["case"] == "case01" and body["model_version"] == "fake-1.0"
    assert body["volumes_ml"]["liver"] > 0 and body["volumes_ml"]["kidney"] == 0
    assert body["organ_boxes_mm"]["kidney"] is None
    liver_box = body["organ_boxes_mm"]["liver"]
    assert set(liver_box) == {"min_mm_xyz", "max_mm_xyz"} and len(liver_box["min_mm_xyz"]) == 3
    assert set(body["roi_box_mm"]) == {"min_mm_xyz", "max_mm_xyz"}
    assert {"localization", "segmentation", "read", "write"} <= set(body["timings_s"])
    assert body["size_xyz"] == list(make_ct().GetSize())
    assert body["inference_seconds"] >= 0
    assert body["warnings"] == []
    assert "mask" not in body


def test_bad_format_parameter(client: TestClient, ct_bytes: bytes) -> None:
    response = client.post("/segment?format=png", **upload(ct_bytes))
    assert response.status_code == 422
    assert "format" in response.json()["detail"]


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
        assert 'filename="abdomen.nii.gz"' in result.headers["content-disposition"]
        assert json.loads(result.headers["x-organ-volumes-ml"])["liver"] > 0
        mask = read_mask(result.content, tmp_path)
        assert mask.GetDirection() == sitk.ReadImage(str(tmp_path / "case01_0000.nii.gz")).GetDirection()

        # expiry: the periodic cleanup removes the job and its file after job_ttl_s
        service = service_of(client)
        result_path = service.jobs.get(created["id"]).result_path  # type: ignore[union-attr]
        assert result_path.is_file()
        assert service.cleanup(now_monotonic=time.monotonic()) == 0
        assert service.cleanup(now_monotonic=time.monotonic() + 3601) == 1
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


def test_ready_503_before_load_and_200_after(tmp_path: Path, ct_bytes: bytes) -> None:
    loaded = threading.Event()
    segmenter = FakeSegmenter()

    def slow_factory(settings: Settings) -> FakeSegmenter:
        assert loaded.wait(timeout=20)
        return segmenter

    app = create_app(make_settings(tmp_path), slow_factory)
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        response = client.get("/ready")
        assert response.status_code == 503 and response.json()["status"] == "loading"
        busy = client.post("/segment", **upload(ct_bytes))
        assert busy.status_code == 503 and "loading" in busy.json()["detail"]
        assert "retry-after" in busy.headers
        assert client.get("/models").status_code == 503

        loaded.set()
        wait_until(lambda: client.get("/ready").status_code == 200)
        assert client.get("/ready").json() == {"status": "ready", "model_version": "fake-1.0", "detail": None}
        assert segmenter.warmed_up


def test_load_failure_reported(tmp_path: Path) -> None:
    failures: list[BaseException] = []

    def broken_factory(settings: Settings) -> FakeSegmenter:
        raise FileNotFoundError("manifest.json missing")

    app = create_app(make_settings(tmp_path), broken_factory, on_load_failure=failures.append)
    with TestClient(app) as client:
        wait_until(lambda: bool(failures))
        response = client.get("/ready")
        assert response.status_code == 503
        assert response.json()["status"] == "failed" and "manifest.json missing" in response.json()["detail"]
        assert client.get("/health").status_code == 200
    assert isinstance(failures[0], FileNotFoundError)


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


def test_models_returns_manifest(client: TestClient) -> None:
    response = client.get("/models")
    assert response.status_code == 200
    assert response.json() == {"model_version": "fake-1.0", "labels": {"1": "liver", "2": "kidney"}}


def test_docs_and_openapi(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    for path in ("/segment", "/jobs", "/jobs/{job_id}", "/jobs/{job_id}/result", "/health", "/ready"):
        assert path in spec["paths"]
    assert "multipart/form-data" in spec["paths"]["/segment"]["post"]["requestBody"]["content"]


def test_upload_over_limit_by_content_length(tmp_path: Path) -> None:
    with running(make_settings(tmp_path, max_upload_mb=1)) as client:
        response = client.post("/segment", **upload(os.urandom(2 * MiB)))
        assert response.status_code == 413
        assert "over the limit" in response.json()["detail"]


def test_upload_over_limit_while_streaming(tmp_path: Path) -> None:
    """No Content-Length (chunked): reading stops once the limit is passed."""
    boundary = "testboundary"
    sent = {"chunks": 0}

    def body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.nii.gz"\r\n'
            "Content-Type: application/gzip\r\n\r\n"
        ).encode()
        for _ in range(64):  # 4 MiB in all, if it were all read
            sent["chunks"] += 1
            yield b"\x00" * (64 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    with running(make_settings(tmp_path, max_upload_mb=1)) as client:
        response = client.post(
            "/segment", content=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        assert response.status_code == 413
        assert "over the limit" in response.json()["detail"]
        assert not list((service_of(client).uploads_dir).iterdir())  # the partial upload is gone


def test_absurd_header_413(client: TestClient) -> None:
    huge = gzip.compress(nifti2_header((100_000, 100_000, 100_000)) + bytes(64))
    start = time.perf_counter()
    response = client.post("/segment", **upload(huge, "huge.nii.gz"))
    assert response.status_code == 413
    assert time.perf_counter() - start < 5
    assert "huge.nii.gz" in response.json()["detail"] and "4096" in response.json()["detail"]


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[bytes, int, str]]:
    rng = np.random.default_rng(0)
    noisy = tmp_path / "noisy.nii.gz"
    noise_zyx = rng.integers(-1000, 1000, (12, 16, 20), dtype=np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(noise_zyx), str(noisy))
    full = noisy.read_bytes()
    two_d = tmp_path / "2d.nii.gz"
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkInt16), str(two_d))
    four_d = tmp_path / "4d.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([make_ct()] * 3), str(four_d))
    return {
        "garbage": (os.urandom(4096), 415, "not a NIfTI"),
        "gzip_text": (gzip.compress(b"definitely not an image\n" * 100), 415, "not a NIfTI"),
        "truncated_gzip": (full[: len(full) // 2], 422, "truncated"),
        "2d": (two_d.read_bytes(), 422, "expected a 3D image, got a 2D"),
        "4d": (four_d.read_bytes(), 422, "expected a 3D image, got a 4D"),
        "complex": (gzip.compress(nifti1_header((4, 4, 4), datatype=32, bitpix=64)), 422, "complex64"),
        "empty_file": (b"", 422, "empty"),
    }


@pytest.mark.parametrize("endpoint", ["/segment", "/jobs"])
def test_bad_uploads_are_4xx_with_detail(tmp_path: Path, endpoint: str) -> None:
    segmenter = FakeSegmenter()
    with running(make_settings(tmp_path), segmenter) as client:
        for name, (data, status, message) in _bad_inputs(tmp_path).items():
            response = client.post(endpoint, **upload(data, f"{name}.nii.gz"))
            assert response.status_code == status, (name, response.text)
            detail = response.json()["detail"]
            assert isinstance(detail, str) and message in detail, (name, detail)
        assert segmenter.calls == 0  # nothing bad ever reached the model
        service = service_of(client)
        assert not list(service.uploads_dir.iterdir()) and not service.jobs.jobs


def test_corrupt_data_is_422_for_both_endpoints(tmp_path: Path) -> None:
    """/segment leaves the CRC to its read (no second decompression), /jobs checks before the 202:
    either way the client gets a 422 naming the problem, and nothing reaches the model."""
    from tests.service.test_io import corrupt_inside, noisy_ct_bytes

    broken = corrupt_inside(noisy_ct_bytes(tmp_path))

    segmenter = FakeSegmenter()
    with running(make_settings(tmp_path), segmenter) as client:
        for endpoint in ("/segment", "/jobs"):
            response = client.post(endpoint, **upload(broken, "broken.nii.gz"))
            assert response.status_code == 422, (endpoint, response.text)
            assert re.search("corrupt gzip|truncated", response.json()["detail"]), response.text
        assert segmenter.calls == 0
        service = service_of(client)
        assert not list(service.uploads_dir.iterdir()) and not service.jobs.jobs


def test_request_shape_errors(client: TestClient, ct_bytes: bytes) -> None:
    cases = {
        "missing field": (
            client.post("/segment", files={"image": ("a.nii.gz", ct_bytes)}),
            422,
            "missing form field",
        ),
        "no body": (client.post("/segment"), 422, "empty request body"),
        "empty multipart": (
            client.post("/segment", content=b"", headers={"Content-Type": "multipart/form-data; boundary=x"}),
            422,
            "empty request body",
        ),
        "json body": (client.post("/segment", json={"file": "x"}), 415, "multipart/form-data"),
        "raw body": (
            client.post("/segment", content=ct_bytes, headers={"Content-Type": "application/gzip"}),
            415,
            "multipart/form-data",
        ),
        "no boundary": (
            client.post("/segment", content=b"abc", headers={"Content-Type": "multipart/form-data"}),
            400,
            "boundary",
        ),
        "cut multipart": (
            client.post(
                "/segment",
                content=b'--x\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nabc',
                headers={"Content-Type": "multipart/form-data; boundary=x"},
            ),
            400,
            "incomplete",
        ),
        "two files": (
            client.post("/segment", files=[("file", ("a.nii.gz", ct_bytes)), ("file", ("b.nii", ct_bytes))]),
            422,
            "more than one",
        ),
    }
    for name, (response, status, message) in cases.items():
        assert response.status_code == status, (name, response.text)
        assert message in response.json()["detail"], (name, response.json())


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


def test_auth(tmp_path: Path, ct_bytes: bytes) -> None:
    with running(make_settings(tmp_path, api_token="t0ken")) as client:
        for path in ("/health", "/ready", "/docs", "/openapi.json"):
            assert client.get(path).status_code == 200, path
        protected = (("GET", "/metrics"), ("GET", "/models"), ("GET", "/jobs/x"), ("POST", "/segment"))
        for method, path in protected:
            response = client.request(method, path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"] == "Bearer"
            assert "token" in response.json()["detail"]
        wrong = client.post("/segment", headers={"Authorization": "Bearer nope"}, **upload(ct_bytes))
        assert wrong.status_code == 401
        basic = client.get("/models", headers={"Authorization": "Basic dTpw"})
        assert basic.status_code == 401
        good = {"Authorization": "Bearer t0ken"}
        assert client.post("/segment", headers=good, **upload(ct_bytes)).status_code == 200
        assert client.get("/metrics", headers=good).status_code == 200


def test_auth_off_by_default(client: TestClient) -> None:
    assert client.get("/models").status_code == 200


def test_client_file_name_never_becomes_a_path(tmp_path: Path, ct_bytes: bytes) -> None:
    work = tmp_path / "work"
    with running(make_settings(tmp_path)) as client:
        service = service_of(client)
        for evil in ("../../../../tmp/evil_0000.nii.gz", "..\\..\\evil.nii.gz", "/etc/passwd", '"; rm -rf /'):
            response = client.post("/segment", **upload(ct_bytes, evil))
            assert response.status_code == 200, evil
            disposition = response.headers["content-disposition"]
            assert ".." not in disposition and "/" not in disposition and "\\" not in disposition
            job = client.post("/jobs", **upload(ct_bytes, evil)).json()
            wait_until(lambda job=job: client.get(job["status_url"]).json()["status"] == "done")
        assert all(p.name.endswith(".nii.gz") and len(p.name) == 39 for p in service.results_dir.iterdir())
        assert not (tmp_path / "evil_0000.nii.gz").exists() and not Path("/tmp/evil_0000.nii.gz").exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["case01_0000.nii.gz", "work"]
        assert [p.parent for p in work.iterdir()] == [work]
    assert not list(work.iterdir())  # the per-process folder is removed at shutdown


@pytest.mark.parametrize(
    ("client_name", "case"),
    [
        ("case01_0000.nii.gz", "case01"),
        ("FLARE22_Tr_0001_0000.nii", "FLARE22_Tr_0001"),
        ("../../x/y/abc.nii.gz", "abc"),
        ("C:\\data\\scan 7.nii.gz", "scan_7"),
        ("..", "mask"),
        (None, "mask"),
        ("ünïcode.nii.gz", "n_code"),
    ],
)
def test_case_name(client_name: str | None, case: str) -> None:
    assert case_name(client_name) == case


@pytest.mark.slow
def test_segment_with_the_real_pipeline(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """End to end through the real Segmenter, with tiny random-weight models from the real export."""
    pytest.importorskip("flare_seg.training.phantom")
    segmenter = request.getfixturevalue("tiny_segmenter")
    from tests.conftest import ct_image, oblique_direction

    app = create_app(make_settings(tmp_path), lambda settings: segmenter)
    with TestClient(app) as client:
        wait_until(lambda: client.get("/ready").status_code == 200, timeout_s=300)
        for direction in ((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0), oblique_direction()):
            path = tmp_path / "real_0000.nii.gz"
            sitk.WriteImage(ct_image(direction=direction), str(path))
            ct = sitk.ReadImage(str(path))
            response = client.post("/segment", **upload(path.read_bytes(), path.name))
            assert response.status_code == 200, response.text
            mask = read_mask(response.content, tmp_path)
            assert mask.GetPixelID() == sitk.sitkUInt8
            assert (mask.GetSize(), mask.GetSpacing()) == (ct.GetSize(), ct.GetSpacing())
            assert (mask.GetOrigin(), mask.GetDirection()) == (ct.GetOrigin(), ct.GetDirection())
            assert set(json.loads(response.headers["x-organ-volumes-ml"])) == {
                "liver",
                "kidney",
                "spleen",
                "pancreas",
            }
        summary = client.post("/segment?format=json", **upload(path.read_bytes())).json()
        assert summary["model_version"] == segmenter.model_version
        assert client.get("/models").json() == jsonable_encoder(segmenter.manifest)


def test_warnings_reach_the_client_in_both_formats(client: TestClient, ct_bytes: bytes) -> None:
    warning = "the image holds no air (its lowest value is 24 on the localization grid, ...): ..."
    service_of(client).segmenter.warnings = (warning,)
    response = client.post("/segment", **upload(ct_bytes))
    assert response.status_code == 200 and json.loads(response.headers["x-warnings"]) == [warning]
    response = client.post("/segment?format=json", **upload(ct_bytes))
    assert response.status_code == 200 and response.json()["warnings"] == [warning]

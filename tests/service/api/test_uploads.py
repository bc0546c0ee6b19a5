"""Tests for flare_seg.service.api.uploads: size limits, bad files, malformed requests, file names.

With a fake segmenter (no TensorFlow, no models)."""

from __future__ import annotations

import gzip
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient

from flare_seg.service.api import case_name
from tests.service.api.conftest import (
    make_settings,
    running,
    service_of,
    upload,
    wait_until,
)
from tests.service.conftest import (
    FakeSegmenter,
    make_ct,
    nifti1_header,
    nifti2_header,
)

pytestmark = pytest.mark.usefixtures("clean_env")

MiB = 1024 * 1024


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
        assert not list(service.uploads_dir.iterdir()) and service.jobs.count() == 0  # type: ignore[attr-defined]


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
        assert not list(service.uploads_dir.iterdir()) and service.jobs.count() == 0  # type: ignore[attr-defined]


def test_file_in_the_wrong_field_is_422_whatever_its_size(client: TestClient) -> None:
    """``curl -F image=@ct.nii.gz``: the documented 422, not a 413 about other form fields."""
    big = b"\x1f\x8b" + bytes(3 * 2**20)  # larger than any allowance for small form fields
    response = client.post("/segment", files={"image": ("ct.nii.gz", big)})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith("missing form field 'file'") and "'image'" in detail
    assert not list(service_of(client).uploads_dir.iterdir())


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
        expected = {
            "uploads",
            "results",
            "server.lock",
            "jobs.sqlite3",
            "jobs.sqlite3-wal",
            "jobs.sqlite3-shm",
        }
        assert {p.name for p in work.iterdir()} <= expected
    assert not list((work / "uploads").iterdir())  # results and job records stay for the next start


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

"""The HTTP API with DICOM: a .zip upload answered as DICOM SEG (or NIfTI), chosen by the format
parameter or the Accept header; bad archives get a 4xx with a one-line reason."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from tests.dicom.conftest import GEOMETRIES, PhantomCase, assert_seg_matches_mask, write_case
from tests.service.api.conftest import make_settings, running, wait_until


def _zip_bytes(case: PhantomCase) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for p in sorted(case.dicom_dir.iterdir()):
            z.write(p, f"DICOM/{p.name}")
    return buffer.getvalue()


def _fake_mask(case: PhantomCase) -> sitk.Image:
    """What the test segmenter (> 100 HU is label 1) gives, computed on the NIfTI of the case."""
    image = sitk.ReadImage(str(case.image_nifti))
    mask = sitk.Cast(image > 100, sitk.sitkUInt8)
    mask.CopyInformation(image)
    return mask


@pytest.fixture
def case(tmp_path: Path) -> PhantomCase:
    return write_case(tmp_path / "case", GEOMETRIES["flipped-rows"])


def _post(client, data: bytes, name: str = "study.zip", **kwargs):
    return client.post("/segment", files={"file": (name, data, "application/zip")}, **kwargs)


def test_zip_upload_answers_a_dicom_seg_by_default(tmp_path: Path, case: PhantomCase) -> None:
    with running(make_settings(tmp_path)) as client:
        r = _post(client, _zip_bytes(case))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom"
    assert 'filename="study.seg.dcm"' in r.headers["content-disposition"]
    seg_path = tmp_path / "answer.dcm"
    seg_path.write_bytes(r.content)
    assert pydicom.dcmread(seg_path).Modality == "SEG"
    assert_seg_matches_mask(seg_path, _fake_mask(case))


@pytest.mark.parametrize(
    ("query", "accept", "expected"),
    [
        ("?format=nifti", None, "application/gzip"),
        ("", "application/gzip", "application/gzip"),
        ("", "application/dicom", "application/dicom"),
        ("?format=dicom-seg", "application/gzip", "application/dicom"),  # the parameter wins
        ("?format=json", None, "application/json"),
    ],
)
def test_output_chosen_by_format_or_accept(
    tmp_path: Path, case: PhantomCase, query: str, accept: str | None, expected: str
) -> None:
    headers = {"Accept": accept} if accept else {}
    with running(make_settings(tmp_path)) as client:
        r = client.post(
            f"/segment{query}",
            files={"file": ("s.zip", _zip_bytes(case), "application/zip")},
            headers=headers,
        )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(expected)
    if expected == "application/gzip":  # the NIfTI mask of a DICOM input lies on the DICOM grid
        out = tmp_path / "mask.nii.gz"
        out.write_bytes(r.content)
        mask = sitk.ReadImage(str(out))
        truth = _fake_mask(case)
        points = np.array(
            [mask.TransformIndexToPhysicalPoint((i, j, k)) for i, j, k in [(0, 0, 0), (5, 7, 3)]]
        )
        for p, index in zip(points, [(0, 0, 0), (5, 7, 3)], strict=True):
            assert mask.GetPixel(index) == truth.GetPixel(truth.TransformPhysicalPointToIndex(p))
        assert int(sitk.GetArrayViewFromImage(mask).sum()) == int(sitk.GetArrayViewFromImage(truth).sum())
    if expected == "application/json":
        body = r.json()
        assert "axial, 14 slices" in body["source_series"]


def test_dicom_seg_of_a_nifti_upload_is_a_422(tmp_path: Path, case: PhantomCase) -> None:
    with running(make_settings(tmp_path)) as client:
        r = client.post(
            "/segment?format=dicom-seg",
            files={"file": ("ct.nii.gz", case.image_nifti.read_bytes(), "application/gzip")},
        )
    assert r.status_code == 422
    assert "a DICOM SEG needs DICOM input" in r.json()["detail"]


@pytest.mark.parametrize(
    ("members", "status", "reason"),
    [
        ({"../../evil.dcm": b"x"}, 422, "has a '..' path component; refusing the archive"),
        ({"readme.txt": b"hello"}, 422, "no DICOM files found"),
    ],
)
def test_bad_archives(tmp_path: Path, members: dict[str, bytes], status: int, reason: str) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    with running(make_settings(tmp_path)) as client:
        r = _post(client, buffer.getvalue())
    assert r.status_code == status, r.text
    assert reason in r.json()["detail"]
    assert "\n" not in r.json()["detail"]


def test_job_with_dicom_seg_result(tmp_path: Path, case: PhantomCase) -> None:
    with running(make_settings(tmp_path)) as client:
        r = client.post("/jobs", files={"file": ("s.zip", _zip_bytes(case), "application/zip")})
        assert r.status_code == 202, r.text
        status_url, result_url = r.json()["status_url"], r.json()["result_url"]
        wait_until(lambda: client.get(status_url).json()["status"] in ("done", "failed"))
        assert client.get(status_url).json()["status"] == "done"
        result = client.get(result_url)
    assert result.status_code == 200
    assert result.headers["content-type"] == "application/dicom"
    seg_path = tmp_path / "job.dcm"
    seg_path.write_bytes(result.content)
    assert_seg_matches_mask(seg_path, _fake_mask(case))

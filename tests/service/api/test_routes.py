"""Tests for flare_seg.service.api.routes: /segment (mask and JSON answers) and /models.

With a fake segmenter (no TensorFlow, no models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from fastapi.encoders import jsonable_encoder
from fastapi.testclient import TestClient

from flare_seg.service.api import create_app
from tests.service.api.conftest import (
    make_settings,
    read_mask,
    service_of,
    upload,
    wait_until,
)
from tests.service.conftest import (
    ANISOTROPIC_SPACING_MM_XYZ,
    make_ct,
)

pytestmark = pytest.mark.usefixtures("clean_env")


def test_segment_returns_mask_with_exact_geometry(client: TestClient, ct_file: Path, tmp_path: Path) -> None:
    response = client.post("/segment", **upload(ct_file.read_bytes()))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/gzip"
    assert response.headers["content-disposition"] == 'attachment; filename="case01_mask.nii.gz"'
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
    assert response.headers["content-disposition"] == 'attachment; filename="plain_mask.nii.gz"'
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
    assert {"localization", "segmentation", "read_s", "write_s"} <= set(body["timings_s"])
    assert all(v == round(v, 4) and "e" not in str(v) for v in body["timings_s"].values())
    assert body["size_xyz"] == list(make_ct().GetSize())
    assert body["inference_seconds"] >= 0
    assert body["warnings"] == []
    assert "mask" not in body


def test_bad_format_parameter(client: TestClient, ct_bytes: bytes) -> None:
    response = client.post("/segment?format=png", **upload(ct_bytes))
    assert response.status_code == 422
    assert "format" in response.json()["detail"]


def test_models_returns_manifest(client: TestClient) -> None:
    response = client.get("/models")
    assert response.status_code == 200
    assert response.json() == {"model_version": "fake-1.0", "labels": {"1": "liver", "2": "kidney"}}


def test_warnings_reach_the_client_in_both_formats(client: TestClient, ct_bytes: bytes) -> None:
    warning = "the image holds no air (its lowest value is 24 on the localization grid, ...): ..."
    service_of(client).segmenter.warnings = (warning,)
    response = client.post("/segment", **upload(ct_bytes))
    assert response.status_code == 200 and json.loads(response.headers["x-warnings"]) == [warning]
    response = client.post("/segment?format=json", **upload(ct_bytes))
    assert response.status_code == 200 and response.json()["warnings"] == [warning]


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


@pytest.mark.parametrize("upload_name", ["ct.nii.gz", "ct_0000.nii.gz", "ct.nii", "x_mask.nii.gz", "a b.nii"])
def test_mask_download_name_is_never_the_upload_name(upload_name: str) -> None:
    """The name ``curl -OJ`` saves the mask under differs from the CT's, so it cannot overwrite it."""
    from flare_seg.service.api.routes import mask_filename
    from flare_seg.service.api.uploads import case_name

    name = mask_filename(case_name(upload_name))
    assert name != upload_name and name.endswith("_mask.nii.gz")


def test_json_summary_with_statistics(client: TestClient, ct_file: Path) -> None:
    """``?statistics=true``: per-organ statistics in the JSON summary, from the CT's own voxels."""
    plain = client.post("/segment?format=json", **upload(ct_file.read_bytes()))
    assert plain.status_code == 200 and plain.json()["statistics"] is None
    response = client.post("/segment?format=json&statistics=true", **upload(ct_file.read_bytes()))
    assert response.status_code == 200, response.text
    stats = response.json()["statistics"]
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(ct_file)))
    liver = ct > 100  # what the fake segmenter calls liver
    assert stats["liver"]["voxel_count"] == int(liver.sum())
    assert stats["liver"]["hu_mean"] == pytest.approx(float(ct[liver].mean()), abs=0.01)
    assert stats["liver"]["hu_std"] == pytest.approx(float(ct[liver].std()), abs=0.01)
    assert set(stats["liver"]["box_mm"]) == {"min_mm_xyz", "max_mm_xyz"}
    assert len(stats["liver"]["centroid_mm_xyz"]) == 3
    assert stats["kidney"]["voxel_count"] == 0 and stats["kidney"]["box_mm"] is None
    assert stats["liver"]["volume_ml"] == pytest.approx(response.json()["volumes_ml"]["liver"], abs=1e-3)

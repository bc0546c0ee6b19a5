"""bench/realct_versions.py: each version of a labelled CT keeps its image and reference on one grid,
with the organs where they were in the patient, and the script scores every version."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "realct_versions.py"


@pytest.fixture(scope="module")
def rv():
    spec = importlib.util.spec_from_file_location("realct_versions", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["realct_versions"] = module
    spec.loader.exec_module(module)
    return module


def _labelled_ct() -> tuple[sitk.Image, sitk.Image]:
    """A 3 mm body with four labelled blocks, stored flipped in x and y (as the real CT is)."""
    ct = np.full((30, 40, 48), -1000, np.int16)
    ct[:, 4:36, 4:44] = 10
    lab = np.zeros(ct.shape, np.uint8)
    lab[8:24, 10:26, 8:22] = 1
    lab[6:16, 26:32, 26:32] = 2
    lab[14:24, 24:32, 34:42] = 3
    lab[12:16, 16:22, 24:34] = 4
    ct[lab > 0] = 40
    images = []
    for array in (ct, lab):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((3.0, 3.0, 3.0))
        image.SetOrigin((70.0, 60.0, -100.0))
        image.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
        images.append(image)
    return images[0], images[1]


def _centroid_mm(labels: sitk.Image, k: int) -> np.ndarray:
    index = np.argwhere(sitk.GetArrayViewFromImage(labels) == k).mean(axis=0)[::-1]
    return np.array(labels.TransformContinuousIndexToPhysicalPoint([float(v) for v in index]))


def test_every_version_keeps_image_and_reference_on_one_grid_and_organs_in_place(rv):
    ct, lab = _labelled_ct()
    names = []
    for name, build in rv.versions(ct, lab):
        names.append(name)
        image, reference = build()
        for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
            assert getattr(image, get)() == pytest.approx(getattr(reference, get)()), (name, get)
        if "slices" in name:
            continue  # cut: the organs' visible parts move
        for k in (1, 2, 3, 4):
            # within a voxel of where the stored CT has it, whatever the grid
            assert np.linalg.norm(_centroid_mm(reference, k) - _centroid_mm(lab, k)) < 3.0, (name, k)
            inside = sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(reference) == k]
            assert np.median(inside) >= 30, (name, k)  # the organ's HU came along with its label
    assert len(names) == len(set(names)) == 11
    assert "oblique" in names and "portal_venous" in names


def test_the_versions_are_what_their_names_say(rv):
    ct, lab = _labelled_ct()
    built = {name: build() for name, build in rv.versions(ct, lab)}
    oblique = np.asarray(built["oblique"][0].GetDirection()).reshape(3, 3)
    assert not np.allclose(np.abs(oblique), np.round(np.abs(oblique)))  # not axis-aligned
    assert built["lps"][0].GetDirection() == pytest.approx(np.eye(3).ravel())
    assert built["fine_0.8x0.8x1.6"][0].GetSpacing() == pytest.approx((0.8, 0.8, 1.6))
    assert built["thick_5mm"][0].GetSpacing() == pytest.approx((3.0, 3.0, 5.0))
    assert built["first_85pct_slices"][0].GetSize()[2] == round(30 * 0.85)
    circle = sitk.GetArrayViewFromImage(built["fov500_circle"][0])
    assert circle.shape[1:] == (167, 167) and circle[0, 0, 0] == -2000 and circle[0, 83, 83] == 10
    organs = sitk.GetArrayViewFromImage(lab) > 0
    raised = sitk.GetArrayViewFromImage(built["portal_venous"][0]).astype(int) - sitk.GetArrayViewFromImage(
        ct
    )
    assert np.median(raised[sitk.GetArrayViewFromImage(lab) == 2]) > 100  # kidneys +140 HU
    assert np.abs(raised[~organs]).max() <= 140 and np.median(raised[~organs]) == 0


def test_the_script_scores_every_version_and_refuses_a_missing_ct(rv, tiny_models, tmp_path):
    ct, lab = _labelled_ct()
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(lab, str(tmp_path / "labels.nii.gz"))
    out = tmp_path / "report.json"
    argv = ["--ct", str(tmp_path / "ct.nii.gz"), "--labels", str(tmp_path / "labels.nii.gz")]
    assert rv.main([*argv, "--models-dir", str(tiny_models), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert len(report["versions"]) == 11
    for scores in report["versions"].values():
        assert set(scores) == {"liver", "kidney", "spleen", "pancreas"}
        assert all(0.0 <= v <= 1.0 for v in scores.values())
    for organ, mean in report["mean"].items():
        assert mean == pytest.approx(np.mean([s[organ] for s in report["versions"].values()]), abs=1e-4)
    assert rv.main(["--ct", str(tmp_path / "absent.nii.gz"), "--out", str(out)]) == 2

"""Tests of flare_seg.evaluation: Dice, NSD, geometry checks and the folder evaluation."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from flare_seg.evaluation import (
    EvaluationReport,
    _surface_elements,
    _surfel_area_table,
    dice,
    evaluate_case,
    evaluate_dirs,
    normalized_surface_distance,
)
from flare_seg.labels import ORGANS

# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _cube(shape: tuple[int, int, int], start: tuple[int, int, int], size: int) -> np.ndarray:
    """A boolean z,y,x array holding one cube of edge ``size`` voxels starting at ``start``."""
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + size) for s in start)] = True
    return mask


def _brute_force_nsd(
    pred: np.ndarray, ref: np.ndarray, spacing_mm_zyx: tuple[float, float, float], tol: float
) -> float:
    """NSD straight from the definition: every voxel corner of the zero-padded arrays, its 2x2x2
    neighbourhood code read voxel by voxel, all-pairs distances between surface corners."""
    table = _surfel_area_table(spacing_mm_zyx)

    def surface(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        padded = np.pad(mask, 1)
        coords, areas = [], []
        for corner in itertools.product(*(range(n + 1) for n in mask.shape)):
            code = 0
            for a, b, c in itertools.product((0, 1), repeat=3):
                if padded[corner[0] + a, corner[1] + b, corner[2] + c]:
                    code |= 1 << (4 * a + 2 * b + c)
            if code not in (0, 255):
                coords.append(np.array(corner) * np.array(spacing_mm_zyx))
                areas.append(table[code])
        return np.array(coords), np.array(areas)

    pred_xyz, pred_area = surface(pred)
    ref_xyz, ref_area = surface(ref)
    distances = np.linalg.norm(pred_xyz[:, None, :] - ref_xyz[None, :, :], axis=-1)
    within = pred_area[distances.min(axis=1) <= tol].sum() + ref_area[distances.min(axis=0) <= tol].sum()
    return float(within / (pred_area.sum() + ref_area.sum()))


def _ellipsoid(
    shape: tuple[int, int, int], centre: tuple[float, ...], radii_vox: tuple[float, ...]
) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    return sum(((grid[i] - centre[i]) / radii_vox[i]) ** 2 for i in range(3)) <= 1.0


def _image(array_zyx: np.ndarray, spacing_xyz: tuple[float, float, float], **geometry: object) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx.astype(np.uint8))
    image.SetSpacing(spacing_xyz)
    if "origin" in geometry:
        image.SetOrigin(geometry["origin"])
    if "direction" in geometry:
        image.SetDirection(geometry["direction"])
    return image


SPACING_XYZ = (0.8, 0.8, 2.5)  # anisotropic, x,y,z as SimpleITK has it
ORIGIN_XYZ = (120.0, -35.5, 400.0)
FLIP_XY = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # diag(-1, -1, 1), LPS <-> RAS style


def _phantom_labels(shape_zyx: tuple[int, int, int] = (8, 12, 14), with_pancreas: bool = True) -> np.ndarray:
    """A z,y,x label array with one box per organ (pancreas optional)."""
    labels = np.zeros(shape_zyx, dtype=np.uint8)
    labels[1:6, 1:6, 1:7] = 1  # liver
    labels[2:5, 7:10, 2:5] = 2  # kidney
    labels[2:6, 7:11, 8:12] = 3  # spleen
    if with_pancreas:
        labels[5:7, 2:5, 9:13] = 4  # pancreas
    return labels


# --------------------------------------------------------------------------------------------------
# dice
# --------------------------------------------------------------------------------------------------


def test_dice_of_shifted_cubes() -> None:
    a = _cube((10, 10, 10), (2, 2, 2), 4)  # 64 voxels
    b = _cube((10, 10, 10), (2, 2, 4), 4)  # 64 voxels, overlap 4*4*2 = 32
    assert dice(a, b) == pytest.approx(2 * 32 / 128)
    c = _cube((10, 10, 10), (3, 3, 3), 2)  # 8 voxels, inside a
    assert dice(a, c) == pytest.approx(2 * 8 / (64 + 8))


def test_dice_edge_cases() -> None:
    a = _cube((6, 6, 6), (1, 1, 1), 3)
    empty = np.zeros_like(a)
    assert dice(a, a) == 1.0
    assert dice(empty, empty) == 1.0
    assert dice(a, empty) == 0.0
    assert dice(empty, a) == 0.0
    assert dice(a.astype(np.uint8) * 7, a) == 1.0  # non-zero is foreground
    with pytest.raises(ValueError, match="shape"):
        dice(a, a[:-1])


# --------------------------------------------------------------------------------------------------
# NSD
# --------------------------------------------------------------------------------------------------


def test_nsd_identical_far_apart_and_empty() -> None:
    shape = (12, 12, 30)
    a = _cube(shape, (4, 4, 2), 4)
    far = _cube(shape, (4, 4, 22), 4)
    empty = np.zeros(shape, dtype=bool)
    assert normalized_surface_distance(a, a, (1.0, 1.0, 1.0)) == 1.0
    assert normalized_surface_distance(a, far, (1.0, 1.0, 1.0), tolerance_mm=5.0) == 0.0
    assert normalized_surface_distance(empty, empty, (1.0, 1.0, 1.0)) == 1.0
    assert normalized_surface_distance(a, empty, (1.0, 1.0, 1.0)) == 0.0
    assert normalized_surface_distance(empty, a, (1.0, 1.0, 1.0)) == 0.0


def test_nsd_one_voxel_shift_against_tolerance() -> None:
    """Cube of edge 4 voxels at 1 mm, prediction shifted by one voxel along x: every surface element
    of either cube is 0 or 1 mm from the other surface, so 1 mm (``<=``) gives 1. At 0.5 mm only the
    elements the two surfaces share count: the sides along x, not the end caps."""
    ref = _cube((10, 10, 10), (3, 3, 3), 4)
    pred = _cube((10, 10, 10), (3, 3, 4), 4)
    spacing = (1.0, 1.0, 1.0)
    assert normalized_surface_distance(pred, ref, spacing, tolerance_mm=2.0) == 1.0
    assert normalized_surface_distance(pred, ref, spacing, tolerance_mm=1.0) == 1.0
    half = normalized_surface_distance(pred, ref, spacing, tolerance_mm=0.5)
    assert 0.4 < half < 0.8
    assert half == pytest.approx(_brute_force_nsd(pred, ref, spacing, 0.5))


def test_nsd_anisotropic_spacing_follows_the_axis_order() -> None:
    """Spacing (z, y, x) = (3, 1, 1) mm: a one-voxel shift along x is 1 mm, along z 3 mm."""
    spacing = (3.0, 1.0, 1.0)
    ref = _cube((10, 10, 10), (3, 3, 3), 4)
    along_x = _cube((10, 10, 10), (3, 3, 4), 4)
    along_z = _cube((10, 10, 10), (4, 3, 3), 4)
    assert normalized_surface_distance(along_x, ref, spacing, tolerance_mm=2.0) == 1.0
    assert normalized_surface_distance(along_z, ref, spacing, tolerance_mm=2.0) < 0.9
    assert normalized_surface_distance(along_z, ref, spacing, tolerance_mm=3.0) == 1.0


def test_nsd_matches_brute_force_on_random_blobs() -> None:
    """The cropped EDT implementation against the definition, with masks touching the array edge."""
    rng = np.random.default_rng(0)
    spacing = (2.5, 0.8, 1.2)
    for _ in range(3):
        pred = rng.random((7, 9, 8)) < 0.35
        ref = rng.random((7, 9, 8)) < 0.35
        for tol in (0.0, 1.0, 2.6):
            assert normalized_surface_distance(pred, ref, spacing, tol) == pytest.approx(
                _brute_force_nsd(pred, ref, spacing, tol)
            )


def test_nsd_equals_deepminds_surface_distance() -> None:
    """Reference values from DeepMind's ``surface-distance`` package (compute_surface_distances +
    compute_surface_dice_at_tolerance), the code behind FLARE21's official NSD, on the same masks."""
    spacing = (2.5, 0.8, 1.2)
    ref = _ellipsoid((12, 30, 24), (5.5, 14.0, 11.0), (4.0, 10.0, 8.0))
    pred = _ellipsoid((12, 30, 24), (6.0, 15.0, 12.5), (3.6, 11.0, 7.5))
    expected = {0.0: 0.47084136304154933, 1.0: 0.6186727138946212, 2.6: 0.9759062847449962}
    for tol, value in expected.items():
        assert normalized_surface_distance(pred, ref, spacing, tol) == pytest.approx(value, abs=1e-12)
    rng = np.random.default_rng(0)
    pred, ref = rng.random((7, 9, 8)) < 0.35, rng.random((7, 9, 8)) < 0.35
    expected = {0.0: 0.8916834677488205, 1.0: 0.9824379271213177, 2.6: 1.0}
    for tol, value in expected.items():
        assert normalized_surface_distance(pred, ref, spacing, tol) == pytest.approx(value, abs=1e-12)


def test_surfel_areas_by_hand() -> None:
    """A lone voxel's corner cuts a triangle through three edge midpoints; four voxels on one side
    of a plane give that plane's cross-section; a configuration and its complement the same area."""
    a, b, c = 2.5, 0.8, 1.2
    table = _surfel_area_table((a, b, c))
    assert table[0] == table[255] == 0.0
    triangle = math.sqrt((b * c) ** 2 + (a * c) ** 2 + (a * b) ** 2) / 8  # half the cross product
    for bit in range(8):
        assert table[1 << bit] == pytest.approx(triangle)
    assert table[0b00001111] == pytest.approx(b * c)  # voxels a = 0 inside: plane normal to z
    assert table[0b00110011] == pytest.approx(a * c)  # b = 0 inside: normal to y
    assert table[0b01010101] == pytest.approx(a * b)  # c = 0 inside: normal to x
    np.testing.assert_allclose(table, table[::-1])


def test_surface_area_of_a_ball() -> None:
    """Marching-cubes surface elements of a voxelized ball add up to its area plus the terracing of
    a binary surface (about 10%), also with anisotropic voxels; voxel faces would add about 50%."""
    spacing = (2.0, 0.8, 1.0)
    radius_mm = 15.0
    shape = (20, 44, 36)
    ball = _ellipsoid(shape, tuple((n - 1) / 2 for n in shape), tuple(radius_mm / s for s in spacing))
    _, areas = _surface_elements(np.pad(ball, 1), spacing)
    assert 1.05 < areas.sum() / (4 * math.pi * radius_mm**2) < 1.15


def test_nsd_crop_is_translation_invariant() -> None:
    """The same pair at the array corner (touching the edge) and well inside gives the same NSD."""
    spacing = (2.0, 1.0, 0.7)
    small_ref = _cube((5, 5, 5), (0, 0, 0), 4)
    small_pred = _cube((5, 5, 5), (1, 0, 1), 4)
    big_ref = np.zeros((20, 20, 20), dtype=bool)
    big_pred = np.zeros((20, 20, 20), dtype=bool)
    big_ref[8:13, 8:13, 8:13] = small_ref
    big_pred[8:13, 8:13, 8:13] = small_pred
    assert normalized_surface_distance(small_pred, small_ref, spacing, 1.5) == pytest.approx(
        normalized_surface_distance(big_pred, big_ref, spacing, 1.5)
    )


@pytest.mark.parametrize(
    ("spacing", "tolerance"),
    [((1.0, 1.0), 1.0), ((1.0, 0.0, 1.0), 1.0), ((1.0, 1.0, float("nan")), 1.0), ((1.0, 1.0, 1.0), -1.0)],
)
def test_nsd_rejects_bad_arguments(spacing: tuple[float, ...], tolerance: float) -> None:
    a = _cube((6, 6, 6), (1, 1, 1), 3)
    with pytest.raises(ValueError):
        normalized_surface_distance(a, a, spacing, tolerance)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# evaluate_case
# --------------------------------------------------------------------------------------------------


def test_evaluate_case_scores_each_organ_and_flips_spacing_once() -> None:
    labels = _phantom_labels()
    ref = _image(labels, (1.0, 1.0, 3.0), origin=ORIGIN_XYZ, direction=FLIP_XY)  # z is the 3 mm axis
    pred_labels = labels.copy()
    pred_labels[labels == 3] = 0  # spleen missed
    pred_labels[pred_labels == 1] = 0
    pred_labels[2:7, 1:6, 1:7][labels[1:6, 1:6, 1:7] == 1] = 1  # liver shifted by one voxel along z
    pred = _image(pred_labels, (1.0, 1.0, 3.0), origin=ORIGIN_XYZ, direction=FLIP_XY)

    scores = evaluate_case(pred, ref, tolerance_mm=2.0)

    assert list(scores) == list(ORGANS.values())
    assert scores["kidney"] == {"dice": 1.0, "nsd": 1.0}
    assert scores["pancreas"] == {"dice": 1.0, "nsd": 1.0}
    assert scores["spleen"] == {"dice": 0.0, "nsd": 0.0}
    assert scores["liver"]["dice"] == pytest.approx(2 * 4 / 10)  # 5 slices each, 4 shared
    # a 3 mm shift is outside 2 mm: if the spacing were not flipped, z would be 1 mm and NSD 1
    assert scores["liver"]["nsd"] < 1.0
    assert evaluate_case(pred, ref, tolerance_mm=3.0)["liver"]["nsd"] == 1.0


@pytest.mark.parametrize(
    ("attribute", "value", "message"),
    [
        ("spacing", (0.8, 0.8, 2.0), "spacing"),
        ("origin", (120.0, -35.5, 401.0), "origin"),
        ("direction", (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), "direction"),
    ],
)
def test_evaluate_case_rejects_geometry_mismatch(
    attribute: str, value: tuple[float, ...], message: str
) -> None:
    labels = _phantom_labels()
    ref = _image(labels, SPACING_XYZ, origin=ORIGIN_XYZ, direction=FLIP_XY)
    pred = _image(labels, SPACING_XYZ, origin=ORIGIN_XYZ, direction=FLIP_XY)
    getattr(pred, f"Set{attribute.capitalize()}")(value)
    with pytest.raises(ValueError, match=message):
        evaluate_case(pred, ref)


def test_evaluate_case_rejects_size_mismatch_and_tolerates_rounding() -> None:
    labels = _phantom_labels()
    ref = _image(labels, SPACING_XYZ, origin=ORIGIN_XYZ, direction=FLIP_XY)
    with pytest.raises(ValueError, match="size"):
        evaluate_case(_image(labels[:-1], SPACING_XYZ, origin=ORIGIN_XYZ, direction=FLIP_XY), ref)
    nearly = _image(
        labels,
        tuple(s + 1e-6 for s in SPACING_XYZ),
        origin=tuple(o + 1e-5 for o in ORIGIN_XYZ),
        direction=FLIP_XY,
    )
    assert evaluate_case(nearly, ref)["liver"] == {"dice": 1.0, "nsd": 1.0}


# --------------------------------------------------------------------------------------------------
# evaluate_dirs
# --------------------------------------------------------------------------------------------------


def _write(image: sitk.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)


def test_evaluate_dirs_end_to_end_with_missing_prediction(tmp_path: Path) -> None:
    label_dir, pred_dir, out_dir = tmp_path / "labels", tmp_path / "preds", tmp_path / "out"
    geometry = {"origin": ORIGIN_XYZ, "direction": FLIP_XY}
    labels_a = _phantom_labels()
    labels_b = _phantom_labels(with_pancreas=False)
    _write(_image(labels_a, SPACING_XYZ, **geometry), label_dir / "case_a.nii.gz")
    _write(_image(labels_b, SPACING_XYZ, **geometry), label_dir / "case_b.nii.gz")
    pred_a = labels_a.copy()
    pred_a[pred_a == 3] = 0  # spleen missed in case a
    _write(_image(pred_a, SPACING_XYZ, **geometry), pred_dir / "case_a.nii.gz")
    _write(_image(labels_a, SPACING_XYZ, **geometry), pred_dir / "no_label.nii.gz")  # ignored

    report = evaluate_dirs(pred_dir, label_dir, tolerance_mm=1.0, out_dir=out_dir)

    expected = {
        "case_a": {
            "liver": {"dice": 1.0, "nsd": 1.0},
            "kidney": {"dice": 1.0, "nsd": 1.0},
            "spleen": {"dice": 0.0, "nsd": 0.0},
            "pancreas": {"dice": 1.0, "nsd": 1.0},
        },
        "case_b": {  # missing: 0 for organs in the label, 1 for the absent pancreas
            "liver": {"dice": 0.0, "nsd": 0.0},
            "kidney": {"dice": 0.0, "nsd": 0.0},
            "spleen": {"dice": 0.0, "nsd": 0.0},
            "pancreas": {"dice": 1.0, "nsd": 1.0},
        },
    }
    assert isinstance(report, EvaluationReport)
    assert report.per_case == expected
    assert report.missing == ["case_b"]
    assert report.mean["liver"] == {"dice": 0.5, "nsd": 0.5}
    assert report.std["liver"] == {"dice": 0.5, "nsd": 0.5}
    assert report.mean["spleen"] == {"dice": 0.0, "nsd": 0.0}
    assert report.std["pancreas"] == {"dice": 0.0, "nsd": 0.0}

    with (out_dir / "evaluation.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["case"], r["organ"]) for r in rows] == [
        (case, organ) for case in ("case_a", "case_b") for organ in ORGANS.values()
    ]
    for row in rows:
        assert float(row["dice"]) == expected[row["case"]][row["organ"]]["dice"]
        assert float(row["nsd"]) == expected[row["case"]][row["organ"]]["nsd"]

    saved = json.loads((out_dir / "evaluation.json").read_text())
    assert saved["cases"] == expected
    assert saved["missing"] == ["case_b"]
    assert saved["mean"] == report.mean
    assert saved["std"] == report.std
    assert saved["tolerance_mm"] == 1.0
    assert sorted(p.name for p in out_dir.iterdir()) == ["evaluation.csv", "evaluation.json"]  # no temp files

    table = report.summary_table()
    assert all(organ in table for organ in ORGANS.values())
    assert "0.5000 ± 0.5000" in table
    assert "case_b" in table


def test_evaluate_dirs_names_and_default_out_dir(tmp_path: Path) -> None:
    """Predictions named like FLARE images (<case>_0000) are found; results land in pred_dir."""
    label_dir, pred_dir = tmp_path / "labels", tmp_path / "preds"
    labels = _phantom_labels()
    _write(_image(labels, SPACING_XYZ, direction=FLIP_XY), label_dir / "train_001.nii.gz")
    _write(_image(labels, SPACING_XYZ, direction=FLIP_XY), pred_dir / "train_001_0000.nii.gz")

    report = evaluate_dirs(pred_dir, label_dir)

    assert report.missing == []
    assert report.per_case["train_001"]["liver"] == {"dice": 1.0, "nsd": 1.0}
    assert (pred_dir / "evaluation.csv").is_file()
    assert (pred_dir / "evaluation.json").is_file()


def test_evaluate_dirs_errors(tmp_path: Path) -> None:
    label_dir, pred_dir = tmp_path / "labels", tmp_path / "preds"
    label_dir.mkdir()
    pred_dir.mkdir()
    with pytest.raises(ValueError, match="no"):
        evaluate_dirs(pred_dir, label_dir)
    with pytest.raises(FileNotFoundError):
        evaluate_dirs(tmp_path / "nope", label_dir)
    labels = _phantom_labels()
    _write(_image(labels, SPACING_XYZ, direction=FLIP_XY), label_dir / "c1.nii.gz")
    _write(_image(labels, SPACING_XYZ), pred_dir / "c1.nii.gz")  # identity direction
    with pytest.raises(ValueError, match=r"c1.*direction"):
        evaluate_dirs(pred_dir, label_dir)


def test_evaluate_dirs_refuses_broken_files_naming_the_case(tmp_path: Path) -> None:
    """A truncated prediction is an error, not a zero-filled mask scored as a poor segmentation; a
    file that is no NIfTI, prediction or label, is an error naming the case, not a traceback."""
    label_dir, pred_dir = tmp_path / "labels", tmp_path / "preds"
    labels = np.zeros((40, 64, 64), np.uint8)
    labels[5:35, 10:50, 10:40] = 1
    labels[10:30, 20:40, 45:60] = 3
    _write(_image(labels, SPACING_XYZ, direction=FLIP_XY), label_dir / "c1.nii.gz")
    _write(_image(labels, SPACING_XYZ, direction=FLIP_XY), pred_dir / "c1.nii.gz")
    assert evaluate_dirs(pred_dir, label_dir).per_case["c1"]["liver"]["dice"] == 1.0

    whole = (pred_dir / "c1.nii.gz").read_bytes()
    (pred_dir / "c1.nii.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"case c1 .*truncated"):
        evaluate_dirs(pred_dir, label_dir)

    (pred_dir / "c1.nii.gz").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"case c1 .*not a NIfTI"):
        evaluate_dirs(pred_dir, label_dir)

    (pred_dir / "c1.nii.gz").write_bytes(whole)
    (label_dir / "c1.nii.gz").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"case c1: label .*not a NIfTI"):
        evaluate_dirs(pred_dir, label_dir)


def test_evaluate_command_reports_a_broken_prediction_in_one_line(tmp_path: Path, capsys) -> None:
    from flare_seg.cli import main

    label_dir, pred_dir = tmp_path / "labels", tmp_path / "preds"
    labels = _phantom_labels()
    _write(_image(labels, SPACING_XYZ), label_dir / "c1.nii.gz")
    pred_dir.mkdir()
    (pred_dir / "c1.nii.gz").write_bytes(b"\x1f\x8b garbage")
    assert main(["evaluate", str(pred_dir), str(label_dir)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flare-seg evaluate: error: case c1")
    assert not (pred_dir / "evaluation.json").exists()


def test_a_ct_given_as_labels_is_refused(tmp_path: Path, caplog) -> None:
    label_dir, pred_dir = tmp_path / "labels", tmp_path / "preds"
    labels = _phantom_labels()
    ct = np.where(labels > 0, 40, -1000).astype(np.int16)
    _write(_image(labels, SPACING_XYZ), label_dir / "c1.nii.gz")
    image = sitk.GetImageFromArray(ct)
    image.SetSpacing(SPACING_XYZ)
    _write(image, pred_dir / "c1.nii.gz")
    with pytest.raises(ValueError, match=r"case c1 .*not a label image: its values run from -1000 to 40"):
        evaluate_dirs(pred_dir, label_dir)
    wider = labels.copy()
    wider[0, 0, 0] = 13  # a label this evaluation does not score
    _write(_image(wider, SPACING_XYZ), pred_dir / "c1.nii.gz")
    assert evaluate_dirs(pred_dir, label_dir).per_case["c1"]["liver"]["dice"] == 1.0
    assert "labels above 4 (up to 13)" in caplog.text

"""Per-organ statistics against independent computations (SimpleITK's label shape filter, numpy on
the whole volume), on grids with anisotropic spacing and flipped, permuted and oblique directions."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import SimpleITK as sitk

from flare_seg.geometry import Geometry, image_from_array_zyx
from flare_seg.labels import ORGANS
from flare_seg.statistics import (
    CSV_COLUMNS,
    organ_statistics,
    statistics_csv_text,
    write_statistics_json,
)

PERMUTED_FLIPPED = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
c, s = np.cos(0.3), np.sin(0.3)
OBLIQUE = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)


def _case(direction: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, Geometry]:
    rng = np.random.default_rng(7)
    shape_zyx = (23, 17, 29)
    labels = np.zeros(shape_zyx, np.uint8)
    labels[3:15, 2:9, 4:20] = 1
    labels[10:20, 10:15, 1:8] = 2
    labels[0:4, 12:17, 20:29] = 3  # touches the edges of the grid
    labels[rng.random(shape_zyx) < 0.02] = 4  # scattered voxels
    ct = rng.normal(40, 25, shape_zyx).astype(np.int16)
    geometry = Geometry((29, 17, 23), (0.7, 0.9, 2.5), (-12.0, 30.5, 100.0), direction)
    return labels, ct, geometry


@pytest.mark.parametrize("direction", [(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), PERMUTED_FLIPPED, OBLIQUE])
def test_statistics_match_simpleitk_and_numpy(direction: tuple[float, ...]) -> None:
    labels, ct, geometry = _case(direction)
    # A slab of two slices (and a ragged last one): every accumulator crosses slab borders.
    stats = organ_statistics(labels, ct, geometry, slab_voxels=2 * 17 * 29)
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(image_from_array_zyx(labels, geometry))
    for k, name in ORGANS.items():
        s = stats[name]
        inside = labels == k
        assert s.organ == name and s.label == k
        assert s.voxel_count == int(inside.sum()) == shape.GetNumberOfPixels(k)
        assert s.volume_ml == pytest.approx(inside.sum() * 0.7 * 0.9 * 2.5 / 1000, abs=1e-3)
        assert s.hu_mean == pytest.approx(ct[inside].mean(), abs=0.006)
        assert s.hu_std == pytest.approx(ct[inside].std(), abs=0.006)
        assert s.centroid_mm == pytest.approx(shape.GetCentroid(k), abs=0.006)
        # The box's corners enclose every voxel's corners, and are reached by some of them.
        zyx = np.argwhere(inside)
        offsets = np.array([[dx, dy, dz] for dx in (-0.5, 0.5) for dy in (-0.5, 0.5) for dz in (-0.5, 0.5)])
        pts = geometry.index_to_physical_xyz((zyx[:, ::-1][:, None, :] + offsets[None]).reshape(-1, 3))
        if direction != OBLIQUE:  # axis-aligned: the box is exactly the voxels' envelope
            assert s.box_mm == (
                pytest.approx(tuple(pts.min(axis=0)), abs=0.006),
                pytest.approx(tuple(pts.max(axis=0)), abs=0.006),
            )
        else:  # oblique: the LPS envelope of the grid-aligned box, so it contains the voxels
            assert np.all(np.asarray(s.box_mm[0]) <= pts.min(axis=0) + 0.006)
            assert np.all(np.asarray(s.box_mm[1]) >= pts.max(axis=0) - 0.006)


def test_absent_organ_and_no_ct() -> None:
    labels, _, geometry = _case((1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    labels[labels == 3] = 0
    stats = organ_statistics(labels, None, geometry)
    assert stats["spleen"].voxel_count == 0 and stats["spleen"].volume_ml == 0.0
    assert stats["spleen"].box_mm is None and stats["spleen"].centroid_mm is None
    assert stats["liver"].voxel_count > 0 and stats["liver"].hu_mean is None


def test_organ_subset_and_float_ct() -> None:
    labels, ct, geometry = _case((1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    stats = organ_statistics(labels, ct.astype(np.float32) + 0.25, geometry, organs={1: "liver"})
    assert list(stats) == ["liver"]
    assert stats["liver"].hu_mean == pytest.approx(ct[labels == 1].mean() + 0.25, abs=0.006)


def test_shape_mismatch_is_an_error() -> None:
    labels, ct, geometry = _case((1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    with pytest.raises(ValueError, match="does not match"):
        organ_statistics(labels, ct[:-1], geometry)
    with pytest.raises(ValueError, match="do not match"):
        organ_statistics(labels[:-1], None, geometry)


def test_json_and_csv_writers(tmp_path) -> None:
    labels, ct, geometry = _case((1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    labels[labels == 3] = 0
    stats = organ_statistics(labels, ct, geometry)
    path = tmp_path / "case_statistics.json"
    write_statistics_json(path, stats)
    doc = json.loads(path.read_text())
    assert list(doc) == list(ORGANS.values())
    assert doc["liver"]["voxel_count"] == int((labels == 1).sum())
    box = stats["liver"].box_mm
    assert doc["liver"]["box_mm"] == {"min_mm_xyz": list(box[0]), "max_mm_xyz": list(box[1])}
    assert doc["liver"]["centroid_mm_xyz"] == list(stats["liver"].centroid_mm)
    assert doc["spleen"]["hu_mean"] is None and doc["spleen"]["centroid_mm_xyz"] is None
    rows = list(csv.DictReader(io.StringIO(statistics_csv_text([("a", stats), ("b", stats)]))))
    assert len(rows) == 2 * len(ORGANS) and tuple(rows[0]) == CSV_COLUMNS
    liver = rows[0]
    assert liver["case"] == "a" and liver["organ"] == "liver"
    assert float(liver["centroid_z_mm"]) == stats["liver"].centroid_mm[2]
    assert rows[2]["organ"] == "spleen" and rows[2]["hu_mean"] == "" and rows[2]["voxel_count"] == "0"

"""Reorientation to LPS and back: exact for every axis-aligned direction, bounded for oblique."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from flare_seg.geometry import Geometry, array_zyx, image_from_array_zyx, to_canonical, undo_canonical
from tests.conftest import oblique_direction


def _axis_aligned_directions() -> list[tuple[float, ...]]:
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            m = np.zeros((3, 3))
            for col, (row, s) in enumerate(zip(perm, signs, strict=True)):
                m[row, col] = s
            out.append(tuple(m.ravel()))
    return out


def _image(direction: tuple[float, ...]) -> sitk.Image:
    rng = np.random.default_rng(0)
    img = sitk.GetImageFromArray(rng.integers(-1000, 1000, (5, 7, 9)).astype(np.int16))
    img.SetSpacing((0.7, 0.9, 3.0))
    img.SetOrigin((12.5, -40.0, 300.25))
    img.SetDirection(direction)
    return img


@pytest.mark.parametrize("direction", _axis_aligned_directions())
def test_canonical_round_trip_is_exact_for_all_48_axis_aligned_directions(direction):
    image = _image(direction)
    canonical, transform = to_canonical(image)
    assert canonical.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    # a voxel keeps its physical position
    p = image.TransformIndexToPhysicalPoint((4, 2, 3))
    assert canonical[canonical.TransformPhysicalPointToIndex(p)] == image[4, 2, 3]
    back = undo_canonical(canonical, transform)
    assert Geometry.of(back) == Geometry.of(image)
    np.testing.assert_array_equal(array_zyx(back), array_zyx(image))


def test_oblique_round_trip_restores_grid_and_keeps_structures_in_place():
    arr = np.zeros((30, 40, 40), np.float32)
    arr[10:20, 12:28, 14:30] = 1
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((1.0, 1.0, 1.5))
    image.SetOrigin((5.0, -3.0, 10.0))
    image.SetDirection(oblique_direction(12.0))
    canonical, transform = to_canonical(image)
    assert transform.oblique
    assert canonical.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    labels = sitk.Cast(canonical >= 0.5, sitk.sitkUInt8)
    back = undo_canonical(labels, transform)
    assert Geometry.of(back) == Geometry.of(image)
    restored = array_zyx(back)
    dice = 2 * np.sum((restored == 1) & (arr == 1)) / (np.sum(restored == 1) + np.sum(arr == 1))
    assert dice > 0.9


def _tilted_slab() -> sitk.Image:
    """A tilted scan: air in-plane around a body, the top slice 60 HU, the bottom one -100 HU."""
    arr = np.full((20, 30, 30), -1000, np.int16)
    arr[:, 5:25, 5:25] = 0
    arr[-1, 5:25, 5:25] = 60
    arr[0, 5:25, 5:25] = -100
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((2.0, 2.0, 3.0))
    image.SetOrigin((-30.0, 20.0, 100.0))
    m = np.asarray(sitk.Euler3DTransform((0, 0, 0), np.deg2rad(15.0), 0.0, 0.0).GetMatrix())
    image.SetDirection(tuple(m))  # a 15 degree gantry tilt: about the patient's x axis
    return image


def test_an_oblique_scan_carries_its_faces_on_beyond_its_slices_and_air_beyond_its_columns():
    """On the canonical grid, points above the tilted top face take the top slice's values and
    points below the bottom face the bottom slice's (the networks never see air beyond a scan's
    face); points beside the body beyond the image's rows and columns are air."""
    image = _tilted_slab()
    canonical, _ = to_canonical(image)
    body = sitk.GetArrayViewFromImage(image)
    above, below, beside = [], [], []
    for index in np.ndindex(*canonical.GetSize()):
        p = canonical.TransformIndexToPhysicalPoint(index)
        i, j, k = image.TransformPhysicalPointToContinuousIndex(p)
        inside_plane = 6 <= i <= 23 and 6 <= j <= 23  # well inside the body's columns and rows
        if inside_plane and k > 19.5:
            above.append(canonical[index])
        elif inside_plane and k < -0.5:
            below.append(canonical[index])
        elif (i < -1 or i > 30 or j < -1 or j > 30) and 0 <= k <= 19:
            beside.append(canonical[index])
    assert above and below and beside  # the tilt does give the grid corners beyond each face
    assert set(above) == {60} and set(below) == {-100}
    assert set(beside) == {int(body.min())}


def test_an_oblique_label_image_keeps_only_its_labels():
    """Labels are resampled nearest-neighbour: no value between two labels appears."""
    arr = np.zeros((20, 30, 30), np.uint8)
    arr[4:16, 5:15, 5:25] = 1
    arr[4:16, 15:25, 5:25] = 4
    image = sitk.GetImageFromArray(arr)
    image.SetDirection(oblique_direction(12.0))
    canonical, _ = to_canonical(image, labels=True)
    assert set(np.unique(sitk.GetArrayViewFromImage(canonical))) == {0, 1, 4}
    linear, _ = to_canonical(image)
    assert set(np.unique(sitk.GetArrayViewFromImage(linear))) - {0, 1, 4}  # what a linear pass gives


def test_geometry_index_physical_round_trip_and_axis_order():
    image = _image((0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0))
    g = Geometry.of(image)
    assert g.shape_zyx == (5, 7, 9) and g.spacing_mm_zyx == (3.0, 0.9, 0.7)
    idx = np.array([[1.0, 2.0, 3.0], [8.0, 0.0, 4.5]])
    phys = g.index_to_physical_xyz(idx)
    expected = [image.TransformContinuousIndexToPhysicalPoint(tuple(i)) for i in idx]
    np.testing.assert_allclose(phys, expected, atol=1e-9)
    np.testing.assert_allclose(g.physical_to_index_xyz(phys), idx, atol=1e-9)
    assert not g.is_axis_aligned or np.allclose(np.abs(g.direction_matrix).sum(axis=0), 1)


def test_image_from_array_rejects_wrong_shape():
    g = Geometry.of(_image((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)))
    with pytest.raises(ValueError, match="does not match"):
        image_from_array_zyx(np.zeros((9, 7, 5), np.int16), g)


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("signs", list(itertools.product((1.0, -1.0), repeat=3)))
def test_canonical_axes_view_matches_dicom_orient(perm, signs):
    from flare_seg.geometry import canonical_axes

    direction = np.zeros((3, 3))
    for image_axis, patient_axis in enumerate(perm):
        direction[patient_axis, image_axis] = signs[image_axis]
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.7, 1.1, 2.5))
    image.SetOrigin((-12.0, 30.5, 101.25))
    image.SetDirection(tuple(direction.ravel()))
    reference = sitk.DICOMOrient(image, "LPS")

    axes, canonical = canonical_axes(Geometry.of(image))
    view = axes.view(sitk.GetArrayViewFromImage(image))
    np.testing.assert_array_equal(view, sitk.GetArrayViewFromImage(reference))
    assert canonical.size_xyz == reference.GetSize()
    np.testing.assert_allclose(canonical.spacing_mm_xyz, reference.GetSpacing())
    np.testing.assert_allclose(canonical.origin_mm_xyz, reference.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(canonical.direction, np.eye(3).ravel(), atol=1e-12)
    # Writing through the view of a fresh array fills it in the original's layout.
    back = np.zeros_like(arr)
    axes.view(back)[...] = sitk.GetArrayViewFromImage(reference)
    np.testing.assert_array_equal(back, arr)


def test_canonical_axes_rejects_oblique():
    from flare_seg.geometry import canonical_axes

    geometry = Geometry((4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), oblique_direction())
    with pytest.raises(ValueError, match="oblique"):
        canonical_axes(geometry)

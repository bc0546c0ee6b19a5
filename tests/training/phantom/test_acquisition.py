"""Tests of the acquisition grid: spacing and size ranges, directions, fields of view."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from flare_seg.training.phantom import PhantomOptions, generate_case_with_info
from tests.training.phantom.helpers import LABEL, SEEDS, SMALL, _case, _centroid_lps


@pytest.mark.parametrize("seed", SEEDS)
def test_small_geometry_ranges(seed: int) -> None:
    image, _, _ = _case(seed)
    nx, ny, nz = image.GetSize()
    sx, sy, sz = image.GetSpacing()
    assert 96 <= nx == ny <= 128
    assert 3.0 <= sx == sy <= 4.0
    assert 3.0 <= sz <= 6.0
    assert 245.0 <= (nz - 1) * sz <= 455.0  # z extent, mm


def test_directions_flip_and_tilt_as_asked() -> None:
    diagonals = {tuple(np.sign(np.diag(np.reshape(_case(s)[0].GetDirection(), (3, 3))))) for s in SEEDS}
    assert len(diagonals) >= 3  # several flip combinations among a few seeds
    assert any(-1.0 in d for d in diagonals)

    image, _, info = _case(0, PhantomOptions(size="small", flip_probability=0.0))
    assert image.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert info.flipped_xyz == (False, False, False)

    image, mask, info = _case(1, PhantomOptions(size="small", oblique_probability=1.0))
    direction = np.reshape(image.GetDirection(), (3, 3))
    flips = np.diag([-1.0 if f else 1.0 for f in info.flipped_xyz])
    angle = np.degrees(np.arccos(np.clip((np.trace(direction @ flips) - 1) / 2, -1, 1)))
    assert 5.0 - 1e-6 <= angle <= 15.0 + 1e-6
    assert abs(angle - info.oblique_deg) < 1e-6
    assert _centroid_lps(mask, LABEL["liver"])[0] < _centroid_lps(mask, LABEL["spleen"])[0]


def test_cut_fields_of_view_cut_organs() -> None:
    """A case whose field of view starts below the liver dome has liver in its top slice."""
    for seed in range(100):
        info = _case(seed)[2] if seed in SEEDS else None
        if info is None:
            image, mask, info = generate_case_with_info(seed, SMALL)
        else:
            image, mask, _ = _case(seed)
        if info.fov == "cut_top":
            break
    else:
        pytest.fail("no cut_top case among 100 seeds")
    z_axis_up = np.reshape(image.GetDirection(), (3, 3))[2, 2] > 0
    m = sitk.GetArrayViewFromImage(mask)
    top = m[-1] if z_axis_up else m[0]
    assert (top == LABEL["liver"]).any()

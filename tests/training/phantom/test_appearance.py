"""Tests of the appearance: organ HU per phase, noise, background."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from flare_seg.labels import ORGANS
from flare_seg.training.phantom import HU_RANGES, PHASES
from tests.training.phantom.helpers import LABEL, SEEDS, _case


@pytest.mark.parametrize("seed", SEEDS)
def test_hu_statistics(seed: int) -> None:
    image, mask, info = _case(seed)
    hu = sitk.GetArrayViewFromImage(image)
    m = sitk.GetArrayViewFromImage(mask)
    assert info.phase in PHASES
    for organ in ORGANS.values():
        assert f"{organ}" in info.hu_means or organ == "kidney"
    lo, hi = HU_RANGES["liver"][PHASES.index(info.phase)]
    interior = ndimage.binary_erosion(m == LABEL["liver"])
    assert lo - 15 <= float(hu[interior].mean()) <= hi + 15, (info.phase, float(hu[interior].mean()))
    assert 5.0 <= float(hu[interior].std()) <= 60.0  # noise (10-30 HU) plus mild texture

    # Background: the anterior corners of every slice are outside the body.
    ny, nx = hu.shape[1:]
    corners = [(j, i) for j in (0, ny - 1) for i in (0, nx - 1)]
    centre_y = image.TransformContinuousIndexToPhysicalPoint(((nx - 1) / 2, (ny - 1) / 2, 0))[1]
    for j, i in corners:
        if image.TransformIndexToPhysicalPoint((i, j, 0))[1] >= centre_y:
            continue  # posterior corner: the table may be there
        patch = hu[:, max(j - 2, 0) : j + 3, max(i - 2, 0) : i + 3].astype(float)
        assert not (m[:, max(j - 2, 0) : j + 3, max(i - 2, 0) : i + 3]).any()
        if info.pad_value is not None:
            assert np.all(patch == info.pad_value)
        else:
            assert abs(patch.mean() + 1000.0) < 5.0
            assert 3.0 < patch.std() < 40.0

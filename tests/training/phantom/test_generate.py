"""Tests of one phantom case: determinism and the shared image/mask geometry."""

from __future__ import annotations

import time

import numpy as np
import pytest
import SimpleITK as sitk

from flare_seg.training.phantom import PhantomOptions, generate_case
from tests.training.phantom.helpers import LABEL, SEEDS, SMALL, _case, _geometry, _volume_ml


def test_same_seed_gives_the_same_case() -> None:
    image_a, mask_a = generate_case(3, SMALL)
    image_b, mask_b, _ = _case(3)
    assert _geometry(image_a) == _geometry(image_b)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image_a), sitk.GetArrayViewFromImage(image_b))
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(mask_a), sitk.GetArrayViewFromImage(mask_b))


def test_different_seeds_give_different_cases() -> None:
    (image_a, mask_a, _), (image_b, mask_b, _) = _case(0), _case(1)
    assert _geometry(image_a) != _geometry(image_b)
    assert _volume_ml(mask_a, LABEL["liver"]) != _volume_ml(mask_b, LABEL["liver"])


@pytest.mark.parametrize("seed", SEEDS)
def test_image_and_mask_share_one_geometry(seed: int) -> None:
    image, mask, info = _case(seed)
    assert image.GetPixelID() == sitk.sitkInt16
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert _geometry(image) == _geometry(mask)
    assert image.GetSize() == info.size_xyz
    direction = np.array(image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction @ direction.T, np.eye(3), atol=1e-9)
    assert np.linalg.norm(image.GetOrigin()) > 0


@pytest.mark.slow
def test_full_size_case() -> None:
    started = time.perf_counter()
    image, mask = generate_case(11, PhantomOptions(size="full"))
    elapsed = time.perf_counter() - started
    nx, ny, nz = image.GetSize()
    assert nx == ny == 512
    assert 0.6 <= image.GetSpacing()[0] <= 1.0
    assert 1.0 <= image.GetSpacing()[2] <= 5.0
    assert nz <= 320
    assert _geometry(image) == _geometry(mask)
    assert elapsed < 60.0, elapsed

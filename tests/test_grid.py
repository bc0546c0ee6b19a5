"""Crop and resampling plans, and same-extent resampling through the traced functions."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from flare_seg.contract import ModelContract
from flare_seg.grid import (
    GridCrop,
    crop_around_box,
    fit_crop_to_valid_size,
    plan_shape,
    resample_crop,
    slab_slices,
)
from flare_seg.training.tf_utils import TfUtilsModule


def test_plan_shape_hits_target_spacing_and_caps_size():
    assert plan_shape((100, 512, 512), (2.5, 0.8, 0.8), 2.0, 500) == (125, 205, 205)
    capped = plan_shape((1000, 512, 512), (1.0, 0.8, 0.8), 2.0, 160)
    assert max(capped) == 160 and capped[0] == 160  # 1000 mm is the longest axis
    assert capped[1] == round(409.6 / (1000 / 160))  # isotropic coarsening


def test_crop_around_box_adds_margin_and_clamps():
    start, size = crop_around_box(
        np.array([10.0, 5.0, 0.0]), np.array([20.0, 58.0, 8.0]), (40, 60, 10), (2.0, 1.0, 1.0), 4.0
    )
    assert start == (8, 1, 0)
    assert size == (14, 59, 10)  # y clamped at 60, x at 10


def test_grid_crop_maps_edges_both_ways():
    crop = GridCrop((10, 20, 30), (40, 100, 60), (20, 50, 30), (2.5, 0.8, 0.8))
    np.testing.assert_allclose(crop.out_spacing_mm_zyx, (5.0, 1.6, 1.6))
    np.testing.assert_allclose(crop.out_edge_to_source_edge(np.array([0, 0, 0])), (10, 20, 30))
    np.testing.assert_allclose(crop.out_edge_to_source_edge(np.array([20, 50, 30])), (50, 120, 90))
    np.testing.assert_allclose(crop.source_edge_to_out_mm(np.array([14, 20, 30])), (10.0, 0.0, 0.0))


def test_resample_crop_preserves_linear_ramps_at_voxel_centres():
    """Same-extent resampling: output voxel j sits at source index (j + 0.5) * n / m - 0.5."""
    fns = TfUtilsModule(ModelContract())
    z, y, x = np.meshgrid(np.arange(40), np.arange(64), np.arange(48), indexing="ij")
    vol = (3.0 * z + 2.0 * y - 1.0 * x).astype(np.float32)
    crop = GridCrop((4, 8, 0), (32, 48, 48), (16, 24, 12), (1.0, 1.0, 1.0))
    out = resample_crop(fns, vol, crop, budget_bytes=64 * 1024)  # many slabs

    def centres(start, n, m):
        return start + (np.arange(m) + 0.5) * n / m - 0.5

    cz, cy, cx = (
        centres(a, n, m) for a, n, m in zip(crop.start_zyx, crop.size_zyx, crop.out_shape_zyx, strict=True)
    )
    expected = 3.0 * cz[:, None, None] + 2.0 * cy[None, :, None] - 1.0 * cx[None, None, :]
    inner = (slice(2, -2), slice(2, -2), slice(2, -2))  # antialiasing kernels are clamped at borders
    np.testing.assert_allclose(out[inner], expected[inner], atol=1e-3)


def test_resample_crop_is_independent_of_slab_size():
    fns = TfUtilsModule(ModelContract())
    vol = np.random.default_rng(1).normal(0, 100, (30, 40, 50)).astype(np.int16)
    crop = GridCrop((3, 0, 5), (25, 40, 40), (11, 17, 19), (3.0, 0.7, 0.7))
    a = resample_crop(fns, vol, crop, budget_bytes=1)
    b = resample_crop(fns, vol, crop, budget_bytes=2**30)
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_slab_slices_bounds():
    assert slab_slices(100, 10, 35) == 3
    assert slab_slices(100, 10, 1) == 1
    assert slab_slices(5, 10, 10**9) == 5
    assert tf.executing_eagerly()


def _fit(start, size, lo, hi, shape, spacing, margin=10.0, target=2.0, max_size=160, multiple=8):
    return fit_crop_to_valid_size(
        start,
        size,
        np.asarray(lo, float),
        np.asarray(hi, float),
        shape,
        spacing,
        target,
        max_size,
        multiple,
        margin,
    )


def test_fit_crop_trims_to_the_lower_valid_size_keeping_half_the_margin():
    # box of 100 x 60 x 60 voxels at 1 mm with 20 mm margins: 140 x 100 x 100 mm -> 70 x 50 x 50 at 2 mm
    crop = _fit(
        (30, 30, 30), (140, 100, 100), (50, 50, 50), (150, 110, 110), (300, 300, 300), (1.0, 1.0, 1.0)
    )
    assert crop.out_shape_zyx == (64, 48, 48)  # not padded up to 72 x 56 x 56
    assert crop.size_zyx == (128, 96, 96)  # exactly 2 mm
    assert crop.start_zyx == (36, 32, 32)  # trimmed evenly on both sides
    for a in range(3):
        assert crop.start_zyx[a] <= 50 - 10 and crop.stop_zyx[a] >= (150, 110, 110)[a] + 10


def test_fit_crop_grows_with_image_context_when_trimming_would_eat_the_margin():
    # the box touches the image's top: no margin there, and the other side has only 12 mm
    crop = _fit((0, 0, 0), (62, 62, 62), (0, 0, 0), (50, 50, 50), (100, 100, 100), (1.0, 1.0, 1.0))
    assert crop.out_shape_zyx == (32, 32, 32)  # 31 at 2 mm -> 32, not 24
    assert crop.start_zyx == (0, 0, 0) and crop.size_zyx == (64, 64, 64)  # grown inside the image
    # a crop clamped at the image's far edge grows towards the inside
    crop = _fit((38, 0, 0), (62, 62, 62), (50, 0, 0), (100, 50, 50), (100, 100, 100), (1.0, 1.0, 1.0))
    assert crop.start_zyx[0] == 36 and crop.stop_zyx[0] == 100


def test_fit_crop_keeps_the_crop_and_pads_when_the_image_is_too_small():
    crop = _fit((0, 0, 0), (30, 62, 62), (0, 0, 0), (30, 62, 62), (30, 62, 62), (1.0, 1.0, 1.0), margin=0.0)
    assert crop.start_zyx == (0, 0, 0) and crop.size_zyx == (30, 62, 62)  # the whole image, never cut
    assert crop.out_shape_zyx == (15, 31, 31)  # plan_shape's counts; the network input is padded


def test_fit_crop_respects_the_size_cap():
    crop = _fit((0, 0, 0), (500, 300, 300), (20, 20, 20), (480, 280, 280), (500, 300, 300), (1.0, 1.0, 1.0))
    assert max(crop.out_shape_zyx) <= 160 and all(n % 8 == 0 for n in crop.out_shape_zyx)


def test_fit_crop_invariants_on_random_boxes():
    rng = np.random.default_rng(7)
    for _ in range(400):
        shape = tuple(int(v) for v in rng.integers(20, 400, 3))
        spacing = tuple(float(v) for v in rng.choice([0.7, 0.8, 1.0, 1.5, 2.5, 3.0, 5.0], 3))
        lo = np.array([rng.uniform(0, n - 1) for n in shape])
        hi = np.array([rng.uniform(a + 1, n) for a, n in zip(lo, shape, strict=True)])
        margin = float(rng.choice([0.0, 20.0]))
        start, size = crop_around_box(lo, hi, shape, spacing, margin)
        crop = _fit(start, size, lo, hi, shape, spacing, margin=margin / 2)
        planned = plan_shape(size, spacing, 2.0, 160)
        target = max(2.0, max(np.asarray(size) * np.asarray(spacing)) / 160)
        for a in range(3):
            assert crop.start_zyx[a] >= 0 and crop.stop_zyx[a] <= shape[a]
            assert 1 <= crop.out_shape_zyx[a] <= 160
            # the organs' box is never cut, and keeps half the margin wherever the crop had it
            keep_lo = min(lo[a] - start[a], margin / 2 / spacing[a])
            keep_hi = min(start[a] + size[a] - hi[a], margin / 2 / spacing[a])
            assert crop.start_zyx[a] <= lo[a] - keep_lo + 1e-6
            assert crop.stop_zyx[a] >= hi[a] + keep_hi - 1e-6
            # plan_shape's crop and count (padded) only when the image cannot hold a valid size
            kept = crop.size_zyx[a] == size[a] and crop.out_shape_zyx[a] == planned[a]
            error = abs(crop.out_spacing_mm_zyx[a] - target)
            fitted = (
                crop.out_shape_zyx[a] % 8 == 0 and error <= 0.5 * spacing[a] / crop.out_shape_zyx[a] + 1e-9
            )
            assert fitted or kept
            if not fitted:
                upper = 8 * int(np.ceil(planned[a] / 8))
                assert round(upper * target / spacing[a]) > shape[a]  # the image is too small

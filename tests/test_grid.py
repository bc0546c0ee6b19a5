"""Crop and resampling plans, and same-extent resampling through the traced functions."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from flare_seg.contract import ModelContract
from flare_seg.grid import GridCrop, crop_around_box, plan_shape, resample_crop, slab_slices
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

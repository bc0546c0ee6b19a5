"""The traced preprocessing/postprocessing functions, before and after a SavedModel round trip."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from flare_seg.contract import TF_UTILS_FUNCTIONS, ModelContract
from flare_seg.grid import labels_from_scores
from flare_seg.training.tf_utils import TfUtilsModule


@pytest.fixture(scope="module")
def fns(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfu") / "tf_utils_module"
    tf.saved_model.save(TfUtilsModule(ModelContract()), str(path))
    return tf.saved_model.load(str(path))


def test_saved_module_has_every_contract_function(fns):
    for name in TF_UTILS_FUNCTIONS:
        assert callable(getattr(fns, name))


def test_normalize_localization_windows_and_pads_with_air(fns):
    vol = np.full((5, 9, 17), 500.0, np.float32)
    vol[0, 0, 0] = -3000.0
    x = fns.normalize_localization(vol).numpy()
    assert x.shape == (1, 8, 16, 24, 1)
    assert x[0, 0, 0, 0, 0] == -1.0  # clipped at the window
    assert x[0, 1, 1, 1, 0] == pytest.approx(0.5)  # 500 HU in [-1000, 1000]
    assert np.all(x[0, 5:, :, :, 0] == -1.0)  # padding is air


def test_normalize_segmentation_position_channels_are_mm_from_centre(fns):
    vol = np.zeros((8, 8, 16), np.float32)
    x = fns.normalize_segmentation(vol, [2.0, 2.0, 1.0], [8.0, 8.0, 8.0]).numpy()[0]
    assert x.shape == (8, 8, 16, 4)
    # voxel (z=3) centre is at 7 mm, 1 mm before the centre: -1 mm / 100 mm
    assert x[3, 0, 0, 1] == pytest.approx(-0.01)
    assert x[0, 5, 0, 2] == pytest.approx((11.0 - 8.0) / 100.0)
    assert x[0, 0, 15, 3] == pytest.approx((15.5 - 8.0) / 100.0)


def test_box_from_heatmaps_finds_union_box_and_reports_empty(fns):
    heat = np.zeros((10, 12, 14, 4), np.float32)
    heat[2:4, 5:7, 1:3, 0] = 0.9
    heat[6, 8, 10, 3] = 0.6
    heat[9, 11, 13, 2] = 0.4  # below threshold
    start, stop, found = fns.box_from_heatmaps(heat, 0.5)
    assert bool(found)
    np.testing.assert_array_equal(start, [2, 5, 1])
    np.testing.assert_array_equal(stop, [7, 9, 11])
    start, stop, found = fns.box_from_heatmaps(np.zeros((3, 4, 5, 4), np.float32), 0.5)
    assert not bool(found)
    np.testing.assert_array_equal(stop, [3, 4, 5])


def test_box_from_heatmaps_ignores_stray_blobs_away_from_the_organ(fns):
    heat = np.zeros((30, 20, 20, 4), np.float32)
    heat[5:12, 4:10, 6:14, 0] = 0.95  # liver
    heat[8:10, 5:8, 7:9, 0] = 0.99  # its peak
    heat[25, 17, 2, 0] = 0.7  # a stray false positive far from it
    start, stop, found = fns.box_from_heatmaps(heat, 0.5)
    assert bool(found)
    np.testing.assert_array_equal(start, [5, 4, 6])
    np.testing.assert_array_equal(stop, [12, 10, 14])


def _labels(fns, scores, out_shape, budget_bytes=2**30) -> np.ndarray:
    out = np.full(out_shape, 255, np.uint8)
    labels_from_scores(fns, scores, out, budget_bytes)
    return out


def test_labels_from_scores_slabs_match_one_pass_and_restore_a_block(fns):
    # a block of class 2 on a 10^3 grid, upsampled to 40x30x20 (same extent)
    scores = np.zeros((10, 10, 10, 3), np.float32)
    scores[..., 0] = 1.0
    scores[2:6, 3:8, 4:9] = [0.0, 0.0, 1.0]
    out_shape = (40, 30, 20)
    whole = _labels(fns, scores, out_shape)
    assert whole.dtype == np.uint8 and whole.shape == (40, 30, 20)
    np.testing.assert_array_equal(_labels(fns, scores, out_shape, budget_bytes=1), whole)  # one slice a slab
    # written through a strided view, as into the box of a larger mask
    big = np.zeros((44, 35, 26), np.uint8)
    labels_from_scores(fns, scores, big[2:42, 5:35, 3:23], 7 * 30 * 80)
    np.testing.assert_array_equal(big[2:42, 5:35, 3:23], whole)
    assert not big[:2].any() and not big[:, :5].any() and not big[:, :, 23:].any()
    # the block [2, 6) x [3, 8) x [4, 9) in source voxels covers [8, 24) x [9, 24) x [8, 18) at the output
    expected = np.zeros((40, 30, 20), np.uint8)
    expected[8:24, 9:24, 8:18] = 2
    assert np.mean(whole == expected) > 0.99
    assert whole[16, 16, 13] == 2 and whole[2, 2, 2] == 0


def test_label_cells_flags_cells_whose_corners_disagree(fns):
    scores = np.zeros((4, 5, 6, 3), np.float32)
    scores[..., 0] = 1.0
    scores[1, 2, 3] = [0.0, 1.0, 0.0]
    cells = fns.label_cells(scores).numpy()
    labels, mixed = cells & 127, cells >= 128
    expected_mixed = np.zeros((4, 5, 6), bool)
    expected_mixed[0:2, 1:3, 2:4] = True  # the eight cells that have voxel (1, 2, 3) as a corner
    np.testing.assert_array_equal(mixed, expected_mixed)
    assert labels[1, 2, 3] == 1 and labels.sum() == 1


def _dense_trilinear_argmax(scores: np.ndarray, out_shape) -> np.ndarray:
    """Reference: interpolate every class everywhere (half-pixel centres, clamped), then argmax."""
    out = scores
    for axis, n_out in enumerate(out_shape):
        n_in = out.shape[axis]
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        w = (src - i0).reshape([-1 if a == axis else 1 for a in range(4)])
        out = np.take(out, i0, axis=axis) * (1 - w) + np.take(out, i1, axis=axis) * w
    return np.argmax(out, axis=-1)


@pytest.mark.parametrize("out_shape", [(23, 31, 17), (7, 40, 9)])  # up- and downsampling mixed
def test_labels_from_scores_slab_equals_dense_interpolation(fns, out_shape):
    rng = np.random.default_rng(3)
    d, h, w, c = 11, 13, 10, 5
    # smooth blobs, like network outputs: large uniform regions and boundaries between them
    zz, yy, xx = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    scores = np.zeros((d, h, w, c), np.float32)
    for k in range(c):
        cz, cy, cx = rng.uniform(0, 1, 3) * (d, h, w)
        scores[..., k] = np.exp(-((zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2) / 20.0)
    scores[..., 0] += 0.2
    expected = _dense_trilinear_argmax(scores.astype(np.float64), out_shape)
    got = _labels(
        fns, scores, out_shape, budget_bytes=4 * out_shape[1] * (out_shape[2] * 3 + w)
    )  # 4 slices a slab
    assert got.shape == tuple(out_shape)
    assert len(np.unique(expected)) >= 3
    assert np.mean(got == expected) > 0.9995  # float32 rounding at exact ties only

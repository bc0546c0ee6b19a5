"""Appearance randomization of training samples, its settings, and initial weights of a run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from flare_seg.training.augment import (
    Appearance,
    coarser_acquisition,
    correlated_noise,
    random_tissue_curve,
    randomize_appearance,
    sharpened,
    smooth_field,
)
from flare_seg.training.config import load_config


def _volume() -> tuple[np.ndarray, np.ndarray]:
    hu = np.full((16, 24, 24), -1000.0, np.float32)
    hu[2:14, 3:21, 3:21] = -100.0
    hu[4:10, 6:12, 6:12] = 60.0
    hu[4:10, 14:18, 14:18] = 150.0
    labels = np.zeros(hu.shape, np.uint8)
    labels[4:10, 6:12, 6:12] = 1
    labels[4:10, 14:18, 14:18] = 2
    return hu, labels


def test_probability_zero_leaves_the_sample_unchanged():
    hu, labels = _volume()
    out = randomize_appearance(np.random.default_rng(0), hu, labels, Appearance(prob=0.0, organ_shift_hu=50))
    np.testing.assert_array_equal(out, hu)


def test_organ_offsets_move_each_organ_by_one_value_and_nothing_else():
    hu, labels = _volume()
    shifts = set()
    for seed in range(5):
        out = randomize_appearance(
            np.random.default_rng(seed), hu, labels, Appearance(prob=1.0, organ_shift_hu=30)
        )
        np.testing.assert_array_equal(out[labels == 0], hu[labels == 0])
        for k in (1, 2):
            delta = np.unique(np.round(out[labels == k] - hu[labels == k], 4))
            assert delta.size == 1
            shifts.add(float(delta[0]))
    assert len(shifts) == 10  # a new offset per organ and sample


def test_the_tissue_curve_keeps_tissue_order_air_and_the_ends():
    rng = np.random.default_rng(3)
    for _ in range(20):
        x, y = random_tissue_curve(rng, 80.0)
        assert np.all(np.diff(y) >= 0) and y[0] == x[0] and y[-1] == x[-1]
    hu = np.linspace(-1000, 1500, 2000, dtype=np.float32).reshape(20, 10, 10)
    out = randomize_appearance(np.random.default_rng(4), hu, None, Appearance(prob=1.0, tissue_curve_hu=80))
    flat = out.ravel()
    assert np.all(np.diff(flat) >= -1e-3)  # monotone: a brighter tissue stays brighter
    air = hu.ravel() <= -500
    np.testing.assert_array_equal(flat[air], hu.ravel()[air])
    assert np.abs(flat - hu.ravel()).max() > 5.0  # and the curve did move soft tissue


def test_correlated_noise_has_the_requested_sd_and_in_plane_correlation():
    rng = np.random.default_rng(5)
    white = correlated_noise(rng, (8, 64, 64), 20.0, 0.0)
    coloured = correlated_noise(rng, (8, 64, 64), 20.0, 1.2)
    for noise in (white, coloured):
        assert noise.std() == pytest.approx(20.0, rel=1e-3)

    def lag1(a):
        return float(np.mean(a[:, :, 1:] * a[:, :, :-1]) / np.mean(a * a))

    assert abs(lag1(white)) < 0.05 and lag1(coloured) > 0.6
    z_corr = float(np.mean(coloured[1:] * coloured[:-1]) / np.mean(coloured**2))
    assert abs(z_corr) < 0.05  # in-plane only, like a reconstruction kernel


def test_the_bias_field_is_smooth_and_bounded():
    field = smooth_field(np.random.default_rng(6), (20, 30, 40), 25.0)
    assert field.shape == (20, 30, 40)
    assert np.abs(field).max() == pytest.approx(25.0, rel=1e-5)
    assert np.abs(np.diff(field, axis=2)).max() < 5.0


@pytest.mark.parametrize("shape", [(64, 64, 64), (17, 30, 41), (40, 64, 64)])
def test_the_bias_field_is_the_cubic_spline_zoom_of_its_coarse_nodes(shape):
    """The per-axis matrices give what a 3-D cubic ``ndimage.zoom`` of the same nodes gives."""
    coarse = np.random.default_rng(8).uniform(-1.0, 1.0, (4, 4, 4))
    expected = ndimage.zoom(coarse, [n / 4 for n in shape], order=3, mode="nearest", grid_mode=True)
    expected = expected[tuple(slice(0, n) for n in shape)]
    expected = expected / np.abs(expected).max() * 30.0
    field = smooth_field(np.random.default_rng(8), shape, 30.0)
    assert field.shape == shape
    np.testing.assert_allclose(field, expected, atol=1e-4)


def test_blur_and_noise_change_the_sample_but_keep_its_shape_and_dtype():
    hu, labels = _volume()
    appearance = Appearance(prob=1.0, blur_sigma_vox=1.0, bias_field_hu=20, correlated_noise_hu=15)
    out = randomize_appearance(np.random.default_rng(7), hu, labels, appearance)
    assert out.shape == hu.shape and out.dtype == np.float32
    assert not np.array_equal(out, hu)
    fat = (hu == -100.0) & (labels == 0)
    assert out[labels == 2].mean() > out[fat].mean() + 100.0  # the organ still stands out from the fat


def test_appearance_settings_are_checked_in_the_config():
    config = load_config("segmentation", appearance={"prob": 0.5, "organ_shift_hu": 20.0})
    assert config.appearance["organ_shift_hu"] == 20.0
    with pytest.raises(ValueError, match="appearance"):
        load_config("segmentation", appearance={"brightness": 1.0})
    with pytest.raises(ValueError, match="organ_shift_hu"):
        load_config("segmentation", appearance={"organ_shift_hu": -1.0})
    with pytest.raises(ValueError, match="prob"):
        load_config("segmentation", appearance={"prob": 1.5})


def test_a_run_starts_from_the_weights_of_an_exported_network_or_a_run(tiny_runs, tiny_models, tmp_path):
    import tensorflow as tf

    from flare_seg.training.train import build_model, initialize_weights, restore_model

    config = load_config("localization", filters=(4, 8, 8, 8))
    x = tf.random.uniform((1, 16, 16, 24, 1), -1, 1, seed=1)
    exported = tf.saved_model.load(str(tiny_models / "localization"))
    expected = exported.serve(x)["heatmaps"].numpy()
    model = build_model(config)
    assert np.abs(model(x).numpy() - expected).max() > 1e-4  # fresh weights differ
    initialize_weights(model, tiny_models / "localization", config)
    np.testing.assert_allclose(model(x).numpy(), expected, atol=1e-5)
    from_run = build_model(config)
    initialize_weights(from_run, tiny_runs[0], config)
    trained, _ = restore_model(tiny_runs[0], config)
    np.testing.assert_allclose(from_run(x).numpy(), trained(x).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="not found"):
        initialize_weights(
            build_model(load_config("localization", filters=(4, 8, 8, 16))), tiny_runs[0], config
        )
    with pytest.raises(FileNotFoundError, match="neither"):
        initialize_weights(model, tmp_path, config)


def _saved_run(run: Path, config, model) -> Path:
    """A run folder (config.yaml and one checkpoint) holding ``model``'s weights."""
    from flare_seg.training.train import checkpoint_for

    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(config.to_yaml())
    ckpt, _ = checkpoint_for(model)
    ckpt.save(str(run / "checkpoints" / "ckpt"))
    return run


def test_a_sum_network_starts_from_a_saturated_product_network_with_the_same_output(tmp_path):
    import tensorflow as tf

    from flare_seg.training.train import build_model, initialize_weights

    small = {"filters": (4, 8, 8, 8), "sc_filters": 4}
    product_config = load_config("segmentation", **small)
    sum_config = load_config("segmentation", sc_combine="sum", **small)
    x = tf.random.uniform((1, 16, 16, 16, 4), -1, 1, seed=3)
    product = build_model(product_config)
    out = product.get_layer("sc_out")
    kernel, _ = out.get_weights()
    sign = np.array([-1, 1, 1, -1, -1], np.float32)
    out.set_weights([np.zeros_like(kernel), 30.0 * sign])  # tanh at exactly +-1: a constant term
    saturated = _saved_run(tmp_path / "saturated", product_config, product)
    model = build_model(sum_config)
    initialize_weights(model, saturated, sum_config)
    np.testing.assert_allclose(model(x).numpy(), product(x).numpy(), atol=1e-6)
    np.testing.assert_array_equal(model.get_layer("sc_out").get_weights()[0], 0.0)  # starts afresh
    # a spatial term that varies (or is not saturated) carries information a sum would lose
    out.set_weights([np.zeros_like(kernel), 0.5 * sign])
    informative = _saved_run(tmp_path / "informative", product_config, product)
    with pytest.raises(ValueError, match="not a constant"):
        initialize_weights(build_model(sum_config), informative, sum_config)
    # and the other way round is refused
    summed = _saved_run(tmp_path / "sum", sum_config, model)
    with pytest.raises(ValueError, match="only product -> sum"):
        initialize_weights(build_model(product_config), summed, product_config)
    with pytest.raises(ValueError, match="sc_combine"):
        load_config("segmentation", sc_combine="max")


def test_bone_darkening_compresses_only_dense_values_towards_150_hu():
    hu = np.linspace(-1000, 1500, 2500, dtype=np.float32).reshape(25, 10, 10)
    out = randomize_appearance(np.random.default_rng(8), hu, None, Appearance(prob=1.0, bone_darkening=0.6))
    soft = hu <= 150
    np.testing.assert_array_equal(out[soft], hu[soft])
    keep = (out[hu > 150] - 150) / (hu[hu > 150] - 150)
    assert np.allclose(keep, keep[0], atol=1e-4) and 0.4 <= keep[0] <= 1.0
    assert np.all(np.diff(out.ravel()) >= -1e-3)
    with pytest.raises(ValueError, match="bone_darkening"):
        Appearance(bone_darkening=1.0)


def test_a_coarser_acquisition_spreads_an_edge_over_the_coarse_voxel_without_moving_it():
    hu = np.zeros((12, 20, 48), np.float32)
    hu[:, :, 24:] = 100.0
    for factor in (1.5, 2.5, 3.5):
        out = coarser_acquisition(hu, (1.0, 1.0, factor))
        assert out.shape == hu.shape and out.dtype == np.float32
        profile = out[6, 10]
        width = np.count_nonzero((profile > 5) & (profile < 95))
        assert factor - 1.5 <= width <= 2 * factor + 1  # partial volume over about one coarse voxel
        # symmetric about the edge (23.5): the mean is kept, so the border does not move
        assert profile.mean() == pytest.approx(50.0, abs=0.5)
        np.testing.assert_allclose(out[:, 0, :], out[:, 10, :], atol=1e-4)  # the other axes untouched
    flat = np.full((10, 12, 14), 37.0, np.float32)
    np.testing.assert_allclose(coarser_acquisition(flat, (3.0, 2.0, 2.0)), flat, atol=1e-4)
    np.testing.assert_array_equal(coarser_acquisition(hu, (1.0, 1.0, 1.0)), hu)


def test_low_resolution_is_drawn_only_when_asked_and_blurs_organ_borders():
    hu, labels = _volume()
    plain = Appearance(prob=1.0, organ_shift_hu=10.0, bias_field_hu=10.0)
    coarse = Appearance(prob=1.0, organ_shift_hu=10.0, bias_field_hu=10.0, low_resolution_factor=3.0)
    a = randomize_appearance(np.random.default_rng(3), hu, labels, plain)
    # the organ offsets are drawn before the coarser grid, so the same seed gives the same organ HU
    b = randomize_appearance(np.random.default_rng(3), hu, labels, coarse)
    inner = np.zeros(hu.shape, bool)
    inner[6:8, 8:10, 8:10] = True  # the middle of organ 1, away from its border
    assert abs(float(b[inner].mean() - a[inner].mean())) < 12.0
    steepest = [
        np.abs(np.diff(randomize_appearance(np.random.default_rng(s), hu, labels, coarse), axis=2)).max()
        for s in range(5)
    ]
    assert max(steepest) < np.abs(np.diff(a, axis=2)).max()
    for bad in (0.5, 5.0):
        with pytest.raises(ValueError, match="low_resolution_factor"):
            Appearance(low_resolution_factor=bad)


def test_sharpening_steepens_borders_overshoots_and_keeps_flat_regions():
    hu = np.full((6, 32, 32), -100.0, np.float32)  # fat on the right (x >= 16), an organ on the left
    hu[:, :, :16] = 60.0
    hu[3:] += 20.0  # slices differ along z
    sharp = sharpened(hu, 1.0, 1.0)
    # far from the border (beyond the Gaussian's reach): unchanged, slice by slice
    np.testing.assert_allclose(sharp[:, :, :10], hu[:, :, :10], atol=1e-3)
    np.testing.assert_allclose(sharp[:, :, 22:], hu[:, :, 22:], atol=1e-3)
    # across the border: a steeper step, overshooting above the organ and below the fat
    row, plain_row = sharp[1, 16], hu[1, 16]
    assert row[15] - row[16] > plain_row[15] - plain_row[16]
    assert row[15] > 60.0 + 10 and row[16] < -100.0 - 10


def test_sharpening_is_drawn_only_when_asked():
    hu, labels = _volume()
    plain = Appearance(prob=1.0, organ_shift_hu=10.0, blur_sigma_vox=0.5)
    sharp = Appearance(prob=1.0, organ_shift_hu=10.0, blur_sigma_vox=0.5, sharpen=1.5)
    a = randomize_appearance(np.random.default_rng(4), hu, labels, plain)
    b = randomize_appearance(np.random.default_rng(4), hu, labels, sharp)
    again = randomize_appearance(np.random.default_rng(4), hu, labels, plain)
    np.testing.assert_array_equal(a, again)
    assert not np.array_equal(a, b)
    steepest = max(
        np.abs(np.diff(randomize_appearance(np.random.default_rng(s), hu, labels, sharp), axis=2)).max()
        for s in range(5)
    )
    assert steepest > np.abs(np.diff(a, axis=2)).max()
    with pytest.raises(ValueError, match="sharpen"):
        Appearance(sharpen=-0.1)

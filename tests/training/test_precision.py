"""Float16 twins: the trained weights, float16 arithmetic, float32 outputs close to the original's."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from flare_seg.contract import LOCALIZATION_OUTPUT, SEGMENTATION_INPUT_CHANNELS, SEGMENTATION_OUTPUT
from flare_seg.training.export import _run_config
from flare_seg.training.train import restore_model


def test_float16_twins_round_to_float16_and_stay_close(tiny_runs, tiny_models):
    from flare_seg.service.models import load_models
    from flare_seg.service.pipeline import Segmenter
    from flare_seg.training.precision import float16_models, float16_twin

    rng = np.random.default_rng(5)
    for run, channels in ((tiny_runs[0], 1), (tiny_runs[1], SEGMENTATION_INPUT_CHANNELS)):
        config = _run_config(run)
        model, _ = restore_model(run, config)
        twin = float16_twin(model, config)
        assert keras.mixed_precision.global_policy().name == "float32"  # the global policy is restored
        convs = [layer for layer in twin.layers if isinstance(layer, keras.layers.Conv3D)]
        assert convs and all(layer.compute_dtype == "float16" for layer in convs[:-1])
        pools = [layer for layer in twin.layers if isinstance(layer, keras.layers.AveragePooling3D)]
        assert pools and all(layer.compute_dtype == "float32" for layer in pools)  # no CPU float16 kernel
        assert all(w.dtype == "float32" for w in twin.weights)
        for a, b in zip(model.get_weights(), twin.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
        x = rng.uniform(-1, 1, (1, 16, 16, 16, channels)).astype(np.float32)
        y32, y16 = model(x).numpy(), twin(x).numpy()
        assert y16.dtype == np.float32 and y16.shape == y32.shape
        difference = np.abs(y16 - y32).max()
        assert 0 < difference < 0.02  # rounded to float16 somewhere, and only that much

    models = float16_models(load_models(tiny_models), *tiny_runs)
    assert models.precision == "emulated_float16"
    x = tf.constant(rng.uniform(-1, 1, (1, 16, 16, 16, SEGMENTATION_INPUT_CHANNELS)).astype(np.float32))
    assert models.segmentation(x)[SEGMENTATION_OUTPUT].shape == (1, 16, 16, 16, 5)
    assert models.localization(x[..., :1])[LOCALIZATION_OUTPUT].shape[:4] == (1, 16, 16, 16)
    labels = Segmenter(models).segment_array(np.full((16, 32, 32), 40, np.int16), (8.0, 4.0, 4.0))
    assert labels.shape == (16, 32, 32) and labels.dtype == np.uint8


def test_float16_twins_of_exported_networks_and_of_an_ensemble(tiny_runs, tiny_models):
    """Twins can be built from exported networks, and of an ensemble (the mean of its members)."""
    from flare_seg.service.models import load_models
    from flare_seg.training.precision import float16_models

    loaded = load_models(tiny_models)
    single = float16_models(loaded, tiny_models / "localization", tiny_models / "segmentation")
    pair = float16_models(loaded, tiny_runs[0], [tiny_models / "segmentation", tiny_runs[1]])
    x = tf.constant(
        np.random.default_rng(2)
        .uniform(-1, 1, (1, 16, 16, 16, SEGMENTATION_INPUT_CHANNELS))
        .astype(np.float32)
    )
    y_single = single.segmentation(x)[SEGMENTATION_OUTPUT].numpy()
    y_pair = pair.segmentation(x)[SEGMENTATION_OUTPUT].numpy()
    y32 = loaded.segmentation(x)[SEGMENTATION_OUTPUT].numpy()
    # the same network twice: its mean is itself, and both stay within float16 rounding of float32
    np.testing.assert_allclose(y_pair, y_single, atol=1e-6)
    assert 0 < np.abs(y_single - y32).max() < 0.02

"""Widening a trained U-Net (flare_seg.training.widen): the wider network computes the same, and
training can start from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flare_seg.contract import SEGMENTATION_INPUT_CHANNELS
from flare_seg.labels import NUM_CLASSES, NUM_ORGANS
from flare_seg.training.config import load_config
from flare_seg.training.networks import localization_net, spatial_configuration_net
from flare_seg.training.widen import widen_unet


def _random_weights(model, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    for weight in model.weights:  # biases too, so that a wrong bias mapping shows
        shape = tuple(weight.shape)
        sd = 1.5 / np.sqrt(np.prod(shape[:-1])) if len(shape) > 1 else 0.1  # activations stay O(1)
        weight.assign(rng.normal(0.0, sd, shape).astype(np.float32))
    return {w.path: w.numpy() for w in model.weights}


def _input(channels: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 1.0, (1, 16, 16, 16, channels)).astype(np.float32)


@pytest.mark.parametrize("wide", [(16, 32, 64, 96), (5, 9, 17, 20)])  # twice as wide, and uneven
def test_widened_segmentation_network_computes_the_same(wide):
    narrow = (4, 8, 16, 16)
    small = spatial_configuration_net(NUM_CLASSES, SEGMENTATION_INPUT_CHANNELS, narrow, sc_filters=4)
    values = _random_weights(small, 0)
    big = spatial_configuration_net(NUM_CLASSES, SEGMENTATION_INPUT_CHANNELS, wide, sc_filters=4)
    widened = widen_unet(values, "la", "local_appearance", narrow, wide, seed=3)
    for weight in big.weights:
        weight.assign(widened[weight.path])
    x = _input(SEGMENTATION_INPUT_CHANNELS)
    expected = small(x).numpy()
    assert expected.std() > 1e-3  # not a constant output that any mapping would reproduce
    np.testing.assert_allclose(big(x).numpy(), expected, atol=1e-5)
    # the spatial branch is copied unchanged
    np.testing.assert_array_equal(widened["sc_out/kernel"], values["sc_out/kernel"])


def test_widened_copies_differ_and_localization_net_widens_too():
    narrow, wide = (4, 8, 8, 8), (8, 16, 16, 16)
    small = localization_net(NUM_ORGANS, narrow)
    values = _random_weights(small, 2)
    widened = widen_unet(values, "loc", "heatmaps", narrow, wide, seed=0)
    big = localization_net(NUM_ORGANS, wide)
    for weight in big.weights:
        weight.assign(widened[weight.path])
    x = _input(1, 4)
    np.testing.assert_allclose(big(x).numpy(), small(x).numpy(), atol=1e-5)
    # a copied channel's outgoing weights carry zero-sum noise: the copies can learn apart
    kernel = widened["loc_down0_conv1/kernel"]  # reads loc_down0_conv0's 8 channels (4 narrow ones twice)
    assert kernel.shape[-2] == 8
    slices = [kernel[..., i, :] for i in range(8)]  # without the noise, copies would be equal
    assert not any(np.allclose(slices[i], slices[j]) for i in range(8) for j in range(i))


def test_narrower_or_other_depth_is_refused():
    small = localization_net(NUM_ORGANS, (4, 8, 8, 8))
    values = {w.path: w.numpy() for w in small.weights}
    with pytest.raises(ValueError, match="narrower"):
        widen_unet(values, "loc", "heatmaps", (4, 8, 8, 8), (4, 4, 8, 8))
    with pytest.raises(ValueError, match="levels"):
        widen_unet(values, "loc", "heatmaps", (4, 8, 8, 8), (4, 8, 8))


def test_training_starts_from_a_narrower_run(tiny_runs: tuple[Path, Path]):
    """init_from a run of narrower filters: the wider network starts with that run's outputs."""
    from flare_seg.training.train import build_model, initialize_weights, restore_model

    seg_run = tiny_runs[1]
    recorded = load_config("segmentation", seg_run / "config.yaml")
    narrow_model, _ = restore_model(seg_run, recorded)
    config = load_config("segmentation", seg_run / "config.yaml", filters=(8, 16, 16, 16))
    wide_model = build_model(config)
    initialize_weights(wide_model, seg_run, config)
    assert wide_model.count_params() > narrow_model.count_params()
    x = _input(SEGMENTATION_INPUT_CHANNELS, 6)
    np.testing.assert_allclose(wide_model(x).numpy(), narrow_model(x).numpy(), atol=1e-5)
    narrower = load_config("segmentation", seg_run / "config.yaml", filters=(2, 8, 8, 8))
    with pytest.raises(ValueError, match=r"init_from .*narrower"):
        initialize_weights(build_model(narrower), seg_run, narrower)

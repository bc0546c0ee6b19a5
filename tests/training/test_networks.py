"""Network shapes and the SpatialConfiguration-Net's two ways of combining its branches."""

from __future__ import annotations

import numpy as np
import pytest

from flare_seg.training.networks import LinearUpsampling3D, localization_net, spatial_configuration_net


def test_localization_net_is_fully_convolutional_with_sigmoid_heatmaps():
    net = localization_net(4, filters=(4, 8, 8, 8))
    for shape in ((8, 16, 24), (16, 8, 8)):
        y = net(np.random.default_rng(0).uniform(-1, 1, (1, *shape, 1)).astype(np.float32)).numpy()
        assert y.shape == (1, *shape, 4)
        assert y.min() >= 0.0 and y.max() <= 1.0


def test_scn_outputs_probabilities_from_local_times_spatial():
    net = spatial_configuration_net(5, 4, filters=(4, 8, 8, 8), sc_filters=4)
    x = np.random.default_rng(1).uniform(-1, 1, (1, 16, 16, 24, 4)).astype(np.float32)
    p = net(x).numpy()
    assert p.shape == (1, 16, 16, 24, 5)
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, atol=1e-5)
    # silence the spatial configuration branch: tanh(0) = 0 multiplies every local score to 0,
    # so every class gets probability 1/5 whatever the local appearance says
    out = net.get_layer("sc_out")
    out.set_weights([np.zeros_like(w) for w in out.get_weights()])
    np.testing.assert_allclose(net(x).numpy(), 0.2, atol=1e-6)


def test_sum_scn_starts_as_its_local_appearance_net_and_its_spatial_term_adds_logits():
    import keras

    net = spatial_configuration_net(5, 4, filters=(4, 8, 8, 8), sc_filters=4, combine="sum")
    x = np.random.default_rng(2).uniform(-1, 1, (1, 16, 16, 24, 4)).astype(np.float32)
    local = keras.Model(net.input, net.get_layer("local_appearance").output)(x).numpy()
    softmax = np.exp(local - local.max(-1, keepdims=True))
    softmax /= softmax.sum(-1, keepdims=True)
    np.testing.assert_allclose(net(x).numpy(), softmax, atol=1e-6)  # sc_out starts at zero
    # a spatial bias of +3 on class 2 multiplies its unnormalized probability by e^3, everywhere
    out = net.get_layer("sc_out")
    kernel, _ = out.get_weights()
    out.set_weights([kernel, np.array([0, 0, 3, 0, 0], np.float32)])
    shifted = softmax * np.exp(np.array([0, 0, 3, 0, 0]))
    np.testing.assert_allclose(net(x).numpy(), shifted / shifted.sum(-1, keepdims=True), atol=1e-5)
    with pytest.raises(ValueError, match="combine"):
        spatial_configuration_net(5, 4, combine="max")  # type: ignore[arg-type]


def test_spatial_branch_runs_at_the_coarse_scale():
    net = spatial_configuration_net(5, 4, filters=(4, 8, 8, 8), sc_filters=4, sc_downsample=4)
    x = np.zeros((1, 16, 16, 16, 4), np.float32)
    coarse = net.get_layer("sc_out").output
    assert tuple(coarse.shape[1:4]) == (None, None, None)
    from keras import Model

    probe = Model(net.input, coarse)
    assert probe(x).shape == (1, 4, 4, 4, 5)


@pytest.mark.parametrize("factor", [2, 4])
def test_linear_upsampling_preserves_constants_and_shape(factor):
    x = np.full((1, 3, 4, 5, 2), 7.0, np.float32)
    y = LinearUpsampling3D(factor)(x).numpy()
    assert y.shape == (1, 3 * factor, 4 * factor, 5 * factor, 2)
    np.testing.assert_allclose(y, 7.0, atol=1e-5)

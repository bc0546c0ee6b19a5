"""Network shapes and the SpatialConfiguration-Net's multiplicative structure."""

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

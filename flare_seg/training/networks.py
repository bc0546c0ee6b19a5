"""The two networks, channels-last (N, D, H, W, C), fully convolutional.

- ``localization_net``: a small 3D U-Net on the whole body at ~6 mm; one sigmoid heatmap per
  organ, from which the organs' bounding box is derived.
- ``spatial_configuration_net``: a SpatialConfiguration-Net (Payer et al., 2019): a local
  appearance U-Net produces per-class local scores; a spatial configuration branch downsamples
  them, convolves with large kernels at the coarse scale and upsamples back; the two are
  combined and a softmax gives class probabilities.

  ``combine="product"`` is the original combination, local scores times a tanh-bounded spatial
  term. Trained with a softmax, it saturates: scaling the logits up lowers the loss, the tanh is
  the only part of the product that cannot grow, so it goes to +-1 everywhere and the spatial
  branch stops carrying information (and gradient). ``combine="sum"`` adds an unbounded spatial
  term to the local scores in log space (a product of the two branches' unnormalized
  probabilities), with the spatial output initialized to zero, so that training starts from the
  local-appearance network and the spatial term only grows where the layout adds information.
"""

from __future__ import annotations

from typing import Literal

import keras
import tensorflow as tf
from keras import layers

Combine = Literal["product", "sum"]
COMBINATIONS: tuple[Combine, ...] = ("product", "sum")


def _conv_block(x: keras.KerasTensor, filters: int, name: str, kernel: int = 3) -> keras.KerasTensor:
    for i in range(2):
        x = layers.Conv3D(
            filters, kernel, padding="same", kernel_initializer="he_normal", name=f"{name}_conv{i}"
        )(x)
        x = layers.LeakyReLU(0.1, name=f"{name}_act{i}")(x)
    return x


def _unet(
    x: keras.KerasTensor, filters: tuple[int, ...], name: str, pool_dtype: str | None = None
) -> keras.KerasTensor:
    """U-Net body with len(filters)-1 poolings; input sizes must be multiples of 2**(len-1)."""
    skips = []
    for level, f in enumerate(filters[:-1]):
        x = _conv_block(x, f, f"{name}_down{level}")
        skips.append(x)
        x = layers.AveragePooling3D(2, name=f"{name}_pool{level}", dtype=pool_dtype)(x)
    x = _conv_block(x, filters[-1], f"{name}_bottom")
    for level in reversed(range(len(filters) - 1)):
        x = layers.UpSampling3D(2, name=f"{name}_up{level}")(x)
        x = layers.Concatenate(name=f"{name}_cat{level}")([x, skips[level]])
        x = _conv_block(x, filters[level], f"{name}_dec{level}")
    return x


@keras.saving.register_keras_serializable(package="flare_seg")
class LinearUpsampling3D(layers.Layer):
    """Trilinear upsampling by an integer factor (same-extent convention), channels-last."""

    def __init__(self, factor: int, **kwargs):
        super().__init__(**kwargs)
        self.factor = int(factor)

    def call(self, x):
        shape = tf.shape(x)
        n, d, h, w, c = shape[0], shape[1], shape[2], shape[3], shape[4]
        f = self.factor
        # in-plane: fold z into the batch
        y = tf.reshape(x, tf.stack([n * d, h, w, c]))
        y = tf.image.resize(y, tf.stack([h * f, w * f]), method="bilinear")
        y = tf.reshape(y, tf.stack([n, d, h * f, w * f, c]))
        # along z: fold y into the batch
        y = tf.transpose(y, [0, 2, 1, 3, 4])
        y = tf.reshape(y, tf.stack([n * h * f, d, w * f, c]))
        y = tf.image.resize(y, tf.stack([d * f, w * f]), method="bilinear")
        y = tf.reshape(y, tf.stack([n, h * f, d * f, w * f, c]))
        return tf.transpose(y, [0, 2, 1, 3, 4])

    def compute_output_shape(self, input_shape):
        n, d, h, w, c = input_shape
        f = self.factor
        return (
            n,
            None if d is None else d * f,
            None if h is None else h * f,
            None if w is None else w * f,
            c,
        )

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


def localization_net(
    num_organs: int, filters: tuple[int, ...] = (8, 16, 32, 32), pool_dtype: str | None = None
) -> keras.Model:
    """Whole-volume organ heatmaps: (1, D, H, W, 1) -> (1, D, H, W, num_organs) in [0, 1].

    ``pool_dtype``: the average-pooling layers' dtype policy (default: the global policy)."""
    image = keras.Input((None, None, None, 1), name="image")
    x = _unet(image, filters, "loc", pool_dtype)
    heatmaps = layers.Conv3D(num_organs, 1, activation="sigmoid", dtype="float32", name="heatmaps")(x)
    return keras.Model(image, heatmaps, name="localization")


def spatial_configuration_net(
    num_classes: int,
    input_channels: int,
    filters: tuple[int, ...] = (16, 32, 48, 64),
    sc_filters: int = 32,
    sc_downsample: int = 4,
    sc_kernel: int = 5,
    pool_dtype: str | None = None,
    combine: Combine = "product",
) -> keras.Model:
    """SpatialConfiguration-Net: (1, D, H, W, input_channels) -> (1, D, H, W, num_classes) softmax.

    Sizes must be multiples of ``max(2**(len(filters)-1), sc_downsample)``. ``pool_dtype``: the
    average-pooling layers' dtype policy (default: the global policy). ``combine``: how the
    local and the spatial term make the logits (see the module's docstring).
    """
    if combine not in COMBINATIONS:
        raise ValueError(f"combine must be one of {', '.join(COMBINATIONS)}, not {combine!r}")
    image = keras.Input((None, None, None, input_channels), name="image")
    features = _unet(image, filters, "la", pool_dtype)
    local = layers.Conv3D(num_classes, 1, name="local_appearance", kernel_initializer="he_normal")(features)
    x = layers.AveragePooling3D(sc_downsample, name="sc_down", dtype=pool_dtype)(local)
    for i in range(3):
        x = layers.Conv3D(
            sc_filters, sc_kernel, padding="same", kernel_initializer="he_normal", name=f"sc_conv{i}"
        )(x)
        x = layers.LeakyReLU(0.1, name=f"sc_act{i}")(x)
    if combine == "product":
        x = layers.Conv3D(num_classes, sc_kernel, padding="same", activation="tanh", name="sc_out")(x)
        spatial = LinearUpsampling3D(sc_downsample, name="spatial_configuration")(x)
        logits = layers.Multiply(name="scn_product")([local, spatial])
    else:
        x = layers.Conv3D(num_classes, sc_kernel, padding="same", kernel_initializer="zeros", name="sc_out")(
            x
        )
        spatial = LinearUpsampling3D(sc_downsample, name="spatial_configuration")(x)
        logits = layers.Add(name="scn_sum")([local, spatial])
    probabilities = layers.Softmax(axis=-1, dtype="float32", name="probabilities")(logits)
    return keras.Model(image, probabilities, name="spatial_configuration_net")

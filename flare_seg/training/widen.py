"""Start a wider U-Net from a trained narrower one without changing what it computes (Net2WiderNet,
Chen et al., 2016).

Each convolution of the wider network's U-Net body gets the narrow one's output channels, then
copies of them; a layer that reads a copied channel splits that channel's weights among its copies.
With element-wise activations (LeakyReLU) and averaging, pooling, upsampling and concatenation
between the convolutions, the wider network's outputs equal the narrow one's. So that the copies
can learn different features, the split weights get noise that sums to zero over each channel's
copies: the function stays the same, the copies' gradients do not.

Layer names follow ``flare_seg.training.networks._unet``: ``{prefix}_down{l}_conv{i}``,
``{prefix}_bottom_conv{i}`` and ``{prefix}_dec{l}_conv{i}``, then a 1x1 ``head`` convolution.
Every other weight is copied unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SPLIT_NOISE = 0.05  # SD of the zero-sum noise, relative to the SD of the layer's narrow kernel


@dataclass(frozen=True)
class _Channels:
    """A tensor of the wider network: for each of its channels, the narrow channel it copies."""

    source: np.ndarray  # (wide channels,) indices into the narrow tensor's channels

    @property
    def copies(self) -> np.ndarray:
        """How many wide channels copy each narrow channel."""
        return np.bincount(self.source)

    def concat(self, other: _Channels, offset: int) -> _Channels:
        return _Channels(np.concatenate([self.source, other.source + offset]))


def _identity(n: int) -> _Channels:
    return _Channels(np.arange(n))


def _wider(narrow: int, wide: int, rng: np.random.Generator) -> _Channels:
    """``wide`` channels copying ``narrow`` ones: each once, then as evenly as possible."""
    extra = [rng.permutation(narrow) for _ in range((wide - narrow) // narrow + 1)]
    return _Channels(np.concatenate([np.arange(narrow), *extra])[:wide])


def _conv(
    kernel: np.ndarray,
    bias: np.ndarray,
    inputs: _Channels,
    outputs: _Channels,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """The wide kernel and bias of a convolution reading ``inputs`` and writing ``outputs``."""
    wide = kernel[..., inputs.source, :][..., outputs.source].astype(np.float64)
    copies = inputs.copies[inputs.source]
    wide /= copies[:, None]
    if np.any(copies > 1):
        noise = rng.normal(0.0, SPLIT_NOISE * float(kernel.std()), wide.shape)
        # zero-sum over each narrow input channel's copies: the sum the next layer sees is unchanged
        for channel in np.flatnonzero(inputs.copies > 1):
            group = np.flatnonzero(inputs.source == channel)
            noise[..., group, :] -= noise[..., group, :].mean(axis=-2, keepdims=True)
        noise[..., copies == 1, :] = 0.0
        wide += noise
    return wide.astype(kernel.dtype), bias[outputs.source]


def widen_unet(
    values: dict[str, np.ndarray],
    prefix: str,
    head: str,
    narrow_filters: Sequence[int],
    wide_filters: Sequence[int],
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The weights (``values``: path -> array, Keras paths such as ``la_down0_conv0/kernel``) of a
    U-Net body of ``narrow_filters`` and its 1x1 ``head``, widened to ``wide_filters`` (one width
    per level, each at least the narrow one's); other weights unchanged."""
    if len(narrow_filters) != len(wide_filters):
        raise ValueError(f"cannot widen a {len(narrow_filters)}-level network to {len(wide_filters)} levels")
    if any(w < n for n, w in zip(narrow_filters, wide_filters, strict=True)):
        raise ValueError(f"filters {list(wide_filters)} are narrower than {list(narrow_filters)}")
    rng = np.random.default_rng(seed)
    out = dict(values)

    def block(name: str, inputs: _Channels, narrow: int, wide: int) -> _Channels:
        channels = _wider(narrow, wide, rng)
        for i in range(2):
            layer = f"{name}_conv{i}"
            out[f"{layer}/kernel"], out[f"{layer}/bias"] = _conv(
                values[f"{layer}/kernel"], values[f"{layer}/bias"], inputs, channels, rng
            )
            inputs = channels
        return channels

    x = _identity(values[f"{prefix}_down0_conv0/kernel"].shape[-2])
    skips = []
    for level, (n, w) in enumerate(zip(narrow_filters[:-1], wide_filters[:-1], strict=True)):
        x = block(f"{prefix}_down{level}", x, n, w)
        skips.append(x)
    x = block(f"{prefix}_bottom", x, narrow_filters[-1], wide_filters[-1])
    narrow_width = narrow_filters[-1]
    for level in reversed(range(len(narrow_filters) - 1)):
        x = x.concat(skips[level], narrow_width)  # Concatenate([upsampled, skip])
        x = block(f"{prefix}_dec{level}", x, narrow_filters[level], wide_filters[level])
        narrow_width = narrow_filters[level]
    kernel, bias = values[f"{head}/kernel"], values[f"{head}/bias"]
    out[f"{head}/kernel"], out[f"{head}/bias"] = _conv(kernel, bias, x, _identity(kernel.shape[-1]), rng)
    return out

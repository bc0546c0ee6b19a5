"""Traced preprocessing and postprocessing, exported as the ``tf_utils_module`` SavedModel.

All arrays are channels-last and indexed (z, y, x) on an axis-aligned LPS grid. Resampling uses
the "same extent" convention: a grid of ``n`` voxels resampled to ``m`` voxels covers the same
physical extent, so output voxel ``j`` is centred on input continuous index
``(j + 0.5) * n / m - 0.5`` and the output spacing is ``spacing * n / m``. Downsampling is
antialiased (``tf.image.resize(antialias=True)``); the inverse mapping used to bring scores back
is the same convention with bilinear interpolation.

The same functions serve training data preparation and inference, so both see identical inputs.
"""

from __future__ import annotations

import tensorflow as tf

from flare_seg.contract import ModelContract


def _pad_to_multiple(volume: tf.Tensor, multiple: int, value: float) -> tf.Tensor:
    """Pad a (D, H, W) volume at the far end of each axis up to a multiple of ``multiple``."""
    shape = tf.shape(volume)
    target = ((shape + multiple - 1) // multiple) * multiple
    paddings = tf.stack([tf.zeros([3], tf.int32), target - shape], axis=1)
    return tf.pad(volume, paddings, constant_values=value)


def _window(volume: tf.Tensor, window_hu: tuple[float, float]) -> tf.Tensor:
    """Clip HU to the window and map it linearly to [-1, 1]."""
    lo, hi = float(window_hu[0]), float(window_hu[1])
    return (tf.clip_by_value(volume, lo, hi) - (lo + hi) / 2.0) / ((hi - lo) / 2.0)


def crop_resample_inplane(
    slab: tf.Tensor, start_yx: tf.Tensor, size_yx: tf.Tensor, out_hw: tf.Tensor
) -> tf.Tensor:
    """Crop every z-slice of ``slab`` (n, H, W) float32 to [start, start+size) in (y, x) and resample
    it to ``out_hw`` (antialiased). Returns (n, out_h, out_w) float32."""
    cropped = slab[:, start_yx[0] : start_yx[0] + size_yx[0], start_yx[1] : start_yx[1] + size_yx[1]]
    resized = tf.image.resize(cropped[..., tf.newaxis], out_hw, method="bilinear", antialias=True)
    return resized[..., 0]


def resample_z(volume: tf.Tensor, out_d: tf.Tensor) -> tf.Tensor:
    """Resample a (D, h, w) float32 volume along z to ``out_d`` slices (antialiased when shrinking)."""
    shape = tf.shape(volume)
    as_images = tf.transpose(volume, [1, 0, 2])[..., tf.newaxis]  # (h, D, w, 1): batch over y
    resized = tf.image.resize(as_images, tf.stack([out_d, shape[2]]), method="bilinear", antialias=True)
    return tf.transpose(resized[..., 0], [1, 0, 2])


def normalize_localization(volume: tf.Tensor, contract: ModelContract) -> tf.Tensor:
    """(D, H, W) HU -> (1, D', H', W', 1) network input, padded with air to valid sizes."""
    windowed = _window(volume, contract.localization_window_hu)
    padded = _pad_to_multiple(windowed, contract.localization_size_multiple, -1.0)
    return padded[tf.newaxis, ..., tf.newaxis]


def position_channels(
    shape_zyx: tf.Tensor, spacing_mm_zyx: tf.Tensor, center_mm_zyx: tf.Tensor, scale_mm: float
) -> tf.Tensor:
    """(D, H, W, 3) float32: each voxel centre's (z, y, x) offset from the organ box centre, in
    units of ``scale_mm``. ``center_mm_zyx`` is measured from the grid's leading edge."""
    axes = []
    for axis in range(3):
        n = shape_zyx[axis]
        pos = (tf.cast(tf.range(n), tf.float32) + 0.5) * spacing_mm_zyx[axis] - center_mm_zyx[axis]
        axes.append(pos / scale_mm)
    z, y, x = tf.meshgrid(axes[0], axes[1], axes[2], indexing="ij")
    return tf.stack([z, y, x], axis=-1)


def normalize_segmentation(
    volume: tf.Tensor, spacing_mm_zyx: tf.Tensor, center_mm_zyx: tf.Tensor, contract: ModelContract
) -> tf.Tensor:
    """(D, H, W) HU on the box grid -> (1, D', H', W', 4) network input: windowed intensity padded
    to valid sizes, and position channels (which continue linearly into the padding)."""
    windowed = _pad_to_multiple(
        _window(volume, contract.segmentation_window_hu), contract.segmentation_size_multiple, -1.0
    )
    coords = position_channels(
        tf.shape(windowed), spacing_mm_zyx, center_mm_zyx, contract.coordinate_scale_mm
    )
    return tf.concat([windowed[..., tf.newaxis], coords], axis=-1)[tf.newaxis]


def _peak_run(profile: tf.Tensor, threshold: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The run of ``profile > threshold`` that contains the profile's maximum: (start, stop, found)."""
    n = tf.shape(profile)[0]
    peak = tf.cast(tf.argmax(profile), tf.int32)
    idx = tf.range(n)
    below = profile <= threshold
    start = tf.reduce_max(tf.where(below & (idx <= peak), idx, -1)) + 1
    stop = tf.reduce_min(tf.where(below & (idx >= peak), idx, n))
    return start, stop, profile[peak] > threshold


def box_from_heatmaps(heatmaps: tf.Tensor, threshold: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Union of the organs' boxes, each robust to stray detections away from the organ.

    heatmaps: (D, H, W, C) float32. For each organ and axis, the heatmap's maximum projection onto
    that axis is thresholded and only the run containing its peak is kept, so a false-positive blob
    separated from the organ along any axis does not stretch the box. Returns (start_zyx int32,
    stop_zyx int32 exclusive, found bool); when no organ exceeds the threshold, the box is the whole
    grid and found is False.
    """
    shape = tf.shape(heatmaps)[:3]
    starts, stops, founds = [], [], []
    for axis in range(3):
        others = [a for a in range(3) if a != axis]
        profiles = tf.transpose(tf.reduce_max(heatmaps, axis=others))  # (C, n)
        s, e, f = tf.map_fn(
            lambda p: _peak_run(p, threshold),
            profiles,
            fn_output_signature=(tf.int32, tf.int32, tf.bool),
        )
        starts.append(s)
        stops.append(e)
        founds.append(f)
    organ_found = founds[0] & founds[1] & founds[2]  # (C,)
    found = tf.reduce_any(organ_found)
    big = tf.reduce_max(shape) + 1
    start = tf.stack([tf.reduce_min(tf.where(organ_found, s, big)) for s in starts])
    stop = tf.stack([tf.reduce_max(tf.where(organ_found, e, -1)) for e in stops])
    start = tf.where(found, start, tf.zeros([3], tf.int32))
    stop = tf.where(found, stop, shape)
    return start, stop, found


def _linear_taps(n_in: tf.Tensor, n_out: tf.Tensor, start: tf.Tensor, count: tf.Tensor):
    """Source taps (i0, i1) and weight of i1 for output samples [start, start + count) of a linear
    resampling from n_in to n_out samples over the same extent (half-pixel centres, edges clamped;
    the convention of ``tf.image.resize(..., "bilinear")``)."""
    scale = tf.cast(n_in, tf.float32) / tf.cast(n_out, tf.float32)
    k = tf.cast(tf.range(start, start + count), tf.float32)
    src = tf.clip_by_value((k + 0.5) * scale - 0.5, 0.0, tf.cast(n_in - 1, tf.float32))
    i0 = tf.cast(tf.floor(src), tf.int32)
    i1 = tf.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - tf.cast(i0, tf.float32)


def labels_from_scores_slab(
    scores: tf.Tensor, out_shape_zyx: tf.Tensor, z_start: tf.Tensor, z_count: tf.Tensor
) -> tf.Tensor:
    """Resample class scores (d, h, w, C) on the box grid trilinearly onto the output grid
    ``out_shape_zyx`` (same extent), for output slices [z_start, z_start + z_count) only, and take
    the argmax.

    Exact without interpolating everywhere: where all eight source corners of an output voxel have
    the same argmax k, every interpolated difference p_k - p_j is a convex combination of positive
    (or, for j > k, non-negative) differences, so the interpolated argmax is k too. Only output
    voxels in cells whose corners disagree (a thin layer along organ boundaries) are interpolated.

    Each output voxel's label depends only on its own cell, so slabs of any size give the same labels.

    Returns (z_count, H, W) uint8 labels.
    """
    z0, z1, _ = _linear_taps(tf.shape(scores)[0], out_shape_zyx[0], z_start, z_count)
    lo = z0[0]
    labels, mixed = _mixed_cells(scores, lo, z1[-1] + 1)
    return _labels_sparse(scores, out_shape_zyx, z_start, z_count, labels, mixed, lo)


def _next(a: tf.Tensor, axis: int) -> tf.Tensor:
    """``a`` shifted by one sample towards lower indices along ``axis``, the last sample repeated."""
    if axis == 0:
        return tf.concat([a[1:], a[-1:]], axis=0)
    if axis == 1:
        return tf.concat([a[:, 1:], a[:, -1:]], axis=1)
    return tf.concat([a[:, :, 1:], a[:, :, -1:]], axis=2)


def _mixed_cells(scores: tf.Tensor, lo: tf.Tensor, hi: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Argmax labels (uint8) of source slices [lo, hi), and which cells (z..z+1, y..y+1, x..x+1,
    clamped at the far edges) there have corners with different labels: the cell's largest and
    smallest label differ."""
    labels = tf.cast(tf.argmax(scores[lo:hi], axis=-1), tf.uint8)
    high, low = labels, labels
    for axis in range(3):
        high = tf.maximum(high, _next(high, axis))
        low = tf.minimum(low, _next(low, axis))
    return labels, tf.not_equal(high, low)


def _labels_sparse(scores, out_shape_zyx, z_start, z_count, labels, mixed, lo) -> tf.Tensor:
    """Output labels taken from the source labels, interpolated only inside mixed cells."""
    shape = tf.shape(scores)
    z0, z1, wz = _linear_taps(shape[0], out_shape_zyx[0], z_start, z_count)
    y0, y1, wy = _linear_taps(shape[1], out_shape_zyx[1], 0, out_shape_zyx[1])
    x0, x1, wx = _linear_taps(shape[2], out_shape_zyx[2], 0, out_shape_zyx[2])
    # One flat 1-D gather per array: much faster on a CPU than three per-axis gathers of bytes.
    ds, hs, ws = tf.shape(labels)[0], shape[1], shape[2]
    flat_index = ((z0 - lo)[:, None, None] * hs + y0[None, :, None]) * ws + x0[None, None, :]

    # Labels (< 128) and the mixed flag (bit 7) travel in one byte: a single gather for both.
    packed = labels | tf.cast(mixed, tf.uint8) * tf.constant(128, tf.uint8)
    at_output = tf.gather(tf.reshape(packed, [ds * hs * ws]), flat_index)
    out = at_output & tf.constant(127, tf.uint8)
    where = tf.where(at_output >= tf.constant(128, tf.uint8))  # (k, 3) output voxels to interpolate
    iz, iy, ix = where[:, 0], where[:, 1], where[:, 2]
    # Trilinear interpolation at those voxels: eight corner rows of the flattened scores each.
    rows = tf.reshape(scores, [-1, shape[3]])
    taps_z = [tf.gather(z0, iz) * hs, tf.gather(z1, iz) * hs]
    taps_y = [tf.gather(y0, iy), tf.gather(y1, iy)]
    taps_x = [tf.gather(x0, ix), tf.gather(x1, ix)]
    fz, fy, fx = tf.gather(wz, iz), tf.gather(wy, iy), tf.gather(wx, ix)
    weights_z, weights_y, weights_x = [1.0 - fz, fz], [1.0 - fy, fy], [1.0 - fx, fx]
    acc = tf.zeros([tf.shape(where)[0], shape[3]], tf.float32)
    for cz, cy, cx in [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)]:
        index = (taps_z[cz] + taps_y[cy]) * ws + taps_x[cx]
        weight = weights_z[cz] * weights_y[cy] * weights_x[cx]
        acc += weight[:, tf.newaxis] * tf.gather(rows, index)
    interpolated = tf.cast(tf.argmax(acc, axis=-1), tf.uint8)
    return tf.tensor_scatter_nd_update(out, where, interpolated)


class TfUtilsModule(tf.Module):
    """The exported preprocessing/postprocessing functions with fixed input signatures."""

    def __init__(self, contract: ModelContract) -> None:
        super().__init__(name="tf_utils_module")
        self._contract = contract

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None], tf.float32, name="slab"),
            tf.TensorSpec([2], tf.int32, name="start_yx"),
            tf.TensorSpec([2], tf.int32, name="size_yx"),
            tf.TensorSpec([2], tf.int32, name="out_hw"),
        ]
    )
    def crop_resample_inplane(self, slab, start_yx, size_yx, out_hw):
        return crop_resample_inplane(slab, start_yx, size_yx, out_hw)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None], tf.float32, name="volume"),
            tf.TensorSpec([], tf.int32, name="out_d"),
        ]
    )
    def resample_z(self, volume, out_d):
        return resample_z(volume, out_d)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.float32, name="volume")])
    def normalize_localization(self, volume):
        return normalize_localization(volume, self._contract)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None], tf.float32, name="volume"),
            tf.TensorSpec([3], tf.float32, name="spacing_mm_zyx"),
            tf.TensorSpec([3], tf.float32, name="center_mm_zyx"),
        ]
    )
    def normalize_segmentation(self, volume, spacing_mm_zyx, center_mm_zyx):
        return normalize_segmentation(volume, spacing_mm_zyx, center_mm_zyx, self._contract)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None, None], tf.float32, name="heatmaps"),
            tf.TensorSpec([], tf.float32, name="threshold"),
        ]
    )
    def box_from_heatmaps(self, heatmaps, threshold):
        return box_from_heatmaps(heatmaps, threshold)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None, None], tf.float32, name="scores"),
            tf.TensorSpec([3], tf.int32, name="out_shape_zyx"),
            tf.TensorSpec([], tf.int32, name="z_start"),
            tf.TensorSpec([], tf.int32, name="z_count"),
        ]
    )
    def labels_from_scores_slab(self, scores, out_shape_zyx, z_start, z_count):
        return labels_from_scores_slab(scores, out_shape_zyx, z_start, z_count)

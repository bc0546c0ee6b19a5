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


def resample_taps(n_in: tf.Tensor, n_out: tf.Tensor) -> tf.Tensor:
    """Lower source tap (int32, non-decreasing) of each of ``n_out`` samples resampled linearly from
    ``n_in`` samples over the same extent."""
    return _linear_taps(n_in, n_out, 0, n_out)[0]


def label_cells(scores: tf.Tensor) -> tf.Tensor:
    """Per source voxel of class scores (d, h, w, C): the argmax label (bits 0-6), plus bit 7 when
    the cell spanned by the voxel and its next neighbours (z..z+1, y..y+1, x..x+1, clamped at the
    far edges) has corners with different labels. (d, h, w) uint8.

    Resampling the scores trilinearly and taking the argmax is then exact without interpolating
    everywhere: where all eight corners of an output voxel's cell have the same argmax k, every
    interpolated difference p_k - p_j is a convex combination of positive (or, for j > k,
    non-negative) differences, so the interpolated argmax is k too. Only output voxels whose cell
    has bit 7 (a thin layer along organ boundaries) need ``labels_at``.
    """
    labels = tf.cast(tf.argmax(scores, axis=-1), tf.uint8)
    high, low = labels, labels
    for axis in range(3):
        high = tf.maximum(high, _next(high, axis))
        low = tf.minimum(low, _next(low, axis))
    mixed = tf.cast(tf.not_equal(high, low), tf.uint8) * tf.constant(128, tf.uint8)
    return labels | mixed


def _next(a: tf.Tensor, axis: int) -> tf.Tensor:
    """``a`` shifted by one sample towards lower indices along ``axis``, the last sample repeated."""
    if axis == 0:
        return tf.concat([a[1:], a[-1:]], axis=0)
    if axis == 1:
        return tf.concat([a[:, 1:], a[:, -1:]], axis=1)
    return tf.concat([a[:, :, 1:], a[:, :, -1:]], axis=2)


def labels_at(scores: tf.Tensor, out_shape_zyx: tf.Tensor, points_zyx: tf.Tensor) -> tf.Tensor:
    """Argmax of the class scores (d, h, w, C) resampled trilinearly onto ``out_shape_zyx`` (same
    extent), at the output voxels ``points_zyx`` (k, 3) only. (k,) uint8."""
    shape = tf.shape(scores)
    taps = [_linear_taps(shape[axis], out_shape_zyx[axis], 0, out_shape_zyx[axis]) for axis in range(3)]
    hs, ws = shape[1], shape[2]
    (z0, z1, wz), (y0, y1, wy), (x0, x1, wx) = (
        [tf.gather(t, points_zyx[:, axis]) for t in taps[axis]] for axis in range(3)
    )
    # Eight corner rows of the flattened scores per point, weighted.
    rows = tf.reshape(scores, [-1, shape[3]])
    taps_z, taps_y, taps_x = [z0 * hs, z1 * hs], [y0, y1], [x0, x1]
    weights_z, weights_y, weights_x = [1.0 - wz, wz], [1.0 - wy, wy], [1.0 - wx, wx]
    acc = tf.zeros([tf.shape(points_zyx)[0], shape[3]], tf.float32)
    for cz, cy, cx in [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)]:
        index = (taps_z[cz] + taps_y[cy]) * ws + taps_x[cx]
        weight = weights_z[cz] * weights_y[cy] * weights_x[cx]
        acc += weight[:, tf.newaxis] * tf.gather(rows, index)
    return tf.cast(tf.argmax(acc, axis=-1), tf.uint8)


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
        input_signature=[tf.TensorSpec([], tf.int32, name="n_in"), tf.TensorSpec([], tf.int32, name="n_out")]
    )
    def resample_taps(self, n_in, n_out):
        return resample_taps(n_in, n_out)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, None], tf.float32, name="scores")])
    def label_cells(self, scores):
        return label_cells(scores)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None, None], tf.float32, name="scores"),
            tf.TensorSpec([3], tf.int32, name="out_shape_zyx"),
            tf.TensorSpec([None, 3], tf.int32, name="points_zyx"),
        ]
    )
    def labels_at(self, scores, out_shape_zyx, points_zyx):
        return labels_at(scores, out_shape_zyx, points_zyx)

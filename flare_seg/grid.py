"""Crops and resampling plans on a canonical (identity-direction, LPS) grid.

Index conventions: arrays are (z, y, x). A voxel ``i`` of a grid covers the half-open "edge"
interval [i, i + 1) along its axis; boxes are given in these edge coordinates, so the box of
voxels ``start..stop-1`` is [start, stop). A crop of ``size`` voxels resampled to ``out_shape``
voxels covers the same extent (see ``flare_seg.training.tf_utils`` for the interpolation).

Used by the service and by training data preparation alike, so both cut identical boxes.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

Zyx = tuple[int, int, int]
ZyxF = tuple[float, float, float]


@dataclass(frozen=True)
class GridCrop:
    """A box of a canonical grid, resampled onto ``out_shape_zyx`` voxels over the same extent."""

    start_zyx: Zyx  # first voxel of the crop, in the source grid
    size_zyx: Zyx  # voxels of the source grid in the crop
    out_shape_zyx: Zyx  # voxels of the resampled grid
    source_spacing_mm_zyx: ZyxF

    @property
    def out_spacing_mm_zyx(self) -> ZyxF:
        return tuple(  # type: ignore[return-value]
            s * n / m
            for s, n, m in zip(self.source_spacing_mm_zyx, self.size_zyx, self.out_shape_zyx, strict=True)
        )

    @property
    def stop_zyx(self) -> Zyx:
        return tuple(a + n for a, n in zip(self.start_zyx, self.size_zyx, strict=True))  # type: ignore[return-value]

    def source_edge_to_out_mm(self, edge_zyx: np.ndarray) -> np.ndarray:
        """Source-grid edge coordinates -> mm from the resampled grid's leading edge."""
        return (np.asarray(edge_zyx, float) - np.asarray(self.start_zyx)) * np.asarray(
            self.source_spacing_mm_zyx
        )

    def out_edge_to_source_edge(self, edge_zyx: np.ndarray) -> np.ndarray:
        """Resampled-grid edge coordinates -> source-grid edge coordinates."""
        scale = np.asarray(self.size_zyx, float) / np.asarray(self.out_shape_zyx, float)
        return np.asarray(self.start_zyx, float) + np.asarray(edge_zyx, float) * scale


def plan_shape(size_zyx: Zyx, spacing_mm_zyx: ZyxF, target_spacing_mm: float, max_size_vox: int) -> Zyx:
    """Voxel counts that resample ``size_zyx`` at ``spacing_mm_zyx`` to about ``target_spacing_mm``.

    When an axis would exceed ``max_size_vox``, the spacing is coarsened isotropically so that
    the longest axis fits: memory stays bounded whatever the field of view.
    """
    extent = np.asarray(size_zyx, float) * np.asarray(spacing_mm_zyx, float)
    target = _capped_spacing(extent, target_spacing_mm, max_size_vox)
    shape = np.maximum(1, np.minimum(max_size_vox, np.ceil(extent / target - 1e-6))).astype(int)
    return tuple(int(v) for v in shape)  # type: ignore[return-value]


def _capped_spacing(extent_mm: np.ndarray, target_spacing_mm: float, max_size_vox: int) -> float:
    """``target_spacing_mm``, coarsened isotropically when the longest extent would need more than
    ``max_size_vox`` voxels."""
    return max(target_spacing_mm, float(extent_mm.max()) / max_size_vox)


def crop_around_box(
    box_lo_edge_zyx: np.ndarray,
    box_hi_edge_zyx: np.ndarray,
    shape_zyx: Zyx,
    spacing_mm_zyx: ZyxF,
    margin_mm: float,
) -> tuple[Zyx, Zyx]:
    """Voxel (start, size) of the box grown by ``margin_mm`` on every side, clamped to the grid."""
    margin_vox = margin_mm / np.asarray(spacing_mm_zyx, float)
    lo = np.floor(np.asarray(box_lo_edge_zyx, float) - margin_vox + 1e-6).astype(int)
    hi = np.ceil(np.asarray(box_hi_edge_zyx, float) + margin_vox - 1e-6).astype(int)
    lo = np.clip(lo, 0, np.asarray(shape_zyx) - 1)
    hi = np.clip(hi, lo + 1, np.asarray(shape_zyx))
    return tuple(int(v) for v in lo), tuple(int(v) for v in hi - lo)  # type: ignore[return-value]


def fit_crop_to_valid_size(
    start_zyx: Zyx,
    size_zyx: Zyx,
    box_lo_edge_zyx: np.ndarray,
    box_hi_edge_zyx: np.ndarray,
    shape_zyx: Zyx,
    spacing_mm_zyx: ZyxF,
    target_spacing_mm: float,
    max_size_vox: int,
    multiple: int,
    min_margin_mm: float,
) -> GridCrop:
    """The crop ``start/size`` (a box plus its margin), trimmed or grown along each axis so that it
    resamples to a valid network size (a multiple of ``multiple``) at about the planned spacing:
    no voxel of padding is then computed, and the spacing stays within half a source voxel of
    ``plan_shape``'s.

    Per axis, the crop is trimmed to the lower multiple when the box keeps at least
    ``min_margin_mm`` on both sides (trimming the side with more room first), else grown to the
    upper multiple with image context (centred, shifted inside the image). When the image is too
    small for that, the crop and ``plan_shape``'s count are kept and the network input is padded.
    """
    if max_size_vox % multiple:
        raise ValueError(f"max_size_vox {max_size_vox} is not a multiple of {multiple}")
    spacing = np.asarray(spacing_mm_zyx, float)
    extent = np.asarray(size_zyx, float) * spacing
    target = _capped_spacing(extent, target_spacing_mm, max_size_vox)
    planned_counts = plan_shape(size_zyx, spacing_mm_zyx, target_spacing_mm, max_size_vox)
    starts, sizes, counts = [], [], []
    for axis in range(3):
        start, size, n_shape = int(start_zyx[axis]), int(size_zyx[axis]), int(shape_zyx[axis])
        sp = spacing[axis]
        planned = extent[axis] / target
        lower = multiple * int(np.floor(planned / multiple + 1e-9))
        upper = multiple * int(np.ceil(planned / multiple - 1e-9))
        fitted = None
        if lower >= multiple:
            keep = max(1, min(size, round(lower * target / sp)))
            cut = size - keep
            margin_vox = min_margin_mm / sp
            room_lo = max(0, int(np.floor(box_lo_edge_zyx[axis] - start - margin_vox + 1e-6)))
            room_hi = max(0, int(np.floor(start + size - box_hi_edge_zyx[axis] - margin_vox + 1e-6)))
            if cut <= room_lo + room_hi:
                take_lo = min(room_lo, max(cut - room_hi, cut // 2))
                fitted = (start + take_lo, keep, lower)
        if fitted is None:
            want = max(1, round(upper * target / sp))
            if size <= want <= n_shape:
                grown = min(max(0, start - (want - size) // 2), n_shape - want)
                fitted = (grown, want, upper)
            else:
                fitted = (start, size, planned_counts[axis])
        starts.append(fitted[0])
        sizes.append(fitted[1])
        counts.append(fitted[2])
    return GridCrop(tuple(starts), tuple(sizes), tuple(counts), tuple(float(s) for s in spacing))  # type: ignore[arg-type]


class ResampleFunctions(Protocol):
    """The tf_utils functions used here (a loaded SavedModel or the in-memory module)."""

    def crop_resample_inplane(self, slab: Any, start_yx: Any, size_yx: Any, out_hw: Any) -> Any: ...

    def resample_z(self, volume: Any, out_d: Any) -> Any: ...


class ScoresFunctions(Protocol):
    """The tf_utils functions that bring class scores back to a finer grid."""

    def resample_taps(self, n_in: Any, n_out: Any) -> Any: ...

    def label_cells(self, scores: Any) -> Any: ...

    def labels_at(self, scores: Any, out_shape_zyx: Any, points_zyx: Any) -> Any: ...


def slab_slices(total: int, bytes_per_slice: int, budget_bytes: int) -> int:
    """Slices per slab so that a slab stays within ``budget_bytes`` (at least one)."""
    return max(1, min(total, budget_bytes // max(1, bytes_per_slice)))


def resample_crop(
    fns: ResampleFunctions, volume_zyx: np.ndarray, crop: GridCrop, budget_bytes: int = 256 * 2**20
) -> np.ndarray:
    """Resample ``volume_zyx[crop]`` onto ``crop.out_shape_zyx`` (float32), slab by slab in z.

    Only one slab of the source is converted to float32 at a time; the full-resolution volume is
    never copied.
    """
    resampler = SlabResampler(fns, crop, volume_zyx.shape[1:])
    step = resampler.slab_slices(budget_bytes)
    for a in range(0, crop.size_zyx[0], step):
        resampler.add(volume_zyx, a, min(crop.size_zyx[0], a + step))
    return resampler.finish()


class SlabResampler:
    """``resample_crop`` in pieces: z-slabs of the crop are resampled in-plane as they become
    available (in any order, e.g. while a file is still being decompressed), then along z at the
    end. Every slice is resampled on its own, so the result does not depend on the slabs chosen."""

    def __init__(self, fns: ResampleFunctions, crop: GridCrop, source_shape_yx: tuple[int, ...]) -> None:
        self.fns, self.crop = fns, crop
        self.source_shape_yx = tuple(int(v) for v in source_shape_yx)
        _, oh, ow = crop.out_shape_zyx
        self.planes = np.empty((crop.size_zyx[0], oh, ow), np.float32)
        self._done = np.zeros(crop.size_zyx[0], bool)

    def slab_slices(self, budget_bytes: int) -> int:
        # float32 slab + the resize's own float copy and antialiasing intermediate
        per_slice = self.source_shape_yx[0] * self.source_shape_yx[1] * 4 * 3
        return slab_slices(self.crop.size_zyx[0], per_slice, budget_bytes)

    def add(self, volume_zyx: np.ndarray, a: int, b: int, convert: Any = None) -> None:
        """Resample crop slices ``a..b-1`` (relative to the crop) of ``volume_zyx`` in-plane.
        ``convert`` maps the source slab to the values to resample (default: as they are)."""
        z0, y0, x0 = self.crop.start_zyx
        _, ny, nx = self.crop.size_zyx
        _, oh, ow = self.crop.out_shape_zyx
        part = volume_zyx[z0 + a : z0 + b, y0 : y0 + ny, x0 : x0 + nx]
        if convert is not None:
            part = convert(part)
        slab = np.asarray(part, dtype=np.float32)
        self.planes[a:b] = np.asarray(self.fns.crop_resample_inplane(slab, [0, 0], [ny, nx], [oh, ow]))
        self._done[a:b] = True

    @property
    def complete(self) -> bool:
        return bool(self._done.all())

    def finish(self) -> np.ndarray:
        """The resampled crop (out_d, out_h, out_w) float32; every slice must have been added."""
        if not self.complete:
            raise RuntimeError(f"{int((~self._done).sum())} crop slices were never resampled")
        od = self.crop.out_shape_zyx[0]
        if od == self.crop.size_zyx[0]:
            return self.planes
        return np.asarray(self.fns.resample_z(self.planes, od))


def labels_from_scores(
    fns: ScoresFunctions, scores: Any, out: np.ndarray, budget_bytes: int = 256 * 2**20
) -> None:
    """Write into ``out`` (z, y, x) uint8 the argmax of the class scores (d, h, w, C) resampled
    trilinearly onto ``out``'s shape (same extent), slab by slab in z.

    Exact, without interpolating everywhere (see ``tf_utils.label_cells``): each output voxel
    takes its cell's label, found by repeating source voxels along each axis (the lower taps are
    non-decreasing, so a tap array is its own run-length code), and only voxels in cells whose
    corners disagree are interpolated (``labels_at``). Memory: a few bytes per output voxel of a
    slab, and the source-grid labels.
    """
    out_shape = tuple(int(n) for n in out.shape)
    cells = np.asarray(fns.label_cells(scores))
    taps = [
        np.asarray(fns.resample_taps(int(n_in), n_out))
        for n_in, n_out in zip(cells.shape, out_shape, strict=True)
    ]
    repeats_y = np.bincount(taps[1], minlength=cells.shape[1])
    taps_x = taps[2]
    # per output slice: the slab, its cells repeated along y, the mixed flags and their indices
    per_slice = out_shape[1] * (out_shape[2] * 3 + cells.shape[2])
    # two slabs in flight (numpy and TensorFlow release the GIL), each within half the budget
    step = slab_slices(out_shape[0], per_slice, budget_bytes // 2)
    step = min(step, max(1, -(-out_shape[0] // 2)))

    def fill(a: int) -> None:
        b = min(out_shape[0], a + step)
        z_taps = taps[0][a:b]
        first = int(z_taps[0])
        rows = np.repeat(cells[first : int(z_taps[-1]) + 1], np.bincount(z_taps - first), axis=0)
        slab = np.take(np.repeat(rows, repeats_y, axis=1), taps_x, axis=2)
        flat = slab.reshape(-1)  # a fresh contiguous array: a view
        mixed = np.flatnonzero(flat >= 128)  # faster than a 3-D nonzero, then unravelled
        if mixed.size:
            points = np.stack(np.unravel_index(mixed, slab.shape), axis=1).astype(np.int32)
            points[:, 0] += a
            flat[mixed] = np.asarray(fns.labels_at(scores, np.asarray(out_shape, np.int32), points))
        out[a:b] = slab

    starts = range(0, out_shape[0], step)
    if len(starts) == 1:
        fill(0)
        return
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(fill, starts))  # re-raises a slab's error

"""Anatomical clean-up of the segmentation's class scores on the ~2 mm box grid, before they are
resampled onto the input's grid.

A network that looks at a patch at a time can label a look-alike far from the organ: a bright
vertebral body as kidney on an osteopenic scan, a bowel loop as pancreas. Each organ is one
connected structure (the kidneys two, one on each side of the spine), so per organ:

- liver, spleen and pancreas keep their largest connected component and any other component of at
  least ``KEEP_FRACTION`` of it (a liver or pancreas cut in two by a thick slice or a lesion stays
  whole);
- the kidney label keeps its components of at least ``KEEP_FRACTION`` of the largest, less any that
  lies midway between two others, one left and one right of it: nothing of the kidneys lies
  between them unless it joins them (a horseshoe kidney is one component, and is kept). When its
  two largest components lie side by side (a left and a right kidney), any other component more
  than ``KIDNEY_NEAR_MM`` from both is dropped too: a third kidney is not there (on real CT at
  0.75 mm, 22-74 mL of paraspinal muscle 5 cm behind the kidneys was labelled kidney). The
  exception this misses: a transplanted kidney beside two native ones, the smallest of which goes.

A removed component's voxels lose that organ's score, so they take their next most likely class;
where that makes a stray component of another organ (a vertebral body dropped as kidney that the
spleen scored next), the clean-up runs again, until nothing more is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from flare_seg.labels import ORGANS

KEEP_FRACTION = 0.1  # components smaller than this fraction of the organ's largest are dropped
BETWEEN_KIDNEYS_MM = 20.0  # a kidney component this far from both neighbours, left and right,
MIDWAY_FRACTION = 0.1  # and this close to their midpoint (a fraction of their distance), is dropped
KIDNEY_PAIR_APART_MM = 50.0  # the two largest kidney components this far apart along x are a pair,
KIDNEY_NEAR_MM = 10.0  # and other kidney components further than this from both are dropped
_KIDNEY = next(k for k, name in ORGANS.items() if name == "kidney")
_CONNECTIVITY = np.ones((3, 3, 3), bool)


def drop_stray_components(scores: np.ndarray, spacing_mm_zyx: tuple[float, float, float]) -> dict[str, int]:
    """Clean ``scores`` (d, h, w, classes) in place, see the module docstring; the canonical grid
    has x increasing to the patient's left. Returns the voxels removed per organ (box grid)."""
    removed: dict[str, int] = {}
    # each pass only lowers scores, and a voxel can lose each organ once: it ends
    for _ in range(len(ORGANS) + 1):
        labels = np.argmax(scores, axis=-1).astype(np.uint8)
        dropped = False
        for k, name in ORGANS.items():
            drop = _stray(labels == k, k == _KIDNEY, spacing_mm_zyx)
            if drop is not None:
                scores[..., k][drop] = 0.0
                removed[name] = removed.get(name, 0) + int(np.count_nonzero(drop))
                dropped = True
        if not dropped:
            break
    return removed


def _stray(mask: np.ndarray, kidney: bool, spacing_mm_zyx: tuple[float, float, float]) -> np.ndarray | None:
    """The voxels of ``mask`` to drop, or None when every component stays."""
    components, count = ndimage.label(mask, structure=_CONNECTIVITY)
    if count <= 1:
        return None
    ids = np.arange(1, count + 1)
    sizes = np.asarray(ndimage.sum_labels(mask, components, ids), float)
    keep = sizes >= KEEP_FRACTION * sizes.max()
    if kidney:
        keep &= ~_between_kidneys(mask, components, ids, keep, float(spacing_mm_zyx[2]))
        keep &= ~_beyond_the_pair(mask, components, ids, sizes, keep, spacing_mm_zyx)
    if keep.all():
        return None
    return np.isin(components, ids[~keep])


def _beyond_the_pair(
    mask: np.ndarray,
    components: np.ndarray,
    ids: np.ndarray,
    sizes: np.ndarray,
    kept: np.ndarray,
    spacing_mm_zyx: tuple[float, float, float],
) -> np.ndarray:
    """Which kept components are neither of the two largest, when those lie at least
    ``KIDNEY_PAIR_APART_MM`` apart along x (a left and a right kidney), nor within
    ``KIDNEY_NEAR_MM`` of either (a piece of one of them)."""
    beyond = np.zeros(len(ids), bool)
    if np.count_nonzero(kept) < 3:
        return beyond
    a, b = np.argsort(-sizes)[:2]
    x = [c[2] * spacing_mm_zyx[2] for c in ndimage.center_of_mass(mask, components, ids[[a, b]])]
    if abs(x[0] - x[1]) < KIDNEY_PAIR_APART_MM:
        return beyond
    distance = ndimage.distance_transform_edt(~np.isin(components, ids[[a, b]]), sampling=spacing_mm_zyx)
    touching = set(np.unique(components[distance <= KIDNEY_NEAR_MM]).tolist())
    for i in np.nonzero(kept)[0]:
        beyond[i] = i not in (a, b) and int(ids[i]) not in touching
    return beyond


def _between_kidneys(
    mask: np.ndarray, components: np.ndarray, ids: np.ndarray, kept: np.ndarray, spacing_x_mm: float
) -> np.ndarray:
    """Which kept components lie midway between two other kept ones, one on each side: more than
    ``BETWEEN_KIDNEYS_MM`` from both along x and within ``MIDWAY_FRACTION`` of their span from
    their midpoint (a vertebral body between the two kidneys, not a kidney beside a stray blob)."""
    x = np.array([c[2] for c in ndimage.center_of_mass(mask, components, ids)]) * spacing_x_mm
    between = np.zeros(len(ids), bool)
    kept_x = x[kept]
    for i in np.nonzero(kept)[0]:
        right = kept_x[kept_x < x[i] - BETWEEN_KIDNEYS_MM]
        left = kept_x[kept_x > x[i] + BETWEEN_KIDNEYS_MM]
        for a in right:
            for b in left:
                if abs(x[i] - (a + b) / 2.0) <= MIDWAY_FRACTION * (b - a):
                    between[i] = True
    return between


# An organ whose labels cover at least this much of a face of the segmented region (mm², about
# 3 x 3 cm) where the scan goes on: either it continues beyond it (the localization's box was too
# tight there: a short series, an unusual field of view) and the mask is cut along that face, or
# the label there is wrong (muscle labelled kidney up to the face).
CUT_AREA_MM2 = 900.0
# The faces of the canonical grid (LPS: +x the patient's left, +y posterior, +z superior).
_SIDES = (("below", "above"), ("in front", "behind"), ("on the patient's right", "on the patient's left"))


@dataclass(frozen=True)
class Cut:
    """An organ's labels across a face of the segmented region (canonical grid)."""

    label: int
    axis: int  # 0 z, 1 y, 2 x
    end: int  # 0: the region's low face along ``axis``, 1: its high face
    area_mm2: float

    @property
    def organ(self) -> str:
        return ORGANS[self.label]

    @property
    def side(self) -> str:
        return _SIDES[self.axis][self.end]


def faces_inside(
    start_zyx: Sequence[int], stop_zyx: Sequence[int], shape_zyx: Sequence[int]
) -> tuple[tuple[bool, bool], ...]:
    """Per axis, whether the region's low and high faces lie inside the scan (not on its edge)."""
    return tuple(
        (int(a) > 0, int(b) < int(n)) for a, b, n in zip(start_zyx, stop_zyx, shape_zyx, strict=True)
    )


def region_faces(
    region: np.ndarray, inside: Sequence[tuple[bool, bool]]
) -> dict[tuple[int, int], np.ndarray]:
    """The faces of ``region`` (a box of the canonical grid, labels or per-voxel class scores)
    that lie inside the scan (``inside``, see ``faces_inside``): (axis, end) -> its first
    (end 0) or last (end 1) slice along that axis."""
    return {
        (axis, end): np.take(region, 0 if end == 0 else region.shape[axis] - 1, axis=axis)
        for axis in range(3)
        for end in (0, 1)
        if inside[axis][end]
    }


def cut_faces(faces: dict[tuple[int, int], np.ndarray], spacing_mm_zyx: Sequence[float]) -> list[Cut]:
    """Every organ whose labels cover at least ``CUT_AREA_MM2`` of one of ``faces`` (see
    ``region_faces``; labels, on a grid of ``spacing_mm_zyx``), ordered by organ."""
    cuts = []
    for (axis, end), face in faces.items():
        pixel_mm2 = float(np.prod([s for i, s in enumerate(spacing_mm_zyx) if i != axis]))
        counts = np.bincount(face.ravel(), minlength=len(ORGANS) + 1)
        for k in ORGANS:
            area = float(counts[k]) * pixel_mm2
            if area >= CUT_AREA_MM2:
                cuts.append(Cut(k, axis, end, area))
    return sorted(cuts, key=lambda c: c.label)


def organs_cut_by_region(
    region: np.ndarray,
    start_zyx: tuple[int, int, int],
    shape_zyx: tuple[int, int, int],
    spacing_mm_zyx: tuple[float, float, float],
) -> list[str]:
    """Warnings for organs whose masks reach a face of the segmented region that is not a face of
    the scan over at least ``CUT_AREA_MM2``: ``region`` is the labels inside the region (canonical
    grid, a box of a ``shape_zyx`` grid starting at ``start_zyx``). An organ cut off by the scan's
    own edge is normal and not reported."""
    stop = [a + n for a, n in zip(start_zyx, region.shape, strict=True)]
    found: dict[str, list[Cut]] = {}
    for cut in cut_faces(region_faces(region, faces_inside(start_zyx, stop, shape_zyx)), spacing_mm_zyx):
        found.setdefault(cut.organ, []).append(cut)
    return [
        f"the {name}'s mask reaches the edge of the segmented region "
        + " and ".join(f"{c.side} ({c.area_mm2 / 100.0:.0f} cm²)" for c in cuts)
        + ", where the scan goes on: the organ may continue beyond it, cut off there, or the label "
        "there is wrong"
        for name, cuts in found.items()
    ]

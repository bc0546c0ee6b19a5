"""The canvas that structures are painted on, and `Part`, one structure to paint.

A part is an implicit shape with a bounding box (anatomy mm), a function giving its HU and the mask
code it claims. The canvas samples each shape on a coarse grid inside the field of view, resamples it
onto the acquisition grid and paints the voxels inside it that the part may claim.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from flare_seg.training.phantom.acquisition import Box, Grid, resample
from flare_seg.training.phantom.coarse import Coarse, ShapeFn
from flare_seg.training.phantom.params import FREE, RESERVED
from flare_seg.training.phantom.shapes import Tube, VerticalTube, sub_box_eval

CROP_MARGIN_MM = 60.0  # structures are evaluated only this far outside the field of view


class PaintContext:
    """What a part's HU function sees: its signed distance on the fine box, lazily its coordinates,
    and any other function resampled from its coarse grid."""

    def __init__(self, grid: Grid, coarse: Coarse, box: Box, sdf: np.ndarray) -> None:
        self.grid, self.coarse, self.box, self.sdf = grid, coarse, box, sdf

    def coords(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Anatomy coordinates (x, y, z), mm, of the box's voxels (see `Grid.coords`)."""
        return self.grid.coords(self.box)

    def field(self, fn: ShapeFn, lo: np.ndarray | None = None, hi: np.ndarray | None = None) -> np.ndarray:
        """fn resampled onto the box; with lo/hi (anatomy mm), fn is only evaluated inside that box
        and is FAR elsewhere."""
        if lo is None or hi is None:
            values = self.coarse.evaluate(fn)
        else:
            values = np.ascontiguousarray(
                np.broadcast_to(sub_box_eval(fn, self.coarse.views, lo, hi), self.coarse.shape_zyx)
            )
        return resample(self.grid, self.coarse, values, self.box)


HuFn = Callable[[PaintContext], "np.ndarray | float"]


@dataclass
class Part:
    """One structure: an implicit shape, how to paint it, and which mask code it claims.

    force: paint over voxels reserved by the body or earlier non-organ parts (for bones, vessels...);
        otherwise only free voxels are claimed. Organs never get painted over.
    halo_mm: after painting, free voxels within this distance are reserved (a fat plane).
    normalize: divide the coarse implicit by its gradient magnitude to make it a distance.
    """

    name: str
    shape: ShapeFn
    lo: np.ndarray
    hi: np.ndarray
    hu: HuFn
    code: int = RESERVED
    force: bool = False
    halo_mm: float = 0.0
    normalize: bool = False
    h_mm: float = 2.0


class Canvas:
    """The HU (float32) and mask (uint8) volumes, (z, y, x), being painted."""

    def __init__(self, grid: Grid, h_mm: float) -> None:
        self.grid = grid
        self.h_mm = h_mm
        self.hu = np.empty(grid.shape_zyx, np.float32)
        self.mask = np.zeros(grid.shape_zyx, np.uint8)
        lo, hi = grid.anatomy_bounds()
        self.view_lo, self.view_hi = lo - CROP_MARGIN_MM, hi + CROP_MARGIN_MM

    def paint(self, part: Part) -> None:
        """Paints `part` where its shape is negative and the mask lets it claim voxels; then reserves
        its halo."""
        lo = np.maximum(part.lo - part.halo_mm, self.view_lo)
        hi = np.minimum(part.hi + part.halo_mm, self.view_hi)
        if np.any(hi <= lo):
            return
        h = max(part.h_mm, self.h_mm)
        coarse = Coarse.covering(lo, hi, h)
        box = self.grid.index_box(coarse.lo, coarse.hi)
        if box is None:
            return
        values = coarse.evaluate(part.shape)
        if part.normalize:
            values = _as_distance(values, h)
        sdf = resample(self.grid, coarse, values, box)
        inside = sdf < 0
        mask = self.mask[box]
        if not part.force:
            inside &= mask == FREE
        else:
            inside &= (mask == FREE) | (mask == RESERVED)
        if inside.any():
            value = part.hu(PaintContext(self.grid, coarse, box, sdf))
            np.copyto(self.hu[box], np.asarray(value, np.float32), where=inside)
            np.copyto(mask, np.uint8(part.code), where=inside)
        if part.halo_mm > 0:
            np.copyto(mask, np.uint8(RESERVED), where=(sdf < part.halo_mm) & (mask == FREE))


def _as_distance(values: np.ndarray, h: float) -> np.ndarray:
    """Turn an implicit function sampled with spacing h into an approximate distance (mm)."""
    gz, gy, gx = np.gradient(values, h)
    g = np.sqrt(gx * gx + gy * gy + gz * gz)
    return (values / np.maximum(g, 0.25)).astype(np.float32)


def layers(outer: float, *inner: tuple[float, float]) -> HuFn:
    """HU by depth: `outer` near the surface; each (depth_mm, hu) applies deeper than depth_mm."""

    def fn(ctx: PaintContext) -> np.ndarray:
        out = np.full(ctx.sdf.shape, outer, np.float32)
        for depth, value in inner:
            np.copyto(out, np.float32(value), where=ctx.sdf < -depth)
        return out

    return fn


def const(value: float) -> HuFn:
    """HU function painting one value."""
    return lambda ctx: value


def constant_part(name: str, shape: Tube | VerticalTube, hu: float, force: bool = True) -> Part:
    """A tube painted with one HU value (force-painted unless `force` is False)."""
    return Part(name, shape, shape.lo, shape.hi, const(hu), force=force)

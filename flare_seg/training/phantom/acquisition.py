"""Acquisition: the scanner grid (size, spacing, origin, orientation), the field of view, resampling
onto the grid, blur, the reconstruction circle and int16 output.

Axis conventions: SimpleITK sizes, spacings, origins and indices are (x, y, z); numpy arrays are
indexed [z, y, x]. `Grid` maps (x, y, z) indices to anatomy points and turns anatomy boxes into numpy
(z, y, x) slices. Physical points are LPS mm in the scanner frame (anatomy + `Grid.anatomy_origin_xyz`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from flare_seg.training.phantom.coarse import Coarse, interp_axis, upsample
from flare_seg.training.phantom.params import SIZE_LIMITS, PhantomOptions, uniform
from flare_seg.training.phantom.shapes import rotation

FIELDS_OF_VIEW = ("abdomen", "chest_abdomen", "abdomen_pelvis", "cut_top", "cut_bottom")
_FOV_PROBABILITIES = (0.4, 0.15, 0.25, 0.1, 0.1)
_FOV_PROBABILITIES_PELVIS = (0.3, 0.15, 0.35, 0.1, 0.1)  # with a lesser pelvis to show
MAX_PELVIS_EXTENT_MM = 540.0

Box = tuple[slice, slice, slice]  # numpy (z, y, x) slices into the volume


@dataclass(frozen=True)
class Grid:
    """The acquisition grid. Index i = (i, j, k) maps to physical LPS mm as origin + D @ (spacing * i).

    All tuples are (x, y, z); `direction` is row-major with the columns giving each index axis in LPS.
    """

    size_xyz: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]
    origin_xyz: tuple[float, float, float]
    direction: tuple[float, ...]
    anatomy_origin_xyz: tuple[float, float, float]

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """numpy shape of the volume: SimpleITK's (x, y, z) size reversed."""
        return self.size_xyz[2], self.size_xyz[1], self.size_xyz[0]

    @property
    def matrix(self) -> np.ndarray:
        """3 x 3 matrix A with anatomy = A @ index_xyz + offset."""
        return np.asarray(self.direction, float).reshape(3, 3) * np.asarray(self.spacing_xyz, float)[None, :]

    @property
    def offset(self) -> np.ndarray:
        """Anatomy point (mm, x, y, z) of index (0, 0, 0): anatomy = matrix @ index_xyz + offset."""
        return np.asarray(self.origin_xyz, float) - np.asarray(self.anatomy_origin_xyz, float)

    @property
    def axis_aligned(self) -> bool:
        """Whether every index axis runs along one anatomy axis (identity or flips, no tilt)."""
        a = self.matrix
        return bool(np.all(a[~np.eye(3, dtype=bool)] == 0.0))

    def anatomy_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned anatomy-frame box (lo, hi), mm (x, y, z), around all voxel centres."""
        corners = np.array(list(itertools.product(*[(0, n - 1) for n in self.size_xyz])), float)
        pts = corners @ self.matrix.T + self.offset
        return pts.min(0), pts.max(0)

    def index_box(self, lo: np.ndarray, hi: np.ndarray) -> Box | None:
        """numpy (z, y, x) slices of the voxels whose centres lie in the index-space hull of an
        anatomy box [lo, hi] (mm, x, y, z); None when that misses the grid."""
        corners = np.array(list(itertools.product(*zip(lo, hi, strict=True))), float)
        idx = np.linalg.solve(self.matrix, (corners - self.offset).T).T
        first = np.maximum(np.ceil(idx.min(0) - 1e-6).astype(int), 0)
        last = np.minimum(np.floor(idx.max(0) + 1e-6).astype(int), np.asarray(self.size_xyz) - 1)
        if np.any(last < first):
            return None
        return (
            slice(first[2], last[2] + 1),
            slice(first[1], last[1] + 1),
            slice(first[0], last[0] + 1),
        )

    def coords(self, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Anatomy coordinates (x, y, z) in mm of the voxels of `box` (slices may have steps and may
        run past the grid), as float32 arrays that broadcast to the box's (z, y, x) shape; on
        axis-aligned grids they stay 1-D along their own axis."""
        k = np.arange(box[0].start, box[0].stop, box[0].step or 1, dtype=float)[:, None, None]
        j = np.arange(box[1].start, box[1].stop, box[1].step or 1, dtype=float)[None, :, None]
        i = np.arange(box[2].start, box[2].stop, box[2].step or 1, dtype=float)[None, None, :]
        a, b = self.matrix, self.offset
        out = []
        for row in range(3):
            value: np.ndarray | float = b[row]
            for coefficient, index in zip(a[row], (i, j, k), strict=True):
                if coefficient != 0.0:
                    value = value + coefficient * index
            out.append(np.asarray(value, dtype=np.float32))
        return out[0], out[1], out[2]


def resample(grid: Grid, coarse: Coarse, values: np.ndarray, box: Box) -> np.ndarray:
    """Trilinearly interpolate coarse (z, y, x) values at the centres of the grid voxels in `box`.

    Axis-aligned grids (identity or flips) use separable 1-D interpolation; oblique grids use
    scipy.ndimage.affine_transform. Both clamp at the coarse grid's edges.
    """
    a = grid.matrix / coarse.h
    first = np.array([box[2].start, box[1].start, box[0].start], float)  # x, y, z
    base = (grid.matrix @ first + grid.offset - coarse.lo) / coarse.h  # coarse index (x, y, z) of first
    shape = tuple(s.stop - s.start for s in box)
    if grid.axis_aligned:
        out = values
        for axis_xyz in (2, 1, 0):  # coarse numpy axes 0 (z), 1 (y), 2 (x)
            n = shape[2 - axis_xyz]
            pos = base[axis_xyz] + a[axis_xyz, axis_xyz] * np.arange(n)
            out = interp_axis(out, pos, 2 - axis_xyz)
        return out
    # Oblique: affine_transform is slow per voxel, so it fills a grid with the box's orientation but
    # spacing multiplied by f (<= the coarse spacing), which is then upsampled separably.
    f_xyz = [max(1, int(coarse.h / s)) for s in grid.spacing_xyz]
    f_zyx = np.array(f_xyz[::-1])
    mid_shape = tuple(math.ceil((n - 1) / f) + 1 for n, f in zip(shape, f_zyx, strict=True))
    mid = ndimage.affine_transform(
        values,
        a[::-1, ::-1] * f_zyx[None, :],
        offset=base[::-1],
        output_shape=mid_shape,
        order=1,
        mode="nearest",
        prefilter=False,
        output=np.float32,
    )
    for axis in range(3):
        mid = upsample(mid, int(f_zyx[axis]), shape[axis], axis)
    return mid


def sample_grid(
    rng: np.random.Generator,
    options: PhantomOptions,
    skin_radius_mm: float,
    kidney_bottom_z: float,
    hip_z: float | None = None,
) -> tuple[Grid, str, tuple[bool, bool, bool], float]:
    """Field of view, spacing, size, direction and origin for one case.

    skin_radius_mm: the body's largest distance from the anatomy z axis (the in-plane field of view
        covers it); kidney_bottom_z: anatomy height (mm) of the lowest kidney pole, which some fields
        of view are placed against; hip_z: the femoral heads' height (mm) where the anatomy has a
        lesser pelvis (``true_pelvis``): abdomen-pelvis fields of view are then more frequent and
        end 20-90 mm below it. Returns (grid, field of view name, flips (x, y, z), oblique tilt in
        degrees).
    """
    p = _FOV_PROBABILITIES if hip_z is None else _FOV_PROBABILITIES_PELVIS
    fov = FIELDS_OF_VIEW[int(rng.choice(len(FIELDS_OF_VIEW), p=p))]
    top, bottom, extent = _sample_extent(rng, fov, kidney_bottom_z, hip_z)
    half_fov = skin_radius_mm + 15.0
    offset_xy = rng.uniform(-10, 10, 2)
    s_xy, n_xy, s_z = _sample_spacing(rng, options, 2 * (half_fov + np.abs(offset_xy).max()), extent)
    n_z = round(extent / s_z) + 1
    direction, flips, oblique = _sample_direction(rng, options)
    spacing = np.array([s_xy, s_xy, s_z])
    size = np.array([n_xy, n_xy, n_z])
    center_anat = np.array([offset_xy[0], offset_xy[1], 0.5 * (top + bottom)])
    anatomy_origin = np.array([uniform(rng, -200, 200), uniform(rng, -200, 200), uniform(rng, -1500, 300)])
    origin = anatomy_origin + center_anat - direction @ (spacing * (size - 1) / 2)
    grid = Grid(
        size_xyz=(int(size[0]), int(size[1]), int(size[2])),
        spacing_xyz=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        origin_xyz=(float(origin[0]), float(origin[1]), float(origin[2])),
        direction=tuple(float(v) for v in direction.ravel()),
        anatomy_origin_xyz=(float(anatomy_origin[0]), float(anatomy_origin[1]), float(anatomy_origin[2])),
    )
    return grid, fov, flips, oblique


def _sample_extent(
    rng: np.random.Generator, fov: str, kidney_bottom_z: float, hip_z: float | None = None
) -> tuple[float, float, float]:
    """(top, bottom, extent) of field of view `fov` along anatomy z, mm; the extent is 250-450 mm,
    or up to ``MAX_PELVIS_EXTENT_MM`` for an abdomen-pelvis scan that ends below the hips at
    ``hip_z``."""
    kb = kidney_bottom_z
    longest = 450.0
    if fov == "abdomen":
        top = uniform(rng, 15, 60)
        bottom = min(kb - uniform(rng, 40, 120), top - 250)
    elif fov == "chest_abdomen":
        top = uniform(rng, 120, 200)
        bottom = kb - uniform(rng, 20, 100)
    elif fov == "abdomen_pelvis":
        top = uniform(rng, 10, 50)
        bottom = top - uniform(rng, 380, 450)
        if hip_z is not None:
            bottom = hip_z - uniform(rng, 20, 90)
            longest = MAX_PELVIS_EXTENT_MM
    elif fov == "cut_top":
        top = uniform(rng, -55, -20)
        bottom = top - uniform(rng, 250, 400)
    else:
        bottom = kb + uniform(rng, 10, 40)
        top = bottom + uniform(rng, 250, 350)
    extent = float(np.clip(top - bottom, 250, longest))
    if fov == "cut_bottom":
        top = bottom + extent
    else:
        bottom = top - extent
    return top, bottom, extent


def _sample_spacing(
    rng: np.random.Generator, options: PhantomOptions, need_mm: float, extent: float
) -> tuple[float, int, float]:
    """(in-plane spacing mm, in-plane size, slice spacing mm) for an in-plane field of view of at
    least `need_mm` and a z extent of `extent` mm."""
    if options.size == "full":
        n_xy = 512
        s_min = max(0.6, need_mm / n_xy)
        s_xy = uniform(rng, s_min, max(s_min, 1.0))
        candidates = [
            s for s in (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0) if extent / s + 1 <= SIZE_LIMITS["full"]
        ]
        s_z = float(candidates[int(rng.integers(len(candidates)))])
    else:
        s_xy = uniform(rng, 3.0, 4.0)
        n_xy = int(np.clip(math.ceil(need_mm / s_xy), 96, 128))
        s_xy = max(s_xy, need_mm / n_xy)
        s_z = uniform(rng, 3.0, 6.0)
    return s_xy, n_xy, s_z


def _sample_direction(
    rng: np.random.Generator, options: PhantomOptions
) -> tuple[np.ndarray, tuple[bool, bool, bool], float]:
    """(3 x 3 direction matrix, flips (x, y, z), oblique tilt in degrees): random axis flips, then
    optionally a 5-15 degree rotation about a random axis."""
    fx, fy, fz = (bool(rng.random() < options.flip_probability) for _ in range(3))
    flips = (fx, fy, fz)
    direction = np.diag([-1.0 if f else 1.0 for f in flips])
    oblique = 0.0
    if rng.random() < options.oblique_probability:
        oblique = uniform(rng, 5, 15)
        direction = rotation(rng.normal(size=3), math.radians(oblique)) @ direction
    return direction, flips, oblique


# --------------------------------------------------------------------------------------------------
# Reconstruction: blur, int16 output and the circular reconstruction field of view
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reconstruction:
    """How the painted volume is turned into an image: noise SD (HU, after the blur), Gaussian blur
    sigma in voxels (x, y, z), and the HU outside the circular reconstruction field of view (None:
    no circle)."""

    noise_sd_hu: float
    blur_sigma_vox_xyz: tuple[float, float, float]
    pad_value: int | None


def sample_reconstruction(rng: np.random.Generator) -> Reconstruction:
    """Noise 10-30 HU, blur 0.4-0.8 voxels in-plane and 0.3-0.6 across slices, a circle in 20%."""
    noise_sd = float(rng.uniform(10, 30))
    sigma_xy = float(rng.uniform(0.4, 0.8))
    sigma = (sigma_xy, sigma_xy, float(rng.uniform(0.3, 0.6)))  # voxels, (x, y, z)
    pad = int(rng.choice([-2048, -3024])) if rng.random() < 0.2 else None
    return Reconstruction(noise_sd, sigma, pad)


def blur(hu: np.ndarray, sigma_vox_xyz: tuple[float, float, float]) -> None:
    """Gaussian blur of the (z, y, x) float32 volume in place (sigma in voxels, (x, y, z))."""
    ndimage.gaussian_filter(hu, sigma=sigma_vox_xyz[::-1], output=hu, truncate=3.0)


def to_int16(hu: np.ndarray, slab: int = 16) -> np.ndarray:
    """Rounds the (z, y, x) float32 volume to int16 HU in [-3024, 3071] (modifies `hu`)."""
    image = np.empty(hu.shape, np.int16)
    for k0 in range(0, hu.shape[0], slab):
        block = hu[k0 : k0 + slab]
        np.clip(block, -3024, 3071, out=block)
        np.rint(block, out=block)
        image[k0 : k0 + slab] = block
    return image


def outside_circle(shape_zyx: tuple[int, ...]) -> np.ndarray:
    """(y, x) boolean mask of the pixels outside the circle inscribed in each slice."""
    ny, nx = shape_zyx[1:]
    jj, ii = np.ogrid[:ny, :nx]
    return ((ii - (nx - 1) / 2) ** 2 + (jj - (ny - 1) / 2) ** 2) > (min(nx, ny) / 2) ** 2

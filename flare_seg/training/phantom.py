"""Synthetic abdominal CT phantoms labelled with liver, kidney, spleen and pancreas.

Anatomy is defined in a patient frame in millimetres along the LPS axes (+x to the patient's Left, +y
to Posterior, +z to Superior). Its origin lies on the midline, at the centre of the abdominal cavity,
at the height of the right hemidiaphragm dome. Each structure is an implicit surface (an approximate
signed distance in mm, negative inside). It is sampled on a coarse isotropic grid aligned with the
patient frame, inside its own bounding box, then interpolated trilinearly onto the acquisition grid
and painted in priority order. The acquisition grid has a random spacing, origin and direction (axis
flips, optionally an oblique tilt) and a random field of view. Intensities follow a random contrast
phase, are blurred, get noise, and are stored as int16 HU. The label map is a single uint8 volume
that shares the image's geometry exactly.

Painting order: the body layer (air, skin, fat, muscle wall, cavity fat, lungs, ribs, table), then
bones, vessels and other structures the organs wrap around, then the organs in priority order
(kidneys, spleen, pancreas, liver; each claims only free voxels and reserves a fat halo), then bowel
and muscles in whatever is left. Organs therefore never overlap.

Axis conventions: SimpleITK sizes, spacings, origins and indices are (x, y, z); the numpy arrays
passed to and read from SimpleITK are indexed [z, y, x]. `_Grid` maps (x, y, z) indices to anatomy
points and turns anatomy boxes into numpy (z, y, x) slices; `_resample` and `_Coarse` hold (z, y, x)
arrays. Anatomy-frame points are LPS mm relative to the patient origin above; physical points are
LPS mm in the scanner frame (anatomy + `_Grid.anatomy_origin_xyz`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from flare_seg.labels import BACKGROUND, LABELS

logger = logging.getLogger(__name__)

_LABEL_BY_NAME = {name: value for value, name in LABELS.items()}
LIVER = _LABEL_BY_NAME["liver"]
KIDNEY = _LABEL_BY_NAME["kidney"]
SPLEEN = _LABEL_BY_NAME["spleen"]
PANCREAS = _LABEL_BY_NAME["pancreas"]
_FREE = BACKGROUND
_RESERVED = 255  # internal mask code: claimed by a non-organ structure; written out as background
if _RESERVED in LABELS:
    raise RuntimeError("label 255 is reserved by the phantom generator")

PHASES = ("unenhanced", "arterial", "portal_venous", "delayed")
_PHASE_PROBABILITIES = (0.2, 0.2, 0.45, 0.15)
FIELDS_OF_VIEW = ("abdomen", "chest_abdomen", "abdomen_pelvis", "cut_top", "cut_bottom")
_FOV_PROBABILITIES = (0.4, 0.15, 0.25, 0.1, 0.1)

# Mean HU ranges per tissue, in PHASES order; a case draws one mean per tissue from its phase's range.
HU_RANGES: dict[str, tuple[tuple[float, float], ...]] = {
    "air": ((-1000, -1000),) * 4,
    "gas": ((-1010, -970),) * 4,
    "lung": ((-900, -800),) * 4,
    "fat": ((-120, -80),) * 4,
    "visceral_fat": ((-115, -85),) * 4,
    "skin": ((10, 50),) * 4,
    "muscle": ((40, 50), (45, 60), (50, 70), (50, 65)),
    "liver": ((55, 65), (65, 85), (100, 130), (85, 105)),
    "spleen": ((45, 50), (100, 140), (110, 130), (85, 105)),
    "kidney_cortex": ((30, 40), (150, 220), (150, 200), (110, 150)),
    "kidney_medulla": ((25, 35), (70, 110), (125, 175), (120, 170)),
    "pancreas": ((40, 50), (100, 130), (100, 130), (70, 95)),
    "artery": ((35, 45), (250, 400), (150, 250), (100, 140)),
    "portal_vein": ((35, 45), (80, 130), (150, 200), (100, 140)),
    "vein": ((35, 45), (60, 100), (130, 180), (100, 140)),
    "myocardium": ((40, 50), (90, 130), (90, 120), (80, 100)),
    "bowel_wall": ((30, 45), (60, 100), (70, 110), (60, 90)),
    "water": ((0, 20),) * 4,
    "food": ((10, 45),) * 4,
    "urine": ((0, 15), (0, 20), (5, 25), (300, 900)),
    "stool": ((-150, 30),) * 4,
    "oral_contrast": ((200, 450),) * 4,
    "csf": ((0, 15),) * 4,
    "cord": ((30, 40),) * 4,
    "disc": ((70, 100),) * 4,
    "cancellous": ((200, 400),) * 4,
    "cortical": ((700, 1500),) * 4,
    "rib": ((300, 700),) * 4,
    "cartilage": ((90, 140),) * 4,
    "table": ((-300, 200),) * 4,
}

_SIZE_LIMITS = {"full": 320, "small": 150}  # most slices per case
_CROP_MARGIN_MM = 60.0  # structures are evaluated only this far outside the field of view


@dataclass(frozen=True)
class PhantomOptions:
    """How phantoms are sampled.

    size: "full" gives 512 x 512 voxels in-plane with 0.6-1.0 mm pixels and 1-5 mm slices over a 25-45
        cm field of view (FLARE21-like); "small" gives about 96-128 voxels in-plane with 3-4 mm pixels
        and 3-6 mm slices, for fast tests (same anatomy in mm, same code path).
    flip_probability: probability that each of the three grid axes is flipped in the direction matrix.
    oblique_probability: probability of composing a 5-15 degree rotation about a random axis into the
        direction matrix.
    """

    size: Literal["full", "small"] = "full"
    flip_probability: float = 0.5
    oblique_probability: float = 0.0

    def __post_init__(self) -> None:
        if self.size not in _SIZE_LIMITS:
            raise ValueError(f"size must be one of {sorted(_SIZE_LIMITS)}, got {self.size!r}")
        for name in ("flip_probability", "oblique_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value!r}")


DEFAULT_OPTIONS = PhantomOptions()


@dataclass(frozen=True)
class PhantomInfo:
    """What was sampled for one case (for bookkeeping and tests; not needed to use the images).

    hu_means: the case's mean HU per tissue before texture, blur and noise.
    fov: one of FIELDS_OF_VIEW; "cut_top"/"cut_bottom" cut the liver/spleen top or the kidneys' bottom.
    flipped_xyz: which grid axes point against the LPS axes (before any oblique tilt).
    pad_value: HU written outside the circular reconstruction field of view, or None.
    """

    seed: int
    size: str
    phase: str
    fov: str
    noise_sd_hu: float
    blur_sigma_vox_xyz: tuple[float, float, float]
    pad_value: int | None
    flipped_xyz: tuple[bool, bool, bool]
    oblique_deg: float
    size_xyz: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]
    hu_means: dict[str, float]


# --------------------------------------------------------------------------------------------------
# Acquisition grid
# --------------------------------------------------------------------------------------------------

Box = tuple[slice, slice, slice]  # numpy (z, y, x) slices into the volume


@dataclass(frozen=True)
class _Grid:
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
        return np.asarray(self.origin_xyz, float) - np.asarray(self.anatomy_origin_xyz, float)

    @property
    def axis_aligned(self) -> bool:
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


@dataclass(frozen=True)
class _Coarse:
    """A coarse isotropic grid aligned with the anatomy frame: axes x, y, z (1-D float32, mm)."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    h: float

    @staticmethod
    def covering(lo: np.ndarray, hi: np.ndarray, h: float) -> _Coarse:
        """Grid of spacing h (mm) snapped to multiples of h, covering [lo, hi] plus one cell."""
        first = np.floor(np.asarray(lo) / h) - 1
        last = np.ceil(np.asarray(hi) / h) + 1
        axes = [(np.arange(a, b + 1) * h).astype(np.float32) for a, b in zip(first, last, strict=True)]
        return _Coarse(axes[0], axes[1], axes[2], h)

    @property
    def views(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable (x, y, z) views for evaluating functions on the (z, y, x) grid."""
        return self.x[None, None, :], self.y[None, :, None], self.z[:, None, None]

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return len(self.z), len(self.y), len(self.x)

    @property
    def lo(self) -> np.ndarray:
        return np.array([self.x[0], self.y[0], self.z[0]], float)

    @property
    def hi(self) -> np.ndarray:
        return np.array([self.x[-1], self.y[-1], self.z[-1]], float)

    def evaluate(self, fn: ShapeFn) -> np.ndarray:
        """fn on this grid as a float32 (z, y, x) array."""
        out = np.broadcast_to(fn(*self.views), self.shape_zyx)
        return np.ascontiguousarray(out, dtype=np.float32)


def _interp_axis(values: np.ndarray, pos: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of `values` at continuous indices `pos` along `axis` (edges clamped)."""
    n = values.shape[axis]
    pos = np.clip(pos, 0.0, n - 1.0)
    if n == 1:
        return np.repeat(values, len(pos), axis=axis)
    i0 = np.minimum(pos.astype(np.intp), n - 2)
    shape = [1, 1, 1]
    shape[axis] = -1
    w = (pos - i0).astype(np.float32).reshape(shape)
    a = np.take(values, i0, axis=axis)
    b = np.take(values, i0 + 1, axis=axis)
    b -= a
    b *= w
    a += b
    return a


def _upsample(values: np.ndarray, f: int, n: int, axis: int) -> np.ndarray:
    """Linear upsampling by an integer factor f along `axis`: output i lies at input i / f. Gives n
    outputs; the input needs ceil((n - 1) / f) + 1 samples along that axis."""
    v = np.moveaxis(values, axis, 0)
    if f == 1:
        return np.ascontiguousarray(np.moveaxis(v[:n], 0, axis), dtype=np.float32)
    out = np.empty((n, *v.shape[1:]), np.float32)
    for r in range(f):
        count = len(range(r, n, f))
        w = r / f
        out[r::f] = v[:count] if r == 0 else v[:count] * np.float32(1 - w) + v[1 : count + 1] * np.float32(w)
    return np.moveaxis(out, 0, axis)


def _resample(grid: _Grid, coarse: _Coarse, values: np.ndarray, box: Box) -> np.ndarray:
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
            out = _interp_axis(out, pos, 2 - axis_xyz)
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
        mid = _upsample(mid, int(f_zyx[axis]), shape[axis], axis)
    return mid


# --------------------------------------------------------------------------------------------------
# Shape primitives. A ShapeFn maps broadcastable anatomy coordinates (x, y, z), mm, float32, to an
# approximate signed distance in mm (negative inside). Unless noted, they accept any broadcastable
# arrays; tubes need the views of a regular isotropic grid (`_Coarse.views`), which is how every
# shape is evaluated.
# --------------------------------------------------------------------------------------------------

ShapeFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
_FAR = np.float32(1.0e4)


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth minimum (union) with blending width k mm."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _smax(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth maximum (intersection) with blending width k mm."""
    return -_smin(-a, -b, k)


def _ellipsoid(u: np.ndarray, v: np.ndarray, w: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """Approximate signed distance (mm) to an origin-centred ellipsoid with semi-axes a, b, c (mm)."""
    k0 = np.sqrt((u / a) ** 2 + (v / b) ** 2 + (w / c) ** 2)
    k1 = np.sqrt((u / (a * a)) ** 2 + (v / (b * b)) ** 2 + (w / (c * c)) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def _unit(v: Sequence[float] | np.ndarray) -> np.ndarray:
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def _rotation(axis: Sequence[float] | np.ndarray, angle_rad: float) -> np.ndarray:
    """Rotation matrix about a unit axis (Rodrigues)."""
    x, y, z = _unit(axis)
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    cc = 1.0 - c
    return np.array(
        [
            [c + x * x * cc, x * y * cc - z * s, x * z * cc + y * s],
            [y * x * cc + z * s, c + y * y * cc, y * z * cc - x * s],
            [z * x * cc - y * s, z * y * cc + x * s, c + z * z * cc],
        ]
    )


def _orthonormal(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Rows (u, v, w): u along `first`, v = w x u, w along `second` made orthogonal to u."""
    u = _unit(first)
    w = _unit(second - np.dot(second, u) * u)
    return np.stack([u, np.cross(w, u), w])


@dataclass(frozen=True)
class _Frame:
    """A local frame: centre (anatomy mm) and rows = unit local axes (u, v, w) in anatomy coordinates."""

    center: np.ndarray
    axes: np.ndarray

    def local(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, ...]:
        dx, dy, dz = x - self.center[0], y - self.center[1], z - self.center[2]
        return tuple(r[0] * dx + r[1] * dy + r[2] * dz for r in self.axes)


def _plane_sin(g: np.ndarray, c: float, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """sin(g . (x, y, z) + c). On the broadcast views of a grid, sin(a(x, y) + b(z)) is expanded with
    the angle-sum identity so that no sine is taken at full size."""
    if x.shape[:2] == (1, 1) and y.shape[0] == y.shape[-1] == 1 and z.shape[1:] == (1, 1):
        a = g[0] * x + g[1] * y
        b = g[2] * z + c
        return np.sin(a) * np.cos(b) + np.cos(a) * np.sin(b)
    return np.sin(g[0] * x + g[1] * y + g[2] * z + c)


@dataclass(frozen=True)
class _Warp:
    """Smooth displacement field: a sum of plane waves, d(p) = sum_i a_i sin(k_i . p + phase_i) (mm)."""

    k: np.ndarray  # (n, 3) rad/mm
    phase: np.ndarray  # (n,)
    amplitude: np.ndarray  # (n, 3) mm

    @staticmethod
    def random(
        rng: np.random.Generator, n: int, wavelength_mm: tuple[float, float], strength: float
    ) -> _Warp:
        """`strength` in (0, 1] scales the amplitude up to the largest that keeps the map invertible."""
        lam = rng.uniform(*wavelength_mm, n)
        k = np.stack([_unit(rng.normal(size=3)) for _ in range(n)]) * (2 * np.pi / lam)[:, None]
        amp = lam / (2 * np.pi * n * 1.5) * strength * rng.uniform(0.5, 1.0, n)
        vec = np.stack([_unit(rng.normal(size=3)) for _ in range(n)]) * amp[:, None]
        return _Warp(k, rng.uniform(0, 2 * np.pi, n), vec)

    @property
    def max_mm(self) -> float:
        return float(np.abs(self.amplitude).sum())

    def warped(
        self, frame: _Frame, scale: float, x: np.ndarray, y: np.ndarray, z: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        """Template coordinates of anatomy points: frame.local(p) / scale plus this displacement,
        whose waves are functions of those same template coordinates."""
        out = [c / scale for c in frame.local(x, y, z)]
        for k, ph, a in zip(self.k, self.phase, self.amplitude, strict=True):
            g = frame.axes.T @ k / scale  # the wave vector in anatomy coordinates
            s = _plane_sin(g, float(ph - g @ frame.center), x, y, z)
            out = [o + ai * s for o, ai in zip(out, a, strict=True)]
        return tuple(out)

    def __add__(self, other: _Warp) -> _Warp:
        return _Warp(
            np.concatenate([self.k, other.k]),
            np.concatenate([self.phase, other.phase]),
            np.concatenate([self.amplitude, other.amplitude]),
        )


@dataclass(frozen=True)
class _Waves:
    """Smooth scalar field with zero mean and standard deviation `sd` (a sum of plane waves)."""

    k: np.ndarray
    phase: np.ndarray
    sd: float

    @staticmethod
    def random(rng: np.random.Generator, n: int, wavelength_mm: tuple[float, float], sd: float) -> _Waves:
        lam = rng.uniform(*wavelength_mm, n)
        k = np.stack([_unit(rng.normal(size=3)) for _ in range(n)]) * (2 * np.pi / lam)[:, None]
        return _Waves(k, rng.uniform(0, 2 * np.pi, n), sd)

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        total: np.ndarray | float = 0.0
        for k, ph in zip(self.k, self.phase, strict=True):
            total = total + _plane_sin(k, float(ph), x, y, z)
        return np.asarray(total * np.float32(self.sd * math.sqrt(2.0 / len(self.k))), np.float32)


def _catmull_rom(points: np.ndarray, per_segment: int = 24) -> np.ndarray:
    """Dense points of a uniform Catmull-Rom spline through the control points (m, 3)."""
    p = np.concatenate([2 * points[:1] - points[1:2], points, 2 * points[-1:] - points[-2:-1]])
    t = np.linspace(0.0, 1.0, per_segment, endpoint=False)[:, None]
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.append(
            0.5
            * (
                2 * p1
                + (-p0 + p2) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
            )
        )
    out.append(points[-1:])
    return np.concatenate(out)


class _Tube:
    """Tube swept along smooth curves with elliptic cross-sections of varying radii.

    Radius r1 lies along the horizontal normal of the curve (perpendicular to the tangent and to z),
    r2 along the binormal. Distances use the nearest centreline sample, found with a distance
    transform on the evaluation grid, so calls must pass `_Coarse.views`.
    """

    def __init__(
        self,
        curves: Sequence[np.ndarray],
        radii1: Sequence[np.ndarray],
        radii2: Sequence[np.ndarray] | None = None,
        step_mm: float = 0.7,
    ) -> None:
        pts, r1s, r2s, normals, binormals = [], [], [], [], []
        radii2 = radii1 if radii2 is None else radii2
        for ctrl, ra, rb in zip(curves, radii1, radii2, strict=True):
            ctrl = np.asarray(ctrl, float)
            per = 24
            dense = _catmull_rom(ctrl, per)
            seg = np.linalg.norm(np.diff(dense, axis=0), axis=1)
            s = np.concatenate([[0.0], np.cumsum(seg)])
            s_ctrl = s[np.minimum(np.arange(len(ctrl)) * per, len(s) - 1)]
            n = max(int(s[-1] / step_mm) + 1, 2)
            si = np.linspace(0.0, s[-1], n)
            p = np.stack([np.interp(si, s, dense[:, d]) for d in range(3)], axis=1)
            tangent = np.gradient(p, axis=0)
            tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
            ref = np.where(np.abs(tangent[:, 2:3]) < 0.95, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
            normal = np.cross(ref, tangent)
            normal /= np.linalg.norm(normal, axis=1, keepdims=True)
            pts.append(p)
            normals.append(normal)
            binormals.append(np.cross(tangent, normal))
            r1s.append(np.interp(si, s_ctrl, np.asarray(ra, float)))
            r2s.append(np.interp(si, s_ctrl, np.asarray(rb, float)))
        self.points = np.concatenate(pts).astype(np.float32)
        self.r1 = np.concatenate(r1s).astype(np.float32)
        self.r2 = np.concatenate(r2s).astype(np.float32)
        self.normal = np.concatenate(normals).astype(np.float32)
        self.binormal = np.concatenate(binormals).astype(np.float32)
        r = float(max(self.r1.max(), self.r2.max()))
        self.lo = self.points.min(0) - r
        self.hi = self.points.max(0) + r

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        ax, ay, az = x.ravel(), y.ravel(), z.ravel()
        shape = (len(az), len(ay), len(ax))
        h = float(ax[1] - ax[0]) if len(ax) > 1 else 1.0
        ijk = np.rint((self.points - np.array([ax[0], ay[0], az[0]])) / h).astype(np.intp)
        ok = np.all((ijk >= 0) & (ijk < np.array([len(ax), len(ay), len(az)])), axis=1)
        if not ok.any():
            return np.full(shape, _FAR, np.float32)
        ids = np.full(shape, -1, np.int32)
        ids[ijk[ok, 2], ijk[ok, 1], ijk[ok, 0]] = np.nonzero(ok)[0]
        nearest = ndimage.distance_transform_edt(ids < 0, return_distances=False, return_indices=True)
        s = ids[nearest[0], nearest[1], nearest[2]]
        del nearest
        dx = x - self.points[s, 0]
        dy = y - self.points[s, 1]
        dz = z - self.points[s, 2]
        a = (dx * self.normal[s, 0] + dy * self.normal[s, 1] + dz * self.normal[s, 2]) / self.r1[s]
        b = (dx * self.binormal[s, 0] + dy * self.binormal[s, 1] + dz * self.binormal[s, 2]) / self.r2[s]
        # Within the tube the offset along the tangent is tiny; past the curve's ends the distance
        # to the end sample rounds the tube off.
        along = np.sqrt(dx * dx + dy * dy + dz * dz)
        q = np.sqrt(a * a + b * b)
        rmin = np.minimum(self.r1[s], self.r2[s])
        lateral = (q - 1.0) * rmin
        radial = along - np.maximum(self.r1[s], self.r2[s])
        return np.maximum(lateral, radial).astype(np.float32)


class _VerticalTube:
    """Tube along z with elliptic cross-section; centre and radii are piecewise linear in z."""

    def __init__(
        self,
        z: Sequence[float] | np.ndarray,
        cx: Sequence[float] | np.ndarray,
        cy: Sequence[float] | np.ndarray,
        rx: float | Sequence[float] | np.ndarray,
        ry: float | Sequence[float] | np.ndarray | None = None,
    ) -> None:
        """Knots at heights z (mm) with centres (cx, cy) and semi-axes rx, ry (mm; ry defaults to rx)."""
        order = np.argsort(z)
        self.z = np.asarray(z, float)[order]
        self.cx = np.asarray(cx, float)[order]
        self.cy = np.asarray(cy, float)[order]
        self.rx = np.broadcast_to(np.asarray(rx, float), self.z.shape)[order]
        self.ry = self.rx if ry is None else np.broadcast_to(np.asarray(ry, float), self.z.shape)[order]
        r = max(self.rx.max(), self.ry.max())
        self.lo = np.array([self.cx.min() - r, self.cy.min() - r, self.z[0]])
        self.hi = np.array([self.cx.max() + r, self.cy.max() + r, self.z[-1]])

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        def at(values: np.ndarray) -> np.ndarray:
            return np.interp(z, self.z, values).astype(np.float32)

        rx, ry = np.maximum(at(self.rx), 0.1), np.maximum(at(self.ry), 0.1)
        q = np.sqrt(((x - at(self.cx)) / rx) ** 2 + ((y - at(self.cy)) / ry) ** 2)
        d = (q - 1.0) * np.minimum(rx, ry)
        return np.maximum(d, np.maximum(self.z[0] - z, z - self.z[-1]).astype(np.float32))


def _ellipsoid_fn(frame: _Frame, semi: Sequence[float]) -> ShapeFn:
    def fn(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return _ellipsoid(*frame.local(x, y, z), *semi)

    return fn


class _Sampled:
    """A shape function sampled once on a coarse grid and interpolated trilinearly afterwards
    (edge values outside the grid). Calls must pass the views of an anatomy-aligned regular grid."""

    def __init__(self, fn: ShapeFn, lo: np.ndarray, hi: np.ndarray, h: float) -> None:
        self.grid = _Coarse.covering(lo, hi, h)
        self.values = self.grid.evaluate(fn)

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = self.values
        for axis, (query, own) in enumerate(
            zip((z, y, x), (self.grid.z, self.grid.y, self.grid.x), strict=True)
        ):
            pos = (query.ravel().astype(float) - float(own[0])) / self.grid.h
            out = _interp_axis(out, pos, axis)
        return out


def _sub_box_eval(fn: ShapeFn, views: tuple[np.ndarray, ...], lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """fn on the part of a regular grid (given by its views) inside [lo, hi]; _FAR elsewhere."""
    axes = [views[0].ravel(), views[1].ravel(), views[2].ravel()]
    sel = []
    for axis, low, high in zip(axes, lo, hi, strict=True):
        idx = np.nonzero((axis >= low) & (axis <= high))[0]
        if len(idx) == 0:
            return np.float32(_FAR)
        sel.append(slice(idx[0], idx[-1] + 1))
    out = np.full((len(axes[2]), len(axes[1]), len(axes[0])), _FAR, np.float32)
    sub = fn(axes[0][sel[0]][None, None, :], axes[1][sel[1]][None, :, None], axes[2][sel[2]][:, None, None])
    out[sel[2], sel[1], sel[0]] = sub
    return out


# --------------------------------------------------------------------------------------------------
# Body: outline, wall layers, diaphragm, ribs, pelvis, table (painted analytically, slab by slab)
# --------------------------------------------------------------------------------------------------

_THETA = np.linspace(-np.pi, np.pi, 1441)


@dataclass(frozen=True)
class _Body:
    """Body and cavity geometry. Angles theta = atan2(y, x) about the anatomy origin (+y posterior)."""

    cavity_lut: np.ndarray  # cavity radius (mm) on _THETA at scale 1
    muscle_lut: np.ndarray  # muscle wall thickness (mm)
    fat_lut: np.ndarray  # subcutaneous fat thickness (mm)
    skin_mm: float
    scale_amp: float
    scale_wavelength: float
    scale_phase: float
    pelvis_z: float  # below this the cavity narrows laterally (true pelvis)
    pelvis_narrowing: float
    domes: tuple[tuple[float, float, float, float], ...]  # (x, y, z, curvature radius) per dome
    dome_posterior: float  # posterior steepening of the domes
    recess_z: float  # lowest point of the costophrenic recesses
    diaphragm_mm: float
    mediastinum_x: float
    mediastinum_half_width: float
    rib_lowest_z: float  # z of the lowest rib at the spine
    rib_slope: float  # mm of descent per radian away from the spine
    rib_pitch: float
    rib_height: float
    rib_thickness: float
    xiphoid_z: float
    crest_z: float  # iliac crest
    ilium_thickness: float
    table_y: float | None
    table_thickness: float

    def scale(self, z: np.ndarray) -> np.ndarray:
        return (
            1.0 + self.scale_amp * np.sin(2 * np.pi * z / self.scale_wavelength + self.scale_phase)
        ).astype(np.float32)

    def narrowing(self, z: np.ndarray) -> np.ndarray:
        t = np.clip((self.pelvis_z - z) / 80.0, 0.0, 1.0)
        return (self.pelvis_narrowing * t * t * (3 - 2 * t)).astype(np.float32)

    def cavity_radius(self, theta: np.ndarray, z: np.ndarray) -> np.ndarray:
        e = np.interp(theta, _THETA, self.cavity_lut).astype(np.float32)
        c2 = np.cos(theta).astype(np.float32) ** 2
        return e * self.scale(z) * (1.0 - self.narrowing(z) * c2)

    def cavity_sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Radial distance (mm) outside the abdominal/thoracic cavity (negative inside)."""
        return np.hypot(x, y) - self.cavity_radius(np.arctan2(y, x), z)

    def diaphragm_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """z (mm) of the diaphragm's lower surface above the point (x, y)."""
        out: np.ndarray | float = self.recess_z
        for dx0, dy0, dz0, rc in self.domes:
            dx = x - dx0
            dy = (y - dy0) * np.where(y > dy0, self.dome_posterior, 1.0).astype(np.float32)
            out = np.maximum(out, dz0 - (dx * dx + dy * dy) / (2 * rc))
        return np.asarray(out, np.float32)

    def skin_radius_max(self) -> float:
        """Largest distance (mm) of the skin from the anatomy z axis, over all angles and heights."""
        s = 1.0 + abs(self.scale_amp)
        return float(np.max(self.cavity_lut * s + self.muscle_lut + self.fat_lut) + self.skin_mm)

    def skin_posterior_max(self) -> float:
        s = 1.0 + abs(self.scale_amp)
        r = self.cavity_lut * s + self.muscle_lut + self.fat_lut + self.skin_mm
        return float(np.max(r * np.sin(_THETA)))


def _sample_body(rng: np.random.Generator, spine_y: float, crest_z: float, l1_z: float) -> _Body:
    a = rng.uniform(115, 145)
    b_ant = rng.uniform(70, 100)
    b_post = spine_y + rng.uniform(25, 35)
    n_ant, n_post = rng.uniform(2.0, 2.4), rng.uniform(2.3, 3.0)
    c, s = np.cos(_THETA), np.sin(_THETA)
    post = s > 0
    n = np.where(post, n_post, n_ant)
    b = np.where(post, b_post, b_ant)
    radius = (np.abs(c / a) ** n + np.abs(s / b) ** n) ** (-1.0 / n)
    modulation = 1.0
    for m in (2, 3, 4):
        modulation = modulation + rng.uniform(0, 0.025) * np.cos(m * _THETA + rng.uniform(0, 2 * np.pi))
    radius = radius * modulation
    pos, neg = np.maximum(s, 0), np.maximum(-s, 0)
    m_lat, m_ant, m_post = rng.uniform(8, 14), rng.uniform(7, 12), rng.uniform(45, 62)
    muscle = m_lat + (m_post - m_lat) * pos**4 + (m_ant - m_lat) * neg**2
    f0 = rng.uniform(6, 35)
    fat = f0 * (0.75 + 0.35 * neg + 0.25 * np.abs(c)) * (1 + 0.15 * np.cos(2 * _THETA + rng.uniform(0, 6.3)))
    alba = 0.7 * muscle * np.exp(-(((_THETA + np.pi / 2) / 0.05) ** 2))  # thin linea alba; fat fills in
    muscle, fat = muscle - alba, fat + alba
    domes = (
        (-a * rng.uniform(0.4, 0.5), -rng.uniform(0, 20), 0.0, rng.uniform(65, 90)),
        (a * rng.uniform(0.4, 0.5), rng.uniform(-10, 10), -rng.uniform(10, 30), rng.uniform(65, 90)),
    )
    skin = rng.uniform(1.5, 2.5)
    table_y = None
    scale_amp = rng.uniform(0, 0.05)
    if rng.random() < 0.75:
        r = radius * (1.0 + scale_amp) + muscle + fat + skin
        table_y = float(np.max(r * s)) - rng.uniform(0, 6)  # the patient's back rests on it
    return _Body(
        cavity_lut=radius.astype(np.float32),
        muscle_lut=muscle.astype(np.float32),
        fat_lut=fat.astype(np.float32),
        skin_mm=skin,
        scale_amp=scale_amp,
        scale_wavelength=rng.uniform(400, 800),
        scale_phase=rng.uniform(0, 2 * np.pi),
        pelvis_z=crest_z - rng.uniform(30, 60),
        pelvis_narrowing=rng.uniform(0.15, 0.3),
        domes=domes,
        dome_posterior=math.sqrt(rng.uniform(1.5, 2.2)),
        recess_z=-rng.uniform(120, 150),
        diaphragm_mm=rng.uniform(3, 5),
        mediastinum_x=rng.uniform(0, 10),
        mediastinum_half_width=rng.uniform(25, 38),
        rib_lowest_z=l1_z + rng.uniform(20, 35),
        rib_slope=rng.uniform(28, 38),
        rib_pitch=rng.uniform(28, 34),
        rib_height=rng.uniform(9, 13),
        rib_thickness=rng.uniform(6, 9),
        xiphoid_z=-rng.uniform(40, 70),
        crest_z=crest_z,
        ilium_thickness=rng.uniform(6, 10),
        table_y=table_y,
        table_thickness=rng.uniform(4, 8),
    )


# Tissue classes of the body layer, painted with one table lookup per slab.
_BODY_TISSUES = (
    "visceral_fat",  # 0: abdominal cavity (free for organs)
    "muscle",  # 1: muscle wall
    "fat",  # 2: subcutaneous fat
    "skin",  # 3
    "air",  # 4
    "muscle",  # 5: diaphragm
    "lung",  # 6
    "visceral_fat",  # 7: mediastinum
    "rib",  # 8: ribs, sternum, iliac wings
    "cartilage",  # 9: costal cartilage
    "table",  # 10
)


def _body_fields(body: _Body, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Per-pixel quantities of the body layer that depend on (x, y) only (anatomy mm)."""
    theta = np.arctan2(y, x)
    return {
        "rho": np.hypot(x, y),
        "cavity": np.interp(theta, _THETA, body.cavity_lut).astype(np.float32),
        "muscle": np.interp(theta, _THETA, body.muscle_lut).astype(np.float32),
        "fat": np.interp(theta, _THETA, body.fat_lut).astype(np.float32),
        "cos2": (np.cos(theta) ** 2).astype(np.float32),
        "alpha": np.abs(np.mod(theta - np.pi / 2 + np.pi, 2 * np.pi) - np.pi).astype(
            np.float32
        ),  # from spine
        "diaphragm": body.diaphragm_z(x, y),
    }


def _body_fields_oblique(grid: _Grid, box: Box, body: _Body) -> dict[str, np.ndarray]:
    """_body_fields for a box of an oblique grid: evaluated on every f-th voxel in-plane (f * spacing
    <= 2 mm) and upsampled linearly; the fields are smooth where it matters."""
    f = [max(1, int(2.0 / s)) for s in grid.spacing_xyz[1::-1]]  # (y, x)
    n = [box[1].stop - box[1].start, box[2].stop - box[2].start]
    m = [math.ceil((nn - 1) / ff) + 1 for nn, ff in zip(n, f, strict=True)]
    sub = (
        box[0],
        slice(box[1].start, box[1].start + f[0] * (m[0] - 1) + 1, f[0]),
        slice(box[2].start, box[2].start + f[1] * (m[1] - 1) + 1, f[1]),
    )
    x, y, _ = grid.coords(sub)
    fields = _body_fields(body, x, y)
    for name, value in fields.items():
        value = np.broadcast_to(value, np.broadcast_shapes(value.shape, (1, m[0], m[1])))
        fields[name] = _upsample(_upsample(value, f[0], n[0], 1), f[1], n[1], 2)
    return fields


def _paint_body(canvas: _Canvas, body: _Body, hu: dict[str, float], slab: int = 16) -> None:
    """Air, skin, fat, muscle wall, cavity fat, diaphragm, lungs, mediastinum, ribs, ilia and table.

    Works slab by slab on the whole grid. Everything outside the abdominal cavity below the
    diaphragm is marked reserved in the mask, so organs and bowel stay inside it.
    """
    grid = canvas.grid
    nz, ny, nx = grid.shape_zyx
    lut = np.array([hu[t] for t in _BODY_TISSUES], np.float32)
    cached: dict[str, np.ndarray] | None = None
    for k0 in range(0, nz, slab):
        box = (slice(k0, min(k0 + slab, nz)), slice(0, ny), slice(0, nx))
        x, y, z = grid.coords(box)
        planar = x.shape[0] == 1 and y.shape[0] == 1  # axis-aligned: (x, y) the same on every slice
        if planar:
            f = cached = cached if cached is not None else _body_fields(body, x, y)
        else:
            f = _body_fields_oblique(grid, box, body)
        radius = f["cavity"] * body.scale(z)
        muscle = f["muscle"]
        zmin, zmax = float(np.min(z)), float(np.max(z))
        if zmin < body.pelvis_z:  # the true pelvis narrows the cavity; hip muscles fill the gap
            narrowed = radius * (1.0 - body.narrowing(z) * f["cos2"])
            muscle = muscle + (radius - narrowed)
            radius = narrowed
        e = f["rho"] - radius  # mm outside the cavity
        outside = e >= 0
        cls = outside.view(np.uint8) + (e >= muscle)
        wall = muscle + f["fat"]
        cls += e >= wall
        cls += e >= wall + body.skin_mm
        if zmax > body.recess_z:  # thorax above the diaphragm
            above = (z > f["diaphragm"]) & ~outside
            lung = above & (z > f["diaphragm"] + body.diaphragm_mm)
            cls += above.view(np.uint8) * np.uint8(5)
            cls += lung
            cls += lung & (np.abs(x - body.mediastinum_x) < body.mediastinum_half_width)
        ribs = zmax > body.rib_lowest_z - body.rib_slope * 2.6
        ilia = zmin < body.crest_z and zmax > body.crest_z - 150.0
        if ribs or ilia:
            thickness = max(body.rib_thickness, body.ilium_thickness)
            idx = np.nonzero((e >= 1.0) & (e < 1.0 + thickness))
            depth = e[idx]
            zz = np.broadcast_to(z, e.shape)[idx]
            alpha = np.broadcast_to(f["alpha"], e.shape)[idx]
            code = np.zeros(len(depth), np.uint8)
            if ribs:
                phase = (zz + body.rib_slope * alpha - body.rib_lowest_z) / body.rib_pitch
                number = np.floor(phase)
                rib = (depth < 1.0 + body.rib_thickness) & (phase >= 0)
                rib &= phase - number < body.rib_height / body.rib_pitch
                reach = np.where(number < 2, 1.4, 2.3)  # the two lowest (floating) ribs are short
                code[rib & (alpha < reach)] = 8
                code[rib & (alpha >= reach) & (alpha < 2.95)] = 9
                code[(depth < 1.0 + body.rib_thickness) & (alpha >= 2.95) & (zz > body.xiphoid_z)] = 8
            if ilia:
                wing = (
                    (depth < 1.0 + body.ilium_thickness) & (zz < body.crest_z) & (zz > body.crest_z - 150.0)
                )
                code[wing & (alpha > 0.35) & (alpha < 1.9)] = 8
            hit = code > 0
            cls[tuple(i[hit] for i in idx)] = code[hit]
        if body.table_y is not None:
            table = (y >= body.table_y) & (y < body.table_y + body.table_thickness) & (np.abs(x) < 230.0)
            cls[np.broadcast_to(table, cls.shape)] = 10
        canvas.hu[box] = lut[cls]
        np.multiply(cls > 0, np.uint8(_RESERVED), out=canvas.mask[box], casting="unsafe")


# --------------------------------------------------------------------------------------------------
# Parts (every structure other than the body) and the canvas they are painted on
# --------------------------------------------------------------------------------------------------


class _PaintContext:
    """What a part's HU function sees: its signed distance on the fine box, lazily its coordinates,
    and any other function resampled from its coarse grid."""

    def __init__(self, grid: _Grid, coarse: _Coarse, box: Box, sdf: np.ndarray) -> None:
        self.grid, self.coarse, self.box, self.sdf = grid, coarse, box, sdf

    def coords(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.grid.coords(self.box)

    def field(self, fn: ShapeFn, lo: np.ndarray | None = None, hi: np.ndarray | None = None) -> np.ndarray:
        """fn resampled onto the box; with lo/hi (anatomy mm), fn is only evaluated inside that box
        and is _FAR elsewhere."""
        if lo is None or hi is None:
            values = self.coarse.evaluate(fn)
        else:
            values = np.ascontiguousarray(
                np.broadcast_to(_sub_box_eval(fn, self.coarse.views, lo, hi), self.coarse.shape_zyx)
            )
        return _resample(self.grid, self.coarse, values, self.box)


HuFn = Callable[[_PaintContext], "np.ndarray | float"]


@dataclass
class _Part:
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
    code: int = _RESERVED
    force: bool = False
    halo_mm: float = 0.0
    normalize: bool = False
    h_mm: float = 2.0


class _Canvas:
    """The HU (float32) and mask (uint8) volumes, (z, y, x), being painted."""

    def __init__(self, grid: _Grid, h_mm: float) -> None:
        self.grid = grid
        self.h_mm = h_mm
        self.hu = np.empty(grid.shape_zyx, np.float32)
        self.mask = np.zeros(grid.shape_zyx, np.uint8)
        lo, hi = grid.anatomy_bounds()
        self.view_lo, self.view_hi = lo - _CROP_MARGIN_MM, hi + _CROP_MARGIN_MM

    def paint(self, part: _Part) -> None:
        lo = np.maximum(part.lo - part.halo_mm, self.view_lo)
        hi = np.minimum(part.hi + part.halo_mm, self.view_hi)
        if np.any(hi <= lo):
            return
        h = max(part.h_mm, self.h_mm)
        coarse = _Coarse.covering(lo, hi, h)
        box = self.grid.index_box(coarse.lo, coarse.hi)
        if box is None:
            return
        values = coarse.evaluate(part.shape)
        if part.normalize:
            values = _as_distance(values, h)
        sdf = _resample(self.grid, coarse, values, box)
        inside = sdf < 0
        mask = self.mask[box]
        if not part.force:
            inside &= mask == _FREE
        else:
            inside &= (mask == _FREE) | (mask == _RESERVED)
        if inside.any():
            value = part.hu(_PaintContext(self.grid, coarse, box, sdf))
            np.copyto(self.hu[box], np.asarray(value, np.float32), where=inside)
            np.copyto(mask, np.uint8(part.code), where=inside)
        if part.halo_mm > 0:
            np.copyto(mask, np.uint8(_RESERVED), where=(sdf < part.halo_mm) & (mask == _FREE))


def _as_distance(values: np.ndarray, h: float) -> np.ndarray:
    """Turn an implicit function sampled with spacing h into an approximate distance (mm)."""
    gz, gy, gx = np.gradient(values, h)
    g = np.sqrt(gx * gx + gy * gy + gz * gz)
    return (values / np.maximum(g, 0.25)).astype(np.float32)


def _layers(outer: float, *inner: tuple[float, float]) -> HuFn:
    """HU by depth: `outer` near the surface; each (depth_mm, hu) applies deeper than depth_mm."""

    def fn(ctx: _PaintContext) -> np.ndarray:
        out = np.full(ctx.sdf.shape, outer, np.float32)
        for depth, value in inner:
            np.copyto(out, np.float32(value), where=ctx.sdf < -depth)
        return out

    return fn


def _const(value: float) -> HuFn:
    return lambda ctx: value


def _measure_ml(fn: ShapeFn, lo: np.ndarray, hi: np.ndarray, h: float = 3.0) -> float:
    coarse = _Coarse.covering(lo, hi, h)
    return float(np.count_nonzero(coarse.evaluate(fn) < 0)) * h**3 / 1000.0


# --------------------------------------------------------------------------------------------------
# Anatomy
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spine:
    """Vertebral column: bodies, discs, canal with cord, posterior elements; sacrum below S1."""

    z0: float  # centre of L1
    pitch: float
    disc: float
    y_l1: float  # vertebral body centre y at L1
    lordosis: float
    sacrum_z: float
    rx_lumbar: float
    ry_lumbar: float
    canal_r: float
    arch: float
    spinous_len: float
    transverse_len: float

    def center_y(self, z: np.ndarray) -> np.ndarray:
        l3 = self.z0 - 2 * self.pitch
        y = self.y_l1 - self.lordosis * np.exp(-(((z - l3) / 110.0) ** 2))
        y = y + 0.12 * np.maximum(z - self.z0 - 60.0, 0.0)  # thoracic kyphosis
        return (y + 0.55 * np.maximum(self.sacrum_z - z, 0.0)).astype(np.float32)

    def radii(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = np.clip((z - (self.z0 + 20.0)) / 150.0, 0.0, 1.0)  # thoracic bodies are smaller
        below = np.clip((self.sacrum_z - z) / 40.0, 0.0, 1.0)
        ala = 1.0 + 0.7 * below * np.clip(1.0 - (self.sacrum_z - z - 40.0) / 80.0, 0.0, 1.0)
        rx = self.rx_lumbar * (1.0 - 0.25 * t) * ala
        ry = self.ry_lumbar * (1.0 - 0.15 * t) * (1.0 - 0.3 * below)
        return rx.astype(np.float32), ry.astype(np.float32)

    def _local_z(self, z: np.ndarray) -> np.ndarray:
        """Height (mm) relative to the nearest vertebral body centre."""
        u = (z - self.z0) / self.pitch
        return ((u - np.round(u)) * self.pitch).astype(np.float32)

    def body(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        rx, ry = self.radii(z)
        q = np.sqrt((x / rx) ** 2 + ((y - self.center_y(z)) / ry) ** 2)
        radial = (q - 1.0) * np.minimum(rx, ry)
        half = 0.5 * (self.pitch - self.disc)
        vertical = np.where(z < self.sacrum_z, -_FAR, np.abs(self._local_z(z)) - half).astype(np.float32)
        return np.maximum(radial, vertical)

    def column(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Bodies and discs together."""
        rx, ry = self.radii(z)
        q = np.sqrt((x / rx) ** 2 + ((y - self.center_y(z)) / ry) ** 2)
        return (q - 1.0) * np.minimum(rx, ry) * 0.97

    def canal(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        _, ry = self.radii(z)
        cy = self.center_y(z) + ry + self.arch * 0.6 + self.canal_r
        return np.hypot(x, y - cy) - self.canal_r

    def posterior(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        _, ry = self.radii(z)
        cy = self.center_y(z) + ry + self.arch * 0.6 + self.canal_r
        r = np.hypot(x, y - cy)
        ring = np.maximum(r - self.canal_r - self.arch, self.canal_r - r)
        dy = y - cy
        spinous = np.maximum(
            np.abs(x) - 3.5, np.abs(dy - self.canal_r - 0.5 * self.spinous_len) - 0.5 * self.spinous_len
        )
        transverse = np.maximum(
            np.abs(np.abs(x) - self.canal_r - 0.5 * self.transverse_len) - 0.5 * self.transverse_len,
            np.abs(dy) - 4.0,
        )
        # Each element spans part of its vertebra's height (gaps are the facet joints and foramina).
        height = np.abs(self._local_z(z))
        sacral = z < self.sacrum_z
        ring = np.maximum(ring, np.where(sacral, -_FAR, height - 0.4 * self.pitch))
        spinous = np.maximum(spinous, np.where(sacral, _FAR, height - 0.25 * self.pitch))
        transverse = np.maximum(transverse, np.where(sacral, _FAR, height - 0.15 * self.pitch))
        return np.minimum(ring, np.minimum(spinous, transverse)).astype(np.float32)

    def union(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return np.minimum(
            np.minimum(self.column(x, y, z), self.canal(x, y, z) - self.arch), self.posterior(x, y, z)
        )


@dataclass
class _Anatomy:
    """One sampled patient: the body layer, then every other part in painting order."""

    body: _Body
    parts: list[_Part]
    kidney_bottom_z: float  # lowest kidney pole, mm (anatomy z), for fields of view that cut it


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _around(center: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Anatomy box (lo, hi) of half-width `radius` mm around `center`."""
    return center - radius, center + radius


Exclusion = tuple[ShapeFn, np.ndarray, np.ndarray, float]  # (shape, lo, hi, clearance in mm)


class _Organ:
    """An organ implicit: a template shape at scale k, clipped (to the cavity, below the diaphragm),
    and kept clear of the organs placed before it by their halo."""

    def __init__(
        self,
        template: Callable[[float], ShapeFn],
        scale: float,
        clips: Sequence[ShapeFn],
        exclusions: Sequence[Exclusion],
    ) -> None:
        self.own = template(scale)
        self.clips = list(clips)
        self.exclusions = list(exclusions)

    def clipped(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        f = self.own(x, y, z)
        for clip in self.clips:
            f = np.maximum(f, clip(x, y, z))
        return f

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        f = self.clipped(x, y, z)
        for fn, lo, hi, clearance in self.exclusions:
            f = np.maximum(f, clearance - _sub_box_eval(fn, (x, y, z), lo, hi))
        return f


def _calibrated(
    template: Callable[[float], ShapeFn],
    bbox: Callable[[float], tuple[np.ndarray, np.ndarray]],
    target_ml: float,
    clips: Sequence[ShapeFn],
    exclusions: Sequence[Exclusion],
    iterations: int = 3,
) -> tuple[_Organ, float]:
    """The organ and its scale k such that the clipped, excluded shape has about `target_ml` mL.

    Volumes are measured on a grid of about 4000 voxels per organ (3-6 mm); k is updated with the
    volume's exponent in k estimated from the last two measurements (3 for a free shape, less where
    it is clipped).
    """
    h = float(np.clip((target_ml * 1000.0 / 4000.0) ** (1.0 / 3.0), 3.0, 6.0))
    k, exponent = 1.0, 3.0
    previous: tuple[float, float] | None = None
    for _ in range(iterations):
        volume = _measure_ml(_Organ(template, k, clips, exclusions), *bbox(k), h=h)
        if volume <= 0:
            k = min(k * 1.3, 1.8)
            continue
        if previous is not None and abs(math.log(k / previous[0])) > 1e-3:
            exponent = float(np.clip(math.log(volume / previous[1]) / math.log(k / previous[0]), 1.5, 3.0))
        previous = (k, volume)
        k = float(np.clip(k * (target_ml / volume) ** (1.0 / exponent), 0.5, 1.8))
    return _Organ(template, k, clips, exclusions), k


def _constant_part(name: str, shape: _Tube | _VerticalTube, hu: float, force: bool = True) -> _Part:
    return _Part(name, shape, shape.lo, shape.hi, _const(hu), force=force)


class _AnatomyBuilder:
    """Samples one patient's anatomy, region by region, in the anatomy frame (LPS mm).

    Parts are collected in three lists painted in this order: `force` (bones, vessels and other
    structures that organs wrap around), `organs` (claimed in priority order kidneys, spleen,
    pancreas, liver; each is kept clear of those before it), and `fillers` (muscles and bowel, which
    only take what is left). `hu` holds the case's mean HU per tissue; paint functions capture it.
    """

    def __init__(
        self, rng: np.random.Generator, hu: dict[str, float], phase: str, oral_contrast: bool
    ) -> None:
        self.rng, self.hu, self.phase, self.oral_contrast = rng, hu, phase, oral_contrast
        self.force: list[_Part] = []
        self.organs: list[_Part] = []
        self.fillers: list[_Part] = []
        self.exclusions: list[Exclusion] = []
        # skeleton landmarks: L1 centre height, vertebral pitch, iliac crest (L4), sacrum (S1)
        self.pitch = self.u(30, 35)
        self.l1_z = self.u(-150, -125)
        self.crest_z = self.l1_z - 3 * self.pitch + self.u(-5, 10)
        self.sacrum_z = self.l1_z - 4.5 * self.pitch
        self.spine = _Spine(
            z0=self.l1_z,
            pitch=self.pitch,
            disc=self.u(7, 10),
            y_l1=self.u(30, 48),
            lordosis=self.u(0, 15),
            sacrum_z=self.sacrum_z,
            rx_lumbar=self.u(21, 26),
            ry_lumbar=self.u(15, 18),
            canal_r=self.u(8, 10),
            arch=self.u(5, 7),
            spinous_len=self.u(28, 38),
            transverse_len=self.u(20, 35),
        )
        self.body = _sample_body(rng, self.spine.y_l1, self.crest_z, self.l1_z)
        self.cav_a = float(np.interp(0.0, _THETA, self.body.cavity_lut))  # cavity half-width
        self.cav_ant = float(np.interp(-np.pi / 2, _THETA, self.body.cavity_lut))  # to the front wall
        self.top_z = 400.0  # vertical structures run up to here (the field of view crops them)

    def u(self, lo: float, hi: float) -> float:
        return _u(self.rng, lo, hi)

    def build(self) -> _Anatomy:
        self._spine()
        self._great_vessels()
        self._kidneys()
        self._spleen()
        self._pancreas()
        self._liver()
        self._portal_system()
        self._gallbladder_heart_and_hips()
        self._muscles_and_bladder()
        self._stomach_and_duodenum()
        self._colon()
        self._small_bowel()
        return _Anatomy(self.body, [*self.force, *self.organs, *self.fillers], self.kidney_bottom_z)

    # --- helpers --------------------------------------------------------------------------------------

    def _cavity_clip(self, gap_mm: float) -> ShapeFn:
        return lambda x, y, z: self.body.cavity_sdf(x, y, z) + gap_mm

    def _below_diaphragm(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return z - self.body.diaphragm_z(x, y)

    def _above_diaphragm(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return self.body.diaphragm_z(x, y) + self.body.diaphragm_mm - z

    def _aorta_y(self, z: float) -> float:
        return float(np.interp(z, self.aorta_z, self.aorta_y))

    def _add_organ(
        self, name: str, label: int, organ: _Organ, lo: np.ndarray, hi: np.ndarray, hu: HuFn, halo: float
    ) -> None:
        self.organs.append(_Part(name, organ, lo, hi, hu, code=label, halo_mm=halo, normalize=True))
        self.exclusions.append((_Sampled(organ.clipped, lo, hi, 3.0), lo, hi, halo))

    def _texture(self, sd: float, wavelength_mm: tuple[float, float] = (40, 120), waves: int = 3) -> _Waves:
        return _Waves.random(self.rng, waves, wavelength_mm, sd)

    def _choice(self, options: Sequence[str], weights: Sequence[float]) -> str:
        w = np.asarray(weights, float)
        return str(options[int(self.rng.choice(len(options), p=w / w.sum()))])

    # --- regions --------------------------------------------------------------------------------------

    def _spine(self) -> None:
        spine, hu = self.spine, self.hu
        z = np.linspace(self.sacrum_z - 130.0, self.top_z, 200)
        cy = spine.center_y(z)
        rx, ry = spine.radii(z)
        reach_x = max(float(rx.max()), spine.canal_r + spine.arch + spine.transverse_len) + 3.0
        behind = 1.6 * spine.arch + 2 * spine.canal_r + spine.spinous_len + 3.0
        lo = np.array([-reach_x, float(np.min(cy - ry)) - 3.0, z[0]])
        hi = np.array([reach_x, float(np.max(cy + ry)) + behind, z[-1]])
        cortex_mm = self.u(1.5, 2.5)

        def spine_hu(ctx: _PaintContext) -> np.ndarray:
            out = np.full(ctx.sdf.shape, hu["cortical"] * 0.55, np.float32)  # posterior elements
            np.copyto(out, np.float32(hu["disc"]), where=ctx.field(spine.column) < 0)
            vertebral_body = ctx.field(spine.body)
            np.copyto(out, np.float32(hu["cortical"]), where=vertebral_body < 0)
            np.copyto(out, np.float32(hu["cancellous"]), where=vertebral_body < -cortex_mm)
            canal = ctx.field(spine.canal)
            np.copyto(out, np.float32(hu["csf"]), where=canal < 0)
            np.copyto(out, np.float32(hu["cord"]), where=canal < -spine.canal_r * 0.45)
            return out

        self.force.append(_Part("spine", spine.union, lo, hi, spine_hu, force=True))

    def _great_vessels(self) -> None:
        """Aorta (left-anterior of the spine, beside it in the chest) with iliac arteries; IVC."""
        spine, hu = self.spine, self.hu
        self.bifurcation_z = self.crest_z + self.u(-10, 10)
        self.r_aorta = r = self.u(9, 12)
        self.x_aorta = x0 = self.u(8, 18)
        z = np.array(
            [
                self.bifurcation_z,
                self.l1_z - self.pitch,
                self.l1_z,
                self.l1_z + 60,
                -40.0,
                20,
                80,
                200,
                self.top_z,
            ]
        )
        rx, ry = spine.radii(z)
        cy = spine.center_y(z)
        chest = np.clip((z + 40.0) / 80.0, 0.0, 1.0)
        y = (cy - ry - r - self.u(1, 4)) * (1 - chest) + (cy - r * 0.3) * chest
        x = x0 * (1 - chest) + (rx + r * 0.8) * chest
        self.aorta_z, self.aorta_y = z, y
        self.force.append(
            _constant_part("aorta", _VerticalTube(z, x, y, r * (1.0 + 0.15 * chest)), hu["artery"])
        )
        curves, radii = [], []
        y_bif = self._aorta_y(self.bifurcation_z)
        for side in (-1, 1):
            p0 = np.array([x0, y_bif, self.bifurcation_z + 5])
            p1 = np.array([side * self.u(40, 55), y_bif + 5, self.bifurcation_z - 80])
            p2 = np.array([side * self.cav_a * self.u(0.55, 0.65), y_bif - 25, self.bifurcation_z - 170])
            curves.append(np.stack([p0, p1, p2]))
            radii.append(np.array([r * 0.7, r * 0.6, r * 0.55]))
        self.force.append(_constant_part("iliac_arteries", _Tube(curves, radii), hu["artery"]))

        r_ivc = self.u(10, 13)
        self.x_ivc = self.u(-28, -18)
        z = np.array([self.bifurcation_z - 10, self.l1_z - self.pitch, self.l1_z, -110.0, -60.0, -10.0, 40.0])
        _, ry = spine.radii(z)
        forward = np.where((z > -115) & (z < 5), self.u(5, 15), 0.0)  # into the liver's IVC groove
        self.ivc_z, self.ivc_y = z, spine.center_y(z) - ry * 0.6 - r_ivc - forward
        ivc = _VerticalTube(z, np.full(len(z), self.x_ivc), self.ivc_y, r_ivc * 1.25, r_ivc)
        self.force.append(_constant_part("ivc", ivc, hu["vein"]))

    def _kidneys(self) -> None:
        """Bean-shaped kidneys beside the spine at L1-L2 (the right one lower), hilum anteromedial,
        with renal pelvis and renal vein; both get the kidney label."""
        hu, rng = self.hu, self.rng
        self.left_kidney_z = self.l1_z - self.u(5, 25)
        bottoms = []
        for side in (1, -1):
            name = "left_kidney" if side > 0 else "right_kidney"
            z_k = self.left_kidney_z if side > 0 else self.left_kidney_z - self.u(10, 20)
            medial = np.array([-side, 0.0, 0.0])
            y_k = float(self.spine.center_y(np.float32(z_k))) + self.u(2, 14)
            center = np.array([side * self.u(62, 75), y_k, z_k])
            long_axis = _unit(0.25 * medial + np.array([0, self.u(0.1, 0.3), 1.0]) + rng.normal(0, 0.05, 3))
            hilum_dir = _unit(
                np.cos(0.6) * medial + np.sin(0.6) * np.array([0, -1.0, 0]) + rng.normal(0, 0.05, 3)
            )
            axes = _orthonormal(hilum_dir, long_axis)  # u: toward the hilum, v: thickness, w: long axis
            frame = _Frame(center, axes)
            semi = np.array([self.u(27, 31), self.u(20, 24), self.u(52, 58)])
            bend = self.u(100, 160)
            warp = _Warp.random(rng, 3, (60, 140), self.u(0.2, 0.5))
            halo = self.u(3, 9)  # perirenal fat

            def template(k: float, frame=frame, semi=semi, bend=bend, warp=warp) -> ShapeFn:
                def fn(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
                    u, v, w = warp.warped(frame, k, x, y, z)
                    bean = _ellipsoid(u - w * w / (2 * bend), v, w, *semi)  # poles bend medially
                    notch = _ellipsoid(
                        u - semi[0] * 0.95, v, w, semi[0] * 0.55, semi[1] * 0.6, semi[2] * 0.35
                    )
                    return k * _smax(bean, -notch, 4.0)

                return fn

            reach = float(semi.max()) * 1.15 + warp.max_mm + 2.0
            target = 145.0 * self.u(0.85, 1.15) ** 3
            organ, k = _calibrated(
                template,
                lambda k, c=center, r=reach: _around(c, r * k),
                target,
                [self._cavity_clip(halo)],
                self.exclusions,
            )
            cortex_mm = self.u(5, 8)
            texture = self._texture(self.u(2, 5))

            def kidney_hu(ctx: _PaintContext, cortex_mm=cortex_mm, texture=texture) -> np.ndarray:
                medulla = ctx.sdf < -cortex_mm
                out = np.where(medulla, np.float32(hu["kidney_medulla"]), np.float32(hu["kidney_cortex"]))
                return out + ctx.field(texture)

            self._add_organ(name, KIDNEY, organ, *_around(center, reach * k), kidney_hu, halo)
            if side > 0:
                self.left_kidney = (center, semi * k, halo)
            bottoms.append(z_k - semi[2] * k * 0.95)
            # renal pelvis in the hilum, and the renal vein to the IVC (the left one in front of the aorta)
            pelvis = _Frame(center + axes[0] * semi[0] * k * 0.8, axes)
            r_p = semi[2] * k * 0.3
            shape = _ellipsoid_fn(pelvis, (semi[0] * k * 0.3, semi[1] * k * 0.35, semi[2] * k * 0.22))
            self.force.append(
                _Part(f"{name}_pelvis", shape, *_around(pelvis.center, r_p), _const(hu["urine"]), force=True)
            )
            hilum = center + axes[0] * semi[0] * k * 1.05
            r_vein = self.u(4, 6)
            z_v = z_k + 10
            ivc = np.array([self.x_ivc, float(np.interp(z_v, self.ivc_z, self.ivc_y)), z_v])
            if side > 0:
                front = np.array([self.x_aorta, self._aorta_y(z_v) - self.r_aorta - r_vein - 1.5, z_v])
                curve = np.stack([hilum, 0.5 * (hilum + front), front, ivc])
            else:
                curve = np.stack([hilum, 0.5 * (hilum + ivc), ivc])
            self.force.append(
                _constant_part(f"{name}_vein", _Tube([curve], [np.full(len(curve), r_vein)]), hu["vein"])
            )
        self.kidney_bottom_z = float(min(bottoms))

    def _spleen(self) -> None:
        """Crescent under the left dome, posterolateral, long axis along the ribs, hilum anteromedial."""
        body, rng = self.body, self.rng
        theta = math.radians(self.u(22, 40))  # angle behind the left flank
        semi = np.array([self.u(19, 23), self.u(35, 41), self.u(56, 64)])
        rho = float(np.interp(theta, _THETA, body.cavity_lut)) - semi[0] * self.u(0.7, 1.0)
        x, y = rho * math.cos(theta), rho * math.sin(theta)
        center = np.array([x, y, float(body.diaphragm_z(np.float32(x), np.float32(y))) - self.u(40, 55)])
        long_axis = _unit(np.array([self.u(0.15, 0.35), -self.u(0.3, 0.55), -1.0]))
        to_hilum = _unit(np.array([-math.cos(theta) - 0.2, -math.sin(theta) - 0.7, 0.0]))
        frame = _Frame(center, _orthonormal(to_hilum, long_axis))
        bend = self.u(70, 110)
        warp = _Warp.random(rng, 3, (60, 150), self.u(0.3, 0.7))

        def template(k: float) -> ShapeFn:
            def fn(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
                u, v, w = warp.warped(frame, k, x, y, z)
                return k * _ellipsoid(u - (v * v + w * w) / (2 * bend), v, w, *semi)  # hilum side concave

            return fn

        reach = float(semi.max()) * 1.15 + warp.max_mm + 2.0
        halo = self.u(0.0, 3.0)
        clips = [self._cavity_clip(0.5), self._below_diaphragm]
        target = 200.0 * self.u(0.85, 1.15) ** 3
        organ, k = _calibrated(template, lambda k: _around(center, reach * k), target, clips, self.exclusions)
        mottled = self.phase == "arterial"  # the arterial-phase spleen is mottled
        texture = self._texture(12.0, (15, 40), waves=4) if mottled else self._texture(3.0)
        spleen_hu = self.hu["spleen"]
        self._add_organ(
            "spleen",
            SPLEEN,
            organ,
            *_around(center, reach * k),
            lambda ctx: spleen_hu + ctx.field(texture),
            halo,
        )
        self.spleen_center, self.spleen_halo = center, halo
        self.spleen_hilum = center + frame.axes[0] * semi[0] * k
        self.to_spleen_hilum = frame.axes[0]

    def _pancreas(self) -> None:
        """Head on the right (lower), neck in front of the aorta, tail at the splenic hilum: a tube
        with elliptic cross-section, at least 25 mm thick, swept along a spline, plus the head."""
        z_p = self.z_pancreas = self.left_kidney_z + self.u(15, 35)
        r_neck = self.u(12.5, 14.0)
        gap = self.u(14, 22)  # SMA and fat between the aorta and the neck
        neck = np.array([self.u(-8, 8), self._aorta_y(z_p) - self.r_aorta - gap - r_neck, z_p])
        head = np.array([-self.u(30, 40), neck[1] + self.u(5, 15), z_p - self.u(8, 18)])
        body_pt = np.array([self.u(30, 45), neck[1] + self.u(2, 10), z_p + self.u(3, 12)])
        r_tail = self.u(12.5, 14.0)
        tail = self.spleen_hilum + self.to_spleen_hilum * (r_tail + self.spleen_halo + self.u(6, 14))
        kidney_center, kidney_semi, kidney_halo = self.left_kidney
        tail[1] = min(
            tail[1], kidney_center[1] - kidney_semi[1] * 1.1 - kidney_halo - r_tail - 2.0
        )  # in front
        tail[2] = float(np.clip(tail[2], z_p, z_p + 40))
        tail[0] = min(tail[0], body_pt[0] + 70)
        r_ap = np.array([self.u(14, 16), r_neck, self.u(13, 15), r_tail])
        r_si = np.array([self.u(16, 20), self.u(14, 17), self.u(15, 18), self.u(13, 16)])
        tube = _Tube([np.stack([head, neck, body_pt, tail])], [r_ap], [r_si])
        head_semi = (self.u(16, 20), self.u(14, 17), self.u(22, 28))
        head_frame = _Frame(head - np.array([self.u(0, 6), 0.0, self.u(8, 14)]), np.eye(3))
        head_fn = _ellipsoid_fn(head_frame, head_semi)

        def shape(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
            return _smin(tube(x, y, z), head_fn(x, y, z), 6.0)

        lo = np.minimum(tube.lo, head_frame.center - max(head_semi)) - 2
        hi = np.maximum(tube.hi, head_frame.center + max(head_semi)) + 2
        halo = self.u(1.5, 4.0)
        organ = _Organ(lambda k: shape, 1.0, [self._cavity_clip(2.0)], self.exclusions)
        texture = self._texture(self.u(2, 5), (30, 80))
        pancreas_hu = self.hu["pancreas"]
        self._add_organ(
            "pancreas", PANCREAS, organ, lo, hi, lambda ctx: pancreas_hu + ctx.field(texture), halo
        )
        self.pancreas_head, self.pancreas_head_semi, self.pancreas_halo = head, head_semi, halo
        self.pancreas_neck = neck
        # the splenic vein runs along the back of the body and tail; the portal confluence is behind the neck
        posterior = np.array([0.0, 1.0, 0.0])
        self.r_splenic = r_sv = self.u(3.5, 5.0)
        self.splenic_curve = np.stack(
            [
                neck + posterior * (r_neck + r_sv + 1),
                body_pt + posterior * (r_ap[2] + r_sv + 1),
                tail + posterior * (r_tail + r_sv + 1),
                self.spleen_hilum,
            ]
        )
        self.confluence = neck + posterior * (r_neck + self.u(7, 9)) + np.array([-5.0, 0.0, 3.0])

    def _liver(self) -> None:
        """Right upper quadrant under the diaphragm: a large right lobe smoothly joined to a wedge-like
        left lobe that crosses the midline, cut below by an oblique plane, with intrahepatic vessels."""
        rng, hu = self.rng, self.hu
        center = np.array([-self.cav_a * self.u(0.40, 0.50), self.u(-10, 15), -self.u(70, 85)])
        right = np.array([70.0, 82.0, 92.0]) * np.exp(rng.normal(0, 0.04, 3))
        left_off = np.array([self.u(70, 85), -self.u(30, 45), self.u(20, 35)])
        left = np.array([self.u(65, 80), self.u(36, 46), self.u(32, 42)])
        taper = self.u(0.3, 0.5)
        plane_n = _unit([self.u(0.25, 0.45), -self.u(0.25, 0.45), -1.0])
        plane_d = self.u(72, 88) * abs(plane_n[2])
        tilt = _rotation(rng.normal(size=3), math.radians(self.u(0, 6)))
        frame = _Frame(center, (_rotation([0, 0, 1], math.radians(self.u(-10, 10))) @ tilt).T)
        warp = _Warp.random(rng, 4, (120, 250), self.u(0.4, 0.9)) + _Warp.random(
            rng, 3, (40, 80), self.u(0.1, 0.25)
        )

        def template(k: float) -> ShapeFn:
            def fn(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
                u, v, w = warp.warped(frame, k, x, y, z)
                right_lobe = _ellipsoid(u, v, w, *right)
                s = 1.0 - taper * np.clip((u - left_off[0]) / left[0], 0.0, 1.0)  # thinner to the left
                left_lobe = (
                    _ellipsoid(u - left_off[0], (v - left_off[1]) / s, (w - left_off[2]) / s, *left) * s
                )
                plane = plane_n[0] * u + plane_n[1] * v + plane_n[2] * w - plane_d
                return k * np.maximum(_smin(right_lobe, left_lobe, 20.0), plane)

            return fn

        t_lo = np.minimum(-right, left_off - left)  # template box (mm, local axes) around both lobes
        t_hi = np.maximum(right, left_off + left)
        corners = np.array(list(itertools.product(*zip(t_lo, t_hi, strict=True))))

        def bbox(k: float) -> tuple[np.ndarray, np.ndarray]:
            pts = center + (corners * k) @ frame.axes
            pad = warp.max_mm * k + 4.0
            lo = np.maximum(pts.min(0) - pad, [-self.cav_a * 1.2, -self.cav_ant * 1.2, -400.0])
            hi = np.minimum(pts.max(0) + pad, [self.cav_a * 1.2, 200.0, 20.0])
            return lo, hi

        halo = self.u(0.0, 2.0)
        target = (
            1650.0 * self.u(0.87, 1.13) ** 3
        )  # ~7% is carved out later by the IVC, portal vein, gallbladder
        clips = [self._cavity_clip(0.5), self._below_diaphragm]
        organ, k = _calibrated(template, bbox, target, clips, self.exclusions)
        self.liver_center, self.liver_scale = center, k
        # intrahepatic vessels (inside the liver label): portal branches from the hilum, hepatic veins
        self.liver_hilum = hilum = center + np.array([self.u(20, 30), -self.u(5, 15), -self.u(25, 40)]) * k
        branches, branch_r = [], []
        for _ in range(int(rng.integers(4, 7))):
            d = _unit(rng.normal(size=3) + np.array([-0.6, 0.0, 0.5]))
            length = self.u(50, 90) * k
            branches.append(
                np.stack([hilum, hilum + d * length * 0.5 + rng.normal(0, 8, 3), hilum + d * length])
            )
            r0 = self.u(4.5, 6.5)
            branch_r.append(np.array([r0, r0 * 0.6, 2.0]))
        portal_tree = _Tube(branches, branch_r)
        ivc_top = np.array([self.x_ivc, float(np.interp(-15.0, self.ivc_z, self.ivc_y)), -15.0])
        veins, vein_r = [], []
        for _ in range(3):
            d = _unit(np.array([self.u(-1.0, 0.7), -self.u(0.6, 1.2), -self.u(0.1, 0.6)]))
            length = self.u(60, 100) * k
            veins.append(
                np.stack([ivc_top, ivc_top + d * length * 0.5 + rng.normal(0, 6, 3), ivc_top + d * length])
            )
            vein_r.append(np.array([self.u(5, 7), 4.0, 2.0]))
        hepatic_tree = _Tube(veins, vein_r)
        texture = self._texture(self.u(2, 5), (50, 150))

        def liver_hu(ctx: _PaintContext) -> np.ndarray:
            out = hu["liver"] + ctx.field(texture)
            for tree, tissue in ((portal_tree, "portal_vein"), (hepatic_tree, "vein")):
                np.copyto(out, np.float32(hu[tissue]), where=ctx.field(tree, tree.lo, tree.hi) < 0)
            return out

        self._add_organ("liver", LIVER, organ, *bbox(k), liver_hu, halo)

    def _portal_system(self) -> None:
        """Portal vein (confluence to liver hilum), splenic vein, SMV and SMA: all force-painted, so
        the pancreas and liver wrap around them."""
        hu, c = self.hu, self.confluence
        portal = _Tube(
            [np.stack([c, 0.5 * (c + self.liver_hilum) + np.array([0, -5.0, 0]), self.liver_hilum])],
            [np.full(3, self.u(6, 8))],
        )
        self.force.append(_constant_part("portal_vein", portal, hu["portal_vein"]))
        splenic = _Tube([self.splenic_curve], [np.full(len(self.splenic_curve), self.r_splenic)])
        self.force.append(_constant_part("splenic_vein", splenic, hu["portal_vein"]))
        smv = _Tube(
            [np.stack([c, c + np.array([-3.0, -8.0, -40.0]), c + np.array([-8.0, -12.0, -90.0])])],
            [np.full(3, self.u(4.5, 6.0))],
        )
        self.force.append(_constant_part("smv", smv, hu["portal_vein"]))
        z = self.z_pancreas - 8
        origin = np.array([self.x_aorta, self._aorta_y(z) - self.r_aorta + 2, z])
        sma = _Tube(
            [
                np.stack(
                    [origin, origin + np.array([2.0, -15.0, -10.0]), origin + np.array([6.0, -20.0, -90.0])]
                )
            ],
            [np.full(3, self.u(3, 4))],
        )
        self.force.append(_constant_part("sma", sma, hu["artery"]))

    def _gallbladder_heart_and_hips(self) -> None:
        hu = self.hu
        if self.rng.random() < 0.85:  # the rest had a cholecystectomy
            center = self.liver_center + np.array([self.u(25, 45), 0.0, -self.u(45, 70)])
            center[1] = -self.cav_ant * self.u(0.35, 0.55)
            axes = _orthonormal(np.array([1.0, 0, 0]), _unit([self.u(-0.3, 0.3), -self.u(0.4, 0.8), -1.0]))
            gallbladder = _ellipsoid_fn(
                _Frame(center, axes), (self.u(12, 17), self.u(12, 17), self.u(30, 45))
            )
            self.force.append(
                _Part("gallbladder", gallbladder, *_around(center, 46.0), _const(hu["water"]), force=True)
            )
        # heart, resting on the diaphragm
        xy = np.array([self.u(10, 30), -self.cav_ant * self.u(0.15, 0.3)])
        semi = (self.u(55, 65), self.u(42, 50), self.u(48, 55))
        floor = float(self.body.diaphragm_z(*xy.astype(np.float32)))
        center = np.array([*xy, floor + semi[2] * self.u(0.6, 0.8)])
        ellipsoid = _ellipsoid_fn(_Frame(center, _rotation([0, 0, 1], math.radians(self.u(20, 40))).T), semi)

        def heart(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
            return np.maximum(ellipsoid(x, y, z), self._above_diaphragm(x, y, z))

        blood = hu["artery"] if self.phase == "arterial" else hu["vein"]
        wall = _layers(hu["myocardium"], (self.u(8, 12), blood))
        self.force.append(_Part("heart", heart, *_around(center, 66.0), wall, force=True))
        for side in (-1, 1):  # femoral heads
            center = np.array(
                [side * self.cav_a * self.u(0.6, 0.7), self.u(-20, 5), self.crest_z - self.u(150, 175)]
            )
            r = self.u(22, 26)
            head = _ellipsoid_fn(_Frame(center, np.eye(3)), (r, r, r))
            bone = _layers(hu["cortical"], (3.0, hu["cancellous"]))
            self.force.append(_Part(f"femoral_head_{side}", head, *_around(center, r), bone, force=True))

    def _muscles_and_bladder(self) -> None:
        spine, hu = self.spine, self.hu
        center = np.array([0.0, -self.cav_ant * self.u(0.2, 0.4), self.crest_z - self.u(130, 160)])
        semi = (self.u(30, 55), self.u(25, 45), self.u(25, 45))
        bladder = _ellipsoid_fn(_Frame(center, np.eye(3)), semi)
        self.fillers.append(_Part("bladder", bladder, *_around(center, 56.0), _const(hu["urine"])))
        for side in (-1, 1):  # psoas: from T12 down beside the spine, then forward into the pelvis
            z = np.array(
                [
                    self.l1_z + 15,
                    self.l1_z,
                    self.l1_z - self.pitch,
                    self.crest_z,
                    self.crest_z - 60,
                    self.crest_z - 140,
                ]
            )
            r = np.array([0.5, 6.0, 13.0, self.u(18, 26), self.u(20, 27), self.u(18, 24)])
            rx, _ = spine.radii(z)
            x = side * (rx + r - 3.0)
            x[-2:] = side * np.array([self.cav_a * 0.45, self.cav_a * 0.55])
            y = spine.center_y(z) + 3.0
            y[-2:] = y[-2:] - np.array([30.0, 55.0]) - 0.55 * np.maximum(self.sacrum_z - z[-2:], 0)
            self.fillers.append(
                _constant_part(f"psoas_{side}", _VerticalTube(z, x, y, r), hu["muscle"], force=False)
            )

    def _bowel_hu(self, content: str, wall: float, gas_below_y: float | None, mottle: _Waves) -> HuFn:
        """Wall HU within `wall` mm of the surface; content inside; gas in front of an air-fluid level."""
        hu = self.hu

        def fn(ctx: _PaintContext) -> np.ndarray:
            out = np.full(ctx.sdf.shape, hu["bowel_wall"], np.float32)
            if content == "collapsed":
                return out
            inner = ctx.sdf < -wall
            if content == "stool":
                stool = np.full(ctx.sdf.shape, hu["stool"], np.float32)
                np.copyto(stool, np.float32(hu["gas"]), where=ctx.field(mottle) > 0.6)
                np.copyto(out, stool, where=inner)
            else:
                tissue = {"fluid": "water", "contrast": "oral_contrast", "gas": "gas", "food": "food"}[
                    content
                ]
                np.copyto(out, np.float32(hu[tissue]), where=inner)
            if gas_below_y is not None:  # supine patient: gas rises to the front (smaller y)
                _, y, _ = ctx.coords()
                np.copyto(out, np.float32(hu["gas"]), where=inner & (y < gas_below_y))
            return out

        return fn

    def _bowel(self, name: str, curve: np.ndarray, radii: np.ndarray, content: str, gas_level: bool) -> None:
        tube = _Tube([curve], [radii])
        wall = self.u(2, 4)
        level = None
        if gas_level and content not in ("collapsed", "gas"):
            front = float(np.min(curve[:, 1] - radii))
            level = front + self.u(0.1, 0.7) * float(np.mean(radii)) * 2
        mottle = _Waves.random(self.rng, 8, (8, 20), 1.0)
        self.fillers.append(
            _Part(name, tube, tube.lo, tube.hi, self._bowel_hu(content, wall, level, mottle), h_mm=3.0)
        )

    def _stomach_and_duodenum(self) -> None:
        u, contrast = self.u, 1.0 if self.oral_contrast else 0.0
        top = float(self.body.diaphragm_z(np.float32(50.0), np.float32(20.0)))
        fundus = np.array([u(40, 60), u(5, 30), top - u(25, 35)])
        body = np.array([u(40, 60), -u(20, 40), fundus[2] - u(40, 60)])
        antrum = np.array([u(0, 20), -u(35, 55), body[2] - u(10, 25)])
        pylorus = np.array([-u(15, 30), -u(25, 40), antrum[2] + u(0, 10)])
        collapsed = self.rng.random() < 0.25
        radii = np.array([u(30, 42), u(25, 35), u(15, 22), u(10, 13)]) * (0.6 if collapsed else 1.0)
        content = (
            "collapsed"
            if collapsed
            else self._choice(["food", "fluid", "contrast"], [0.5, 0.5, 0.6 * contrast])
        )
        self._bowel("stomach", np.stack([fundus, body, antrum, pylorus]), radii, content, True)
        # duodenum: a C around the pancreas head, then across in front of the aorta
        head, z_p = self.pancreas_head, self.z_pancreas
        x_d = head[0] - self.pancreas_head_semi[0] - self.pancreas_halo - u(14, 20)
        y_d3 = self._aorta_y(z_p - 50) - self.r_aorta - u(12, 16)
        curve = np.stack(
            [
                pylorus,
                np.array([x_d + 10, pylorus[1] + 15, pylorus[2] - 5]),
                np.array([x_d, head[1], head[2] + 5]),
                np.array([x_d, head[1] + 5, head[2] - 35]),
                np.array([0.0, y_d3, head[2] - u(50, 60)]),
                np.array([u(25, 35), y_d3 - 5, z_p - 30]),
                np.array([u(40, 50), self.pancreas_neck[1] + 5, z_p - 20]),
            ]
        )
        content = self._choice(["collapsed", "fluid", "gas", "contrast"], [0.4, 0.35, 0.1, 0.3 * contrast])
        self._bowel("duodenum", curve, np.full(len(curve), u(10, 13)), content, False)

    def _colon(self) -> None:
        u, a, crest, kidney_z = self.u, self.cav_a, self.crest_z, self.left_kidney_z
        liver_bottom = self.liver_center[2] - 80 * self.liver_scale
        cecum = np.array([-a * u(0.55, 0.7), -u(20, 50), crest - u(20, 50)])
        hepatic = np.array([-a * u(0.55, 0.7), -u(10, 40), max(liver_bottom - 10, kidney_z - 60)])
        splenic = np.array([a * u(0.6, 0.75), u(-20, 10), self.spleen_center[2] - u(50, 70)])
        ascending = np.stack([cecum, np.array([-a * u(0.7, 0.8), u(0, 30), kidney_z - 70]), hepatic])
        transverse = np.stack(
            [hepatic, np.array([0.0, -self.cav_ant * u(0.55, 0.75), self.z_pancreas - u(50, 110)]), splenic]
        )
        descending = np.stack(
            [
                splenic,
                np.array([a * u(0.7, 0.8), u(10, 35), kidney_z - 60]),
                np.array([a * u(0.65, 0.75), u(0, 30), crest - 30]),
                np.array([u(10, 40), -u(10, 40), crest - 90]),  # sigmoid
                np.array([0.0, self.spine.y_l1 + 20, crest - 150]),  # rectum
            ]
        )
        for name, curve, r in (
            ("colon_ascending", ascending, (22, 30)),
            ("colon_transverse", transverse, (18, 26)),
            ("colon_descending", descending, (15, 22)),
        ):
            content = self._choice(["stool", "gas", "fluid", "collapsed"], [0.55, 0.3, 0.05, 0.1])
            self._bowel(name, curve, self.rng.uniform(*r, len(curve)), content, True)

    def _small_bowel(self) -> None:
        """Loops as smooth random walks: several in the mid and lower abdomen, one or two jejunal loops
        near the pancreas tail."""
        rng, a, ant = self.rng, self.cav_a, self.cav_ant
        lower = (
            np.array([-0.6 * a, -0.85 * ant, self.crest_z - 110]),
            np.array([0.6 * a, 10.0, self.z_pancreas - 40]),
        )
        upper = (
            np.array([0.2 * a, -0.7 * ant, self.left_kidney_z - 70]),
            np.array([0.7 * a, 10.0, self.z_pancreas - 5]),
        )
        regions = [lower] * int(rng.integers(4, 8)) + [upper] * int(rng.integers(1, 3))
        contrast = 0.3 if self.oral_contrast else 0.0
        for i, (lo, hi) in enumerate(regions):
            p = rng.uniform(lo, hi)
            d = _unit(rng.normal(size=3))
            points = [p]
            for _ in range(int(rng.integers(5, 9))):
                d = _unit(d + 0.9 * rng.normal(size=3))
                p = np.clip(p + d * self.u(28, 42), lo, hi)
                points.append(p)
            curve = np.stack(points)
            curve = curve[np.concatenate([[True], np.linalg.norm(np.diff(curve, axis=0), axis=1) > 5.0])]
            content = self._choice(["fluid", "collapsed", "contrast", "gas"], [0.45, 0.3, contrast, 0.1])
            radius = self.u(9, 15)
            if len(curve) >= 2:
                self._bowel(f"small_bowel_{i}", curve, np.full(len(curve), radius), content, False)


# --------------------------------------------------------------------------------------------------
# Acquisition sampling, intensities, post-processing
# --------------------------------------------------------------------------------------------------


def _sample_hu(rng: np.random.Generator, phase: int) -> dict[str, float]:
    out = {name: float(rng.uniform(*ranges[phase])) for name, ranges in HU_RANGES.items()}
    return out


def _sample_grid(
    rng: np.random.Generator, options: PhantomOptions, anatomy: _Anatomy
) -> tuple[_Grid, str, tuple[bool, bool, bool], float]:
    """Field of view, spacing, size, direction and origin for one case."""
    fov = FIELDS_OF_VIEW[int(rng.choice(len(FIELDS_OF_VIEW), p=_FOV_PROBABILITIES))]
    kb = anatomy.kidney_bottom_z
    if fov == "abdomen":
        top = _u(rng, 15, 60)
        bottom = min(kb - _u(rng, 40, 120), top - 250)
    elif fov == "chest_abdomen":
        top = _u(rng, 120, 200)
        bottom = kb - _u(rng, 20, 100)
    elif fov == "abdomen_pelvis":
        top = _u(rng, 10, 50)
        bottom = top - _u(rng, 380, 450)
    elif fov == "cut_top":
        top = _u(rng, -55, -20)
        bottom = top - _u(rng, 250, 400)
    else:
        bottom = kb + _u(rng, 10, 40)
        top = bottom + _u(rng, 250, 350)
    extent = float(np.clip(top - bottom, 250, 450))
    if fov == "cut_bottom":
        top = bottom + extent
    else:
        bottom = top - extent

    half_fov = anatomy.body.skin_radius_max() + 15.0
    offset_xy = rng.uniform(-10, 10, 2)
    if options.size == "full":
        n_xy = 512
        s_min = max(0.6, 2 * (half_fov + np.abs(offset_xy).max()) / n_xy)
        s_xy = _u(rng, s_min, max(s_min, 1.0))
        candidates = [
            s for s in (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0) if extent / s + 1 <= _SIZE_LIMITS["full"]
        ]
        s_z = float(candidates[int(rng.integers(len(candidates)))])
    else:
        s_xy = _u(rng, 3.0, 4.0)
        need = 2 * (half_fov + np.abs(offset_xy).max())
        n_xy = int(np.clip(math.ceil(need / s_xy), 96, 128))
        s_xy = max(s_xy, need / n_xy)
        s_z = _u(rng, 3.0, 6.0)
    n_z = round(extent / s_z) + 1

    fx, fy, fz = (bool(rng.random() < options.flip_probability) for _ in range(3))
    flips = (fx, fy, fz)
    direction = np.diag([-1.0 if f else 1.0 for f in flips])
    oblique = 0.0
    if rng.random() < options.oblique_probability:
        oblique = _u(rng, 5, 15)
        direction = _rotation(rng.normal(size=3), math.radians(oblique)) @ direction
    spacing = np.array([s_xy, s_xy, s_z])
    size = np.array([n_xy, n_xy, n_z])
    center_anat = np.array([offset_xy[0], offset_xy[1], 0.5 * (top + bottom)])
    anatomy_origin = np.array([_u(rng, -200, 200), _u(rng, -200, 200), _u(rng, -1500, 300)])
    origin = anatomy_origin + center_anat - direction @ (spacing * (size - 1) / 2)
    grid = _Grid(
        size_xyz=(int(size[0]), int(size[1]), int(size[2])),
        spacing_xyz=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        origin_xyz=(float(origin[0]), float(origin[1]), float(origin[2])),
        direction=tuple(float(v) for v in direction.ravel()),
        anatomy_origin_xyz=(float(anatomy_origin[0]), float(anatomy_origin[1]), float(anatomy_origin[2])),
    )
    return grid, fov, flips, oblique


def _gaussian_sum_sq(sigma: float) -> float:
    """Sum of squared weights of scipy's 1-D Gaussian kernel (truncate=3): noise variance factor."""
    if sigma <= 0:
        return 1.0
    delta = np.zeros(41)
    delta[20] = 1.0
    return float(np.sum(ndimage.gaussian_filter1d(delta, sigma, truncate=3.0) ** 2))


def _finish(
    canvas: _Canvas,
    rng: np.random.Generator,
    noise_sd: float,
    sigma_xyz: tuple[float, float, float],
    pad: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Noise, blur, int16 conversion and circular-FOV padding; returns (image, mask) arrays (z, y, x).

    Noise is added before the blur with its SD raised so that the blurred noise has SD `noise_sd`,
    which gives it the in-plane correlation of real CT noise.
    """
    hu = canvas.hu
    factor = math.sqrt(math.prod(_gaussian_sum_sq(s) for s in sigma_xyz))
    sd = np.float32(noise_sd / factor)
    slab = 16
    for k0 in range(0, hu.shape[0], slab):
        block = hu[k0 : k0 + slab]
        block += rng.standard_normal(block.shape, dtype=np.float32) * sd
    ndimage.gaussian_filter(hu, sigma=sigma_xyz[::-1], output=hu, truncate=3.0)
    image = np.empty(hu.shape, np.int16)
    for k0 in range(0, hu.shape[0], slab):
        block = hu[k0 : k0 + slab]
        np.clip(block, -3024, 3071, out=block)
        np.rint(block, out=block)
        image[k0 : k0 + slab] = block
    if pad is not None:
        ny, nx = hu.shape[1:]
        jj, ii = np.ogrid[:ny, :nx]
        outside = ((ii - (nx - 1) / 2) ** 2 + (jj - (ny - 1) / 2) ** 2) > (min(nx, ny) / 2) ** 2
        image[:, outside] = pad
    mask = canvas.mask
    mask[mask == _RESERVED] = _FREE
    if pad is not None:
        mask[:, outside] = _FREE
    return image, mask


def _case_rngs(seed: int) -> list[np.random.Generator]:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(4)]


def generate_case_with_info(
    seed: int, options: PhantomOptions = DEFAULT_OPTIONS
) -> tuple[sitk.Image, sitk.Image, PhantomInfo]:
    """Like `generate_case`, also returning what was sampled."""
    started = time.perf_counter()
    rng_anatomy, rng_grid, rng_hu, rng_noise = _case_rngs(seed)
    phase = int(rng_hu.choice(len(PHASES), p=_PHASE_PROBABILITIES))
    hu = _sample_hu(rng_hu, phase)
    oral_contrast = bool(rng_hu.random() < 0.3)
    anatomy = _AnatomyBuilder(rng_anatomy, hu, PHASES[phase], oral_contrast).build()
    grid, fov, flips, oblique = _sample_grid(rng_grid, options, anatomy)
    sampled = time.perf_counter()

    canvas = _Canvas(grid, h_mm=2.0 if options.size == "full" else 3.0)
    _paint_body(canvas, anatomy.body, hu)
    for part in anatomy.parts:
        canvas.paint(part)
    painted = time.perf_counter()

    noise_sd = float(rng_noise.uniform(10, 30))
    sigma_xy = float(rng_noise.uniform(0.4, 0.8))
    sigma = (sigma_xy, sigma_xy, float(rng_noise.uniform(0.3, 0.6)))  # voxels, (x, y, z)
    pad = int(rng_noise.choice([-2048, -3024])) if rng_noise.random() < 0.2 else None
    image_zyx, mask_zyx = _finish(canvas, rng_noise, noise_sd, sigma, pad)
    del canvas

    image = sitk.GetImageFromArray(image_zyx)  # numpy (z, y, x) -> SimpleITK (x, y, z)
    image.SetSpacing(grid.spacing_xyz)
    image.SetOrigin(grid.origin_xyz)
    image.SetDirection(grid.direction)
    mask = sitk.GetImageFromArray(mask_zyx)
    mask.CopyInformation(image)
    logger.debug(
        "phantom seed %d: %s, %s, size %s: sample %.2fs, paint %.2fs, finish %.2fs",
        seed,
        PHASES[phase],
        fov,
        grid.size_xyz,
        sampled - started,
        painted - sampled,
        time.perf_counter() - painted,
    )
    info = PhantomInfo(
        seed=int(seed),
        size=options.size,
        phase=PHASES[phase],
        fov=fov,
        noise_sd_hu=noise_sd,
        blur_sigma_vox_xyz=sigma,
        pad_value=pad,
        flipped_xyz=flips,
        oblique_deg=oblique,
        size_xyz=grid.size_xyz,
        spacing_xyz=grid.spacing_xyz,
        hu_means={k: round(v, 1) for k, v in hu.items() if not k.startswith("_")},
    )
    return image, mask, info


def generate_case(seed: int, options: PhantomOptions = DEFAULT_OPTIONS) -> tuple[sitk.Image, sitk.Image]:
    """One synthetic CT case: (image, mask) with exactly the same geometry.

    image: int16 HU; air about -1000, optionally -2048 or -3024 outside a circular field of view.
    mask: uint8 labels from flare_seg.labels (0 background, organs as listed there; both kidneys
        share one label). Deterministic for a given seed and options.
    """
    image, mask, _ = generate_case_with_info(seed, options)
    return image, mask


# --------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------


def case_seed(seed: int, index: int) -> int:
    """The seed of case `index` of a dataset with seed `seed`: 63 bits drawn from child `index` of
    numpy's SeedSequence(seed) (the same child that SeedSequence(seed).spawn() gives)."""
    child = np.random.SeedSequence(int(seed), spawn_key=(int(index),))
    return int(child.generate_state(1, np.uint64)[0]) >> 1


def case_name(seed: int, index: int) -> str:
    return f"phantom_{seed:04d}_{index:03d}"


def _write_atomic(image: sitk.Image, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.nii.gz")
    try:
        sitk.WriteImage(image, str(tmp), useCompression=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_case(out_dir: Path, name: str, seed: int, options: PhantomOptions) -> dict:
    image, mask, info = generate_case_with_info(seed, options)
    _write_atomic(image, out_dir / "TrainingImg" / f"{name}_0000.nii.gz")
    _write_atomic(mask, out_dir / "TrainingMask" / f"{name}.nii.gz")
    return dataclasses.asdict(info)


def _write_case_star(args: tuple[Path, str, int, PhantomOptions]) -> dict:
    return _write_case(*args)


def write_dataset(
    out_dir: Path,
    cases: int,
    seed: int,
    options: PhantomOptions = DEFAULT_OPTIONS,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Write `cases` phantoms in the FLARE21 layout and return their names.

    Layout: out_dir/TrainingImg/<name>_0000.nii.gz, out_dir/TrainingMask/<name>.nii.gz and
    out_dir/dataset.json. Case i is named `case_name(seed, i)` and generated from `case_seed(seed, i)`.
    Files are written atomically. workers > 1 uses a spawn-context process pool.
    progress(done, total) is called after each case.
    """
    if cases < 0:
        raise ValueError(f"cases must be >= 0, got {cases}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    out_dir = Path(out_dir)
    (out_dir / "TrainingImg").mkdir(parents=True, exist_ok=True)
    (out_dir / "TrainingMask").mkdir(parents=True, exist_ok=True)
    names = [case_name(seed, i) for i in range(cases)]
    jobs = [(out_dir, name, case_seed(seed, i), options) for i, name in enumerate(names)]
    infos: list[dict] = []
    if workers > 1 and cases > 1:
        with get_context("spawn").Pool(min(workers, cases)) as pool:
            for done, info in enumerate(pool.imap(_write_case_star, jobs), start=1):
                infos.append(info)
                if progress is not None:
                    progress(done, cases)
    else:
        for done, job in enumerate(jobs, start=1):
            infos.append(_write_case_star(job))
            if progress is not None:
                progress(done, cases)
    meta = {
        "generator": "flare-seg synthetic phantom",
        "seed": seed,
        "cases": names,
        "case_seeds": {name: job[2] for name, job in zip(names, jobs, strict=True)},
        "labels": {str(k): v for k, v in LABELS.items()},
        "options": dataclasses.asdict(options),
        "case_info": dict(zip(names, infos, strict=True)),
    }
    tmp = out_dir / f".dataset.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, out_dir / "dataset.json")
    logger.info("wrote %d phantom cases to %s", cases, out_dir)
    return names

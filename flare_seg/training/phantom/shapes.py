"""Shape primitives: implicit surfaces, local frames, smooth warps and tubes.

Every shape is a `ShapeFn`: it maps broadcastable anatomy coordinates (x, y, z), mm, float32, to an
approximate signed distance in mm (negative inside). Unless noted, shapes accept any broadcastable
arrays; tubes need the views of a regular isotropic grid (`Coarse.views`), which is how every shape
is evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from flare_seg.training.phantom.coarse import Coarse, ShapeFn, interp_axis

FAR = np.float32(1.0e4)  # "far outside" distance, mm


def smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth minimum (union) with blending width k mm."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def smax(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth maximum (intersection) with blending width k mm."""
    return -smin(-a, -b, k)


def ellipsoid(u: np.ndarray, v: np.ndarray, w: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """Approximate signed distance (mm) to an origin-centred ellipsoid with semi-axes a, b, c (mm)."""
    k0 = np.sqrt((u / a) ** 2 + (v / b) ** 2 + (w / c) ** 2)
    k1 = np.sqrt((u / (a * a)) ** 2 + (v / (b * b)) ** 2 + (w / (c * c)) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def unit(v: Sequence[float] | np.ndarray) -> np.ndarray:
    """v scaled to unit length."""
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def rotation(axis: Sequence[float] | np.ndarray, angle_rad: float) -> np.ndarray:
    """Rotation matrix about a unit axis (Rodrigues)."""
    x, y, z = unit(axis)
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    cc = 1.0 - c
    return np.array(
        [
            [c + x * x * cc, x * y * cc - z * s, x * z * cc + y * s],
            [y * x * cc + z * s, c + y * y * cc, y * z * cc - x * s],
            [z * x * cc - y * s, z * y * cc + x * s, c + z * z * cc],
        ]
    )


def orthonormal(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Rows (u, v, w): u along `first`, v = w x u, w along `second` made orthogonal to u."""
    u = unit(first)
    w = unit(second - np.dot(second, u) * u)
    return np.stack([u, np.cross(w, u), w])


@dataclass(frozen=True)
class Frame:
    """A local frame: centre (anatomy mm) and rows = unit local axes (u, v, w) in anatomy coordinates."""

    center: np.ndarray
    axes: np.ndarray

    def local(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Local coordinates (u, v, w), mm, of anatomy points (x, y, z), mm."""
        dx, dy, dz = x - self.center[0], y - self.center[1], z - self.center[2]
        u, v, w = (r[0] * dx + r[1] * dy + r[2] * dz for r in self.axes)
        return u, v, w


def plane_sin(g: np.ndarray, c: float, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """sin(g . (x, y, z) + c). On the broadcast views of a grid, sin(a(x, y) + b(z)) is expanded with
    the angle-sum identity so that no sine is taken at full size."""
    if x.shape[:2] == (1, 1) and y.shape[0] == y.shape[-1] == 1 and z.shape[1:] == (1, 1):
        a = g[0] * x + g[1] * y
        b = g[2] * z + c
        return np.sin(a) * np.cos(b) + np.cos(a) * np.sin(b)
    return np.sin(g[0] * x + g[1] * y + g[2] * z + c)


@dataclass(frozen=True)
class Warp:
    """Smooth displacement field: a sum of plane waves, d(p) = sum_i a_i sin(k_i . p + phase_i) (mm)."""

    k: np.ndarray  # (n, 3) rad/mm
    phase: np.ndarray  # (n,)
    amplitude: np.ndarray  # (n, 3) mm

    @staticmethod
    def random(rng: np.random.Generator, n: int, wavelength_mm: tuple[float, float], strength: float) -> Warp:
        """`strength` in (0, 1] scales the amplitude up to the largest that keeps the map invertible."""
        lam = rng.uniform(*wavelength_mm, n)
        k = np.stack([unit(rng.normal(size=3)) for _ in range(n)]) * (2 * np.pi / lam)[:, None]
        amp = lam / (2 * np.pi * n * 1.5) * strength * rng.uniform(0.5, 1.0, n)
        vec = np.stack([unit(rng.normal(size=3)) for _ in range(n)]) * amp[:, None]
        return Warp(k, rng.uniform(0, 2 * np.pi, n), vec)

    @property
    def max_mm(self) -> float:
        """Upper bound of the displacement length, mm."""
        return float(np.abs(self.amplitude).sum())

    def warped(
        self, frame: Frame, scale: float, x: np.ndarray, y: np.ndarray, z: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        """Template coordinates of anatomy points: frame.local(p) / scale plus this displacement,
        whose waves are functions of those same template coordinates."""
        out = [c / scale for c in frame.local(x, y, z)]
        for k, ph, a in zip(self.k, self.phase, self.amplitude, strict=True):
            g = frame.axes.T @ k / scale  # the wave vector in anatomy coordinates
            s = plane_sin(g, float(ph - g @ frame.center), x, y, z)
            out = [o + ai * s for o, ai in zip(out, a, strict=True)]
        return tuple(out)

    def __add__(self, other: Warp) -> Warp:
        return Warp(
            np.concatenate([self.k, other.k]),
            np.concatenate([self.phase, other.phase]),
            np.concatenate([self.amplitude, other.amplitude]),
        )


def catmull_rom(points: np.ndarray, per_segment: int = 24) -> np.ndarray:
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


class Tube:
    """Tube swept along smooth curves with elliptic cross-sections of varying radii.

    Radius r1 lies along the horizontal normal of the curve (perpendicular to the tangent and to z),
    r2 along the binormal. Distances use the nearest centreline sample, found with a distance
    transform on the evaluation grid, so calls must pass `Coarse.views`.
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
            dense = catmull_rom(ctrl, per)
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
            return np.full(shape, FAR, np.float32)
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


class VerticalTube:
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


def ellipsoid_fn(frame: Frame, semi: Sequence[float]) -> ShapeFn:
    """Shape of an ellipsoid with semi-axes `semi` (mm) along the axes of `frame`."""

    def fn(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return ellipsoid(*frame.local(x, y, z), *semi)

    return fn


class Sampled:
    """A shape function sampled once on a coarse grid and interpolated trilinearly afterwards
    (edge values outside the grid). Calls must pass the views of an anatomy-aligned regular grid."""

    def __init__(self, fn: ShapeFn, lo: np.ndarray, hi: np.ndarray, h: float) -> None:
        self.grid = Coarse.covering(lo, hi, h)
        self.values = self.grid.evaluate(fn)

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = self.values
        for axis, (query, own) in enumerate(
            zip((z, y, x), (self.grid.z, self.grid.y, self.grid.x), strict=True)
        ):
            pos = (query.ravel().astype(float) - float(own[0])) / self.grid.h
            out = interp_axis(out, pos, axis)
        return out


def sub_box_eval(
    fn: ShapeFn, views: tuple[np.ndarray, ...], lo: np.ndarray, hi: np.ndarray
) -> np.ndarray | np.float32:
    """fn on the part of a regular grid (given by its views) inside [lo, hi]; FAR elsewhere."""
    axes = [views[0].ravel(), views[1].ravel(), views[2].ravel()]
    sel = []
    for axis, low, high in zip(axes, lo, hi, strict=True):
        idx = np.nonzero((axis >= low) & (axis <= high))[0]
        if len(idx) == 0:
            return np.float32(FAR)
        sel.append(slice(idx[0], idx[-1] + 1))
    out = np.full((len(axes[2]), len(axes[1]), len(axes[0])), FAR, np.float32)
    sub = fn(axes[0][sel[0]][None, None, :], axes[1][sel[1]][None, :, None], axes[2][sel[2]][:, None, None])
    out[sel[2], sel[1], sel[0]] = sub
    return out


def around(center: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Anatomy box (lo, hi) of half-width `radius` mm around `center`."""
    return center - radius, center + radius

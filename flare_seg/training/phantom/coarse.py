"""Coarse isotropic grids aligned with the anatomy frame, on which shapes are evaluated, and the
linear interpolation used to bring their values onto finer grids.

A `ShapeFn` maps broadcastable anatomy coordinates (x, y, z), mm, float32, to an approximate signed
distance in mm (negative inside). `Coarse` holds its axes (x, y, z) and evaluates functions as
(z, y, x) arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

ShapeFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Coarse:
    """A coarse isotropic grid aligned with the anatomy frame: axes x, y, z (1-D float32, mm)."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    h: float

    @staticmethod
    def covering(lo: np.ndarray, hi: np.ndarray, h: float) -> Coarse:
        """Grid of spacing h (mm) snapped to multiples of h, covering [lo, hi] plus one cell."""
        first = np.floor(np.asarray(lo) / h) - 1
        last = np.ceil(np.asarray(hi) / h) + 1
        axes = [(np.arange(a, b + 1) * h).astype(np.float32) for a, b in zip(first, last, strict=True)]
        return Coarse(axes[0], axes[1], axes[2], h)

    @property
    def views(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable (x, y, z) views for evaluating functions on the (z, y, x) grid."""
        return self.x[None, None, :], self.y[None, :, None], self.z[:, None, None]

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """numpy shape (z, y, x) of values on this grid."""
        return len(self.z), len(self.y), len(self.x)

    @property
    def lo(self) -> np.ndarray:
        """First grid point (x, y, z), mm."""
        return np.array([self.x[0], self.y[0], self.z[0]], float)

    @property
    def hi(self) -> np.ndarray:
        """Last grid point (x, y, z), mm."""
        return np.array([self.x[-1], self.y[-1], self.z[-1]], float)

    def evaluate(self, fn: ShapeFn) -> np.ndarray:
        """fn on this grid as a float32 (z, y, x) array."""
        out = np.broadcast_to(fn(*self.views), self.shape_zyx)
        return np.ascontiguousarray(out, dtype=np.float32)


def interp_axis(values: np.ndarray, pos: np.ndarray, axis: int) -> np.ndarray:
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


def upsample(values: np.ndarray, f: int, n: int, axis: int) -> np.ndarray:
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

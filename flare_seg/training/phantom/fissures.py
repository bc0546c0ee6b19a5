"""The liver's fat-filled fissures and ligaments (``PhantomOptions.liver_fissures``).

Real livers are not one smooth solid: fat runs into them along the falciform ligament and the
ligamentum teres (the umbilical fissure, which divides the left lateral segments from the medial
segment and opens at the anterior-inferior margin), and along the ligamentum venosum (between the
caudate lobe and the left lobe, behind). On CT these are bands of fat 3-15 mm wide inside the liver's
outline, and the reference masks leave them out; the left lateral segment beyond the umbilical
fissure is liver all the same. Without them, a network learns that liver-like tissue past a fat band
is not liver.

Each fissure is a thin swept tube of visceral fat, force-painted before every other part (vessels,
the gallbladder and bones paint over it) and clipped to within ``_CLIP_MM`` of the liver's surface, so
it never takes space from the other organs. The liver then claims what is left around it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from flare_seg.training.phantom.canvas import Part, const
from flare_seg.training.phantom.coarse import Coarse, ShapeFn
from flare_seg.training.phantom.params import option_rng
from flare_seg.training.phantom.shapes import Sampled, Tube, unit

if TYPE_CHECKING:
    from flare_seg.training.phantom.anatomy import Anatomy, AnatomyBuilder

UMBILICAL_PROBABILITY = 0.9  # of cases with the option: a fat-filled umbilical fissure
TERES_PROBABILITY = 0.7  # of those: the ligamentum teres as a soft-tissue cord inside it
FALCIFORM_PROBABILITY = 0.6  # a fat groove of the falciform ligament up the anterior surface
VENOSUM_PROBABILITY = 0.6  # a fat-filled fissure for the ligamentum venosum, behind
_CLIP_MM = 2.0  # fissure fat lies inside the liver or within this distance of its surface
_GRID_MM = 3.0  # the liver is sampled on a grid this coarse to place the fissures


def liver_fissures_rng(seed: int) -> np.random.Generator:
    """The fifteenth random stream of a case seed (the fissures of ``liver_fissures``)."""
    return option_rng(seed, 14)


def add_liver_fissures(
    rng: np.random.Generator, b: AnatomyBuilder, anatomy: Anatomy
) -> tuple[Anatomy, tuple[str, ...]]:
    """``anatomy`` with the liver's fissures drawn from ``rng``, and their names (in painting order:
    "umbilical", "teres", "falciform", "venosum"; empty when none was drawn)."""
    fat = b.hu["visceral_fat"]
    liver_fn, lo, hi = b.liver_shape
    clip = Sampled(liver_fn, lo, hi, _GRID_MM)  # also where the fissures are placed
    coarse, inside = clip.grid, clip.values < 0  # inside: (z, y, x)
    parts: list[Part] = []
    names: list[str] = []
    if not inside.any():
        return anatomy, ()
    draws = rng.random(4)
    plane = _umbilical_plane(rng, coarse, inside)
    if plane is not None and draws[0] < UMBILICAL_PROBABILITY:
        ix, start = plane
        end_target = np.array([coarse.x[ix], b.liver_hilum[1], b.liver_hilum[2] + rng.uniform(0, 15)])
        towards = unit(end_target - start)
        end = start + rng.uniform(0.4, 0.75) * (end_target - start)
        middle = 0.5 * (start + end) + rng.normal(0, 3, 3) * np.array([0.5, 1.0, 1.0])
        curve = np.stack([start - 8.0 * towards, start, middle, end])
        across = rng.uniform(3.0, 10.0)  # half-width across the sagittal plane (x), at the mouth
        along = rng.uniform(6.0, 14.0)  # half-height in the plane, across the fissure's course
        fissure = Tube(
            [curve],
            [np.array([across, across, 0.8 * across, 0.4 * across])],
            [np.array([along, along, 0.7 * along, 0.3 * along])],
        )
        parts.append(_clipped_part("liver_fissure_umbilical", fissure, clip, fat))
        names.append("umbilical")
        if draws[1] < TERES_PROBABILITY:
            cord_end = start + rng.uniform(0.4, 0.8) * (end - start)
            cord = Tube(
                [np.stack([start - 12.0 * towards, start, cord_end])], [np.full(3, rng.uniform(1.5, 2.5))]
            )
            parts.append(_clipped_part("ligamentum_teres", cord, clip, b.hu["muscle"]))
            names.append("teres")
        if draws[2] < FALCIFORM_PROBABILITY:
            groove = _falciform_curve(rng, coarse, inside, ix, start)
            if groove is not None:
                tube = Tube([groove], [np.full(len(groove), rng.uniform(1.5, 3.0))])
                parts.append(_clipped_part("falciform_ligament", tube, clip, fat))
                names.append("falciform")
    if draws[3] < VENOSUM_PROBABILITY:
        p0 = b.liver_hilum + np.array([rng.uniform(10, 25), rng.uniform(0, 10), rng.uniform(0, 10)])
        p1 = p0 + np.array([rng.uniform(15, 35), rng.uniform(5, 20), rng.uniform(30, 55)])
        r = rng.uniform(1.5, 3.0)
        venosum = Tube(
            [np.stack([p0, 0.5 * (p0 + p1) + rng.normal(0, 3, 3), p1])], [np.array([r, r, 0.6 * r])]
        )
        parts.append(_clipped_part("liver_fissure_venosum", venosum, clip, fat))
        names.append("venosum")
    if not parts:
        return anatomy, ()
    # first of all parts: the vessels, gallbladder and bones force-painted later take precedence
    return dataclasses.replace(anatomy, parts=[*parts, *anatomy.parts]), tuple(names)


def _umbilical_plane(
    rng: np.random.Generator, coarse: Coarse, inside: np.ndarray
) -> tuple[int, np.ndarray] | None:
    """The sagittal plane of the umbilical fissure (a grid column index ix) and the fissure's mouth:
    the liver's most anterior-inferior point in that plane. The plane lies 5 mm right to 25 mm left
    of the midline, and at least 30 mm inside the liver's left end (None: no such plane)."""
    columns = np.nonzero(inside.any(axis=(0, 1)))[0]
    left_end = float(coarse.x[columns[-1]])
    x_plane = min(rng.uniform(-5.0, 25.0), left_end - 30.0)
    ix = int(np.argmin(np.abs(coarse.x - x_plane)))
    zi, yi = np.nonzero(inside[:, :, ix])
    if len(zi) < 20:  # under 2 cm^2 of liver in that plane
        return None
    y, z = coarse.y[yi], coarse.z[zi]
    k = int(np.argmin(y + z))  # -y is anterior, -z inferior
    return ix, np.array([coarse.x[ix], y[k], z[k]], float)


def _falciform_curve(
    rng: np.random.Generator, coarse: Coarse, inside: np.ndarray, ix: int, start: np.ndarray
) -> np.ndarray | None:
    """Points 1-2 mm under the liver's anterior surface in the umbilical fissure's plane, every 12 mm
    from the fissure's mouth up to 40-100 mm above it (None: under two points)."""
    top = start[2] + rng.uniform(40.0, 100.0)
    points = [start]
    for z in np.arange(start[2] + 12.0, top, 12.0):
        iz = int(np.argmin(np.abs(coarse.z - z)))
        yi = np.nonzero(inside[iz, :, ix])[0]
        if len(yi) == 0:
            break
        points.append(
            np.array([start[0], float(coarse.y[yi[0]]) + rng.uniform(1.0, 2.0), float(coarse.z[iz])])
        )
    return np.stack(points) if len(points) >= 3 else None


def _clipped_part(name: str, tube: Tube, clip: ShapeFn, hu: float) -> Part:
    """A force-painted part of one HU: ``tube`` where it lies within ``_CLIP_MM`` of the liver."""

    def shape(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return np.maximum(tube(x, y, z), clip(x, y, z) - _CLIP_MM)

    return Part(name, shape, tube.lo, tube.hi, const(hu), force=True)

"""The gallbladder in its fossa on the liver's underside (``PhantomOptions.gallbladder_fossa``).

A real gallbladder is not a fluid blob beside the liver. Its body lies in the gallbladder fossa on
the liver's visceral surface, between the right lobe and the quadrate segment, so that liver wraps a
quarter to two thirds of it. Its neck points up and back towards the porta hepatis, its fundus
forward and down, often past the liver's lower margin. Its wall is 1-3 mm thick and enhances with
contrast; bile is 0-25 HU, and sludge or stones settle in its dependent (posterior) part. The
reference masks leave it out of the liver.

Liver cysts are fluid against liver too, and they are labelled liver. What tells a network that the
gallbladder is not liver is its place, its pear shape and its wall, so the phantoms must show them:
without this option the gallbladder mostly lies beside the liver, and a network learns that fluid
touching the liver is a cyst of it.

The option replaces the generator's gallbladder (same part, same painting order, so it is carved out
of the liver the same way) and keeps its absence in the cases without one (a cholecystectomy). Its
draws come from their own random stream of the case seed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from flare_seg.training.phantom.canvas import PaintContext, Part
from flare_seg.training.phantom.coarse import Coarse
from flare_seg.training.phantom.params import RESERVED, option_rng
from flare_seg.training.phantom.shapes import (
    Frame,
    Sampled,
    ellipsoid,
    orthonormal,
    smin,
    sub_box_eval,
    unit,
)

if TYPE_CHECKING:
    from flare_seg.training.phantom.anatomy import Anatomy, AnatomyBuilder

WALL_PROBABILITY = 0.7  # a wall that shows as a rim brighter than bile
SLUDGE_PROBABILITY = 0.15  # denser bile layered in the dependent part
STONES_PROBABILITY = 0.12  # gallstones, from barely visible to calcified
CONTRACTED_PROBABILITY = 0.2  # a contracted (post-prandial) gallbladder
EMBED_RANGE = (0.25, 0.65)  # share of the gallbladder's volume inside the liver's outline
_GRID_MM = 3.0  # the liver and the gallbladder are sampled on a grid this coarse to place it
_HEIGHTS = 13  # candidate heights tried along the vertical to reach the embedding share
_PLACES = 8  # candidate places (plane and column) tried on the underside


@dataclass(frozen=True)
class GallbladderPlan:
    """Where and what the gallbladder is: centre (anatomy mm), rows of ``axes`` = (long axis towards
    the fundus, then two across), semi-axes of the body and the neck, the share inside the liver,
    the bile and wall HU, wall thickness (0: none), sludge HU (None: none) and stones as
    (centre, radius mm, HU)."""

    center: np.ndarray
    axes: np.ndarray
    semi: tuple[float, float, float]
    neck_semi: tuple[float, float, float]
    embedded: float
    bile_hu: float
    wall_hu: float
    wall_mm: float
    sludge_hu: float | None
    stones: tuple[tuple[np.ndarray, float, float], ...]

    def summary(self) -> dict[str, float | int | bool]:
        """What the dataset's case_info records."""
        return {
            "volume_ml": round(4.0 / 3.0 * np.pi * float(np.prod(self.semi)) / 1000.0, 1),
            "embedded": round(self.embedded, 2),
            "wall": self.wall_mm > 0,
            "sludge": self.sludge_hu is not None,
            "stones": len(self.stones),
        }


def gallbladder_rng(seed: int) -> np.random.Generator:
    """The sixteenth random stream of a case seed (the gallbladder of ``gallbladder_fossa``)."""
    return option_rng(seed, 15)


def add_gallbladder_in_fossa(
    rng: np.random.Generator, b: AnatomyBuilder, anatomy: Anatomy
) -> tuple[Anatomy, GallbladderPlan | None]:
    """``anatomy`` with its gallbladder moved into a fossa of the liver and drawn with a wall, sludge
    and stones from ``rng``, and the plan (None: the case has no gallbladder, or the liver has no
    underside to hold one, and the anatomy is returned unchanged)."""
    index = next((i for i, p in enumerate(anatomy.parts) if p.name == "gallbladder"), None)
    if index is None:
        return anatomy, None
    plan = _plan(rng, b, anatomy)
    if plan is None:
        return anatomy, None
    parts = list(anatomy.parts)
    parts[index] = _part(plan)
    return dataclasses.replace(anatomy, parts=parts), plan


def _reach(semi, neck_semi) -> float:
    """Half the side of a box around the body's centre that holds the body and the neck."""
    return semi[0] + 2.0 * neck_semi[0] + 6.0


def _shape(center: np.ndarray, axes: np.ndarray, semi, neck_semi):
    """Pear: the body's ellipsoid smoothly joined to a smaller neck ellipsoid towards the porta."""
    neck_center = center - axes[0] * (semi[0] + 0.3 * neck_semi[0])
    body_frame, neck_frame = Frame(center, axes), Frame(neck_center, axes)

    def fn(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        body = ellipsoid(*body_frame.local(x, y, z), *semi)
        neck = ellipsoid(*neck_frame.local(x, y, z), *neck_semi)
        return smin(body, neck, 4.0)

    return fn


def _plan(rng: np.random.Generator, b: AnatomyBuilder, anatomy: Anatomy) -> GallbladderPlan | None:
    liver_fn, lo, hi = b.liver_shape
    clip = Sampled(liver_fn, lo, hi, _GRID_MM)
    grid, inside = clip.grid, clip.values < 0  # inside: (z, y, x)
    if not inside.any():
        return None
    hilum = b.liver_hilum
    # long axis from the neck (up, back, towards the porta) to the fundus (forward and down)
    long_axis = unit([rng.uniform(-0.3, 0.2), -rng.uniform(0.4, 1.0), -rng.uniform(0.4, 1.0)])
    axes = orthonormal(long_axis, np.array([0.0, 0.0, 1.0]))
    if rng.random() < CONTRACTED_PROBABILITY:
        semi = (rng.uniform(15.0, 25.0), rng.uniform(6.0, 10.0), rng.uniform(6.0, 10.0))
    else:
        semi = (rng.uniform(25.0, 50.0), rng.uniform(11.0, 20.0), rng.uniform(11.0, 20.0))
    neck_semi = (0.45 * semi[0], 0.55 * semi[1], 0.55 * semi[2])
    target = rng.uniform(*EMBED_RANGE)
    # where the other organs are, on one coarse grid under and around the liver
    region = Coarse.covering(np.asarray(lo) - [0.0, 0.0, 80.0], np.asarray(hi), _GRID_MM)
    liver = region.evaluate(clip) < 0
    occupied = np.zeros(region.shape_zyx, bool)
    for p in anatomy.parts:
        if p.code != RESERVED and p.name != "liver":
            occupied |= sub_box_eval(p.shape, region.views, np.asarray(p.lo), np.asarray(p.hi)) < 0
    # candidate places: the fossa's plane, the column in front of the hilum and the height; the one
    # that keeps clear of the other organs and embeds closest to the target share, the body shrunk
    # if none keeps clear
    best: tuple[float, np.ndarray] | None = None
    for shrink in (1.0, 0.8, 0.65):
        size = (semi[0] * shrink, semi[1] * shrink, semi[2] * shrink)
        neck = (neck_semi[0] * shrink, neck_semi[1] * shrink, neck_semi[2] * shrink)
        reach = _reach(size, neck)
        for _ in range(_PLACES):
            surface = _surface(rng, grid, inside, hilum)
            if surface is None:
                continue
            for dz in np.linspace(-1.0, 1.5, _HEIGHTS) * size[1]:
                center = surface + np.array([0.0, 0.0, dz])
                shape = _shape(center, axes, size, neck)
                gb = sub_box_eval(shape, region.views, center - reach, center + reach) < 0
                n = int(gb.sum())
                if n == 0 or (gb & occupied).any():
                    continue
                share = float((gb & liver).sum() / n)
                if best is None or abs(share - target) < abs(best[0] - target):
                    best = (share, center)
        if best is not None:
            semi, neck_semi = size, neck
            break
    if best is None:
        return None
    share, center = best
    water = b.hu["water"]
    bile = float(water + rng.uniform(-10.0, 8.0))
    wall_mm = float(rng.uniform(1.5, 3.0)) if rng.random() < WALL_PROBABILITY else 0.0
    wall_hu = float(b.hu["bowel_wall"] + rng.uniform(-10.0, 10.0))
    sludge = float(bile + rng.uniform(15.0, 35.0)) if rng.random() < SLUDGE_PROBABILITY else None
    stones: list[tuple[np.ndarray, float, float]] = []
    if rng.random() < STONES_PROBABILITY:
        hu = float(rng.choice([rng.uniform(30.0, 80.0), rng.uniform(150.0, 700.0)]))
        for _ in range(int(rng.integers(1, 5))):
            r = float(rng.uniform(3.0, min(8.0, 0.7 * semi[1])))
            # dependent: behind (+y) the body's centre, inside its outline
            offset = axes[0] * rng.uniform(-0.5, 0.5) * semi[0] + np.array([0.0, 0.5 * semi[1], 0.0])
            stones.append((center + offset - np.array([0.0, r, 0.0]), r, hu))
    return GallbladderPlan(
        center, axes, semi, neck_semi, share, bile, wall_hu, wall_mm, sludge, tuple(stones)
    )


def _surface(
    rng: np.random.Generator, grid: Coarse, inside: np.ndarray, hilum: np.ndarray
) -> np.ndarray | None:
    """A point of the fossa on the liver's underside: in a sagittal plane at or up to 30 mm to the
    right (-x) of the hilum, 10-55 mm in front of it (the neck reaches back to the porta), the lowest
    liver point of that column if it lies no higher than 25 mm above the hilum (else None: the
    column is the liver's thin front edge, not its underside)."""
    ix = int(np.argmin(np.abs(grid.x - (hilum[0] - rng.uniform(0.0, 30.0)))))
    iy = int(np.argmin(np.abs(grid.y - (hilum[1] - rng.uniform(10.0, 55.0)))))
    zi = np.nonzero(inside[:, iy, ix])[0]
    if len(zi) == 0 or grid.z[zi.min()] > hilum[2] + 25.0:
        return None
    return np.array([grid.x[ix], grid.y[iy], float(grid.z[zi.min()])], float)


def _part(plan: GallbladderPlan) -> Part:
    """The force-painted gallbladder: wall, bile, a sludge layer and stones."""
    shape = _shape(plan.center, plan.axes, plan.semi, plan.neck_semi)
    reach = _reach(plan.semi, plan.neck_semi)

    def paint(ctx: PaintContext) -> np.ndarray:
        out = np.full(ctx.sdf.shape, np.float32(plan.bile_hu), np.float32)
        if plan.sludge_hu is not None or plan.stones:
            x, y, z = ctx.coords()
            if plan.sludge_hu is not None:  # below a level plane behind the centre (supine: +y down)
                level = np.broadcast_to(y > plan.center[1] + 0.2 * plan.semi[1], out.shape)
                np.copyto(out, np.float32(plan.sludge_hu), where=level)
            for center, r, hu in plan.stones:
                d2 = (x - center[0]) ** 2 + (y - center[1]) ** 2 + (z - center[2]) ** 2
                np.copyto(out, np.float32(hu), where=np.broadcast_to(d2 < r * r, out.shape))
        if plan.wall_mm > 0:
            np.copyto(out, np.float32(plan.wall_hu), where=ctx.sdf > -plan.wall_mm)
        return out

    return Part(
        "gallbladder", shape, plan.center - reach, plan.center + reach, paint, force=True, normalize=True
    )

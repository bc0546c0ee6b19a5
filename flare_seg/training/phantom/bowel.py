"""The gastrointestinal tract: stomach, duodenum, colon and small-bowel loops, as tubes with a wall
and a content (food, fluid, oral contrast, gas, stool, or collapsed). Bowel is a filler: it only
takes voxels that no organ or other structure claimed.

With ``PhantomOptions.collapsed_stomach`` the stomach is emptied in half of the cases besides the
textbook 25% (``StomachPlan``, drawn from a twelfth random stream of the case seed), and every empty
stomach is painted as a thick wall of rugal folds whose mucosa enhances with contrast, with fluid
or gas in the clefts between them. An empty stomach lies between the left liver lobe and the spleen
and is as bright as the liver in the portal-venous phase; its folds, not its HU, tell it from the
liver.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from flare_seg.training.phantom.appearance import PHASES, Waves
from flare_seg.training.phantom.canvas import HuFn, PaintContext, Part
from flare_seg.training.phantom.coarse import Coarse
from flare_seg.training.phantom.params import PANCREAS, option_rng
from flare_seg.training.phantom.shapes import Sampled, Tube, unit

if TYPE_CHECKING:
    from flare_seg.training.phantom.anatomy import Anatomy, AnatomyBuilder


COLLAPSED_STOMACH_PROBABILITY = 0.5  # of cases with the collapsed_stomach option
# How much brighter (HU) than the rest of the wall the gastric mucosa is, per phase (PHASES order).
MUCOSA_ENHANCEMENT_HU = ((0, 10), (30, 80), (20, 60), (10, 30))


@dataclass(frozen=True)
class StomachPlan:
    """An empty stomach (``collapsed``) and how its folds look: the fold pattern (a smooth field of
    SD 1 whose crests are mucosa), the mucosa's and the submucosa's HU relative to the wall's, and
    what fills the clefts between folds ("water" or "gas")."""

    collapsed: bool
    folds: Waves
    mucosa_hu: float
    submucosa_hu: float
    cleft: str


def stomach_rng(seed: int) -> np.random.Generator:
    """The twelfth random stream of a case seed (the stomach of ``collapsed_stomach``)."""
    return option_rng(seed, 11)


def sample_stomach_plan(rng: np.random.Generator, phase: str) -> StomachPlan:
    """Whether the stomach is empty (``COLLAPSED_STOMACH_PROBABILITY``) and its folds: 8-16 mm
    apart, the mucosa brighter than the wall by the phase's ``MUCOSA_ENHANCEMENT_HU``, the
    submucosa 10-40 HU darker."""
    collapsed = bool(rng.random() < COLLAPSED_STOMACH_PROBABILITY)
    folds = Waves.random(rng, 6, (8, 16), 1.0)
    mucosa = float(rng.uniform(*MUCOSA_ENHANCEMENT_HU[PHASES.index(phase)]))
    submucosa = -float(rng.uniform(10, 40))
    cleft = "gas" if rng.random() < 0.3 else "water"
    return StomachPlan(collapsed, folds, mucosa, submucosa, cleft)


def folds_hu(hu: dict[str, float], plan: StomachPlan) -> HuFn:
    """An empty stomach: mucosa on the folds' crests, submucosa between them, and the deepest clefts
    (away from the serosa) holding fluid or gas."""

    def fn(ctx: PaintContext) -> np.ndarray:
        wall = np.float32(hu["bowel_wall"])
        pattern = ctx.field(plan.folds)
        out = np.where(pattern > 0.0, wall + np.float32(plan.mucosa_hu), wall + np.float32(plan.submucosa_hu))
        np.copyto(out, np.float32(hu[plan.cleft]), where=(pattern < -1.0) & (ctx.sdf < -3.0))
        return out.astype(np.float32)

    return fn


def bowel_hu(
    hu: dict[str, float], content: str, wall: float, gas_below_y: float | None, mottle: Waves
) -> HuFn:
    """Wall HU within `wall` mm of the surface; content inside; gas in front of an air-fluid level
    (anatomy y, mm)."""

    def fn(ctx: PaintContext) -> np.ndarray:
        out = np.full(ctx.sdf.shape, hu["bowel_wall"], np.float32)
        if content == "collapsed":
            return out
        inner = ctx.sdf < -wall
        if content == "stool":
            stool = np.full(ctx.sdf.shape, hu["stool"], np.float32)
            np.copyto(stool, np.float32(hu["gas"]), where=ctx.field(mottle) > 0.6)
            np.copyto(out, stool, where=inner)
        else:
            tissue = {"fluid": "water", "contrast": "oral_contrast", "gas": "gas", "food": "food"}[content]
            np.copyto(out, np.float32(hu[tissue]), where=inner)
        if gas_below_y is not None:  # supine patient: gas rises to the front (smaller y)
            _, y, _ = ctx.coords()
            np.copyto(out, np.float32(hu["gas"]), where=inner & (y < gas_below_y))
        return out

    return fn


def add_bowel(
    b: AnatomyBuilder,
    name: str,
    curve: np.ndarray,
    radii: np.ndarray,
    content: str,
    gas_level: bool,
    folds: StomachPlan | None = None,
) -> None:
    """One bowel segment along `curve` ((m, 3) control points, mm) with radii (m,) mm; with
    `gas_level`, gas fills the front of a fluid or food content; with `folds`, it is painted as an
    empty stomach's folds instead (the same draws are made either way)."""
    tube = Tube([curve], [radii])
    wall = b.u(2, 4)
    level = None
    if gas_level and content not in ("collapsed", "gas"):
        front = float(np.min(curve[:, 1] - radii))
        level = front + b.u(0.1, 0.7) * float(np.mean(radii)) * 2
    mottle = Waves.random(b.rng, 8, (8, 20), 1.0)
    paint = bowel_hu(b.hu, content, wall, level, mottle) if folds is None else folds_hu(b.hu, folds)
    b.fillers.append(Part(name, tube, tube.lo, tube.hi, paint, h_mm=3.0))


def add_stomach(b: AnatomyBuilder) -> None:
    """Fundus under the left dome, body, antrum and pylorus; sets `b.pylorus` and
    `b.stomach_collapsed`. With `b.stomach` (the collapsed_stomach option) an empty stomach, the
    textbook one's 25% or the plan's, is painted as folds."""
    u, contrast = b.u, 1.0 if b.oral_contrast else 0.0
    top = float(b.body.diaphragm_z(np.float32(50.0), np.float32(20.0)))
    fundus = np.array([u(40, 60), u(5, 30), top - u(25, 35)])
    body = np.array([u(40, 60), -u(20, 40), fundus[2] - u(40, 60)])
    antrum = np.array([u(0, 20), -u(35, 55), body[2] - u(10, 25)])
    pylorus = b.pylorus = np.array([-u(15, 30), -u(25, 40), antrum[2] + u(0, 10)])
    collapsed = b.rng.random() < 0.25
    full_radii = np.array([u(30, 42), u(25, 35), u(15, 22), u(10, 13)])
    content = (
        "collapsed" if collapsed else b.choice(["food", "fluid", "contrast"], [0.5, 0.5, 0.6 * contrast])
    )
    folds = None
    if b.stomach is not None and (collapsed or b.stomach.collapsed):
        collapsed, folds = True, b.stomach
    b.stomach_collapsed = collapsed
    radii = full_radii * (0.6 if collapsed else 1.0)
    add_bowel(b, "stomach", np.stack([fundus, body, antrum, pylorus]), radii, content, True, folds)


def add_duodenum(b: AnatomyBuilder) -> None:
    """A C around the pancreas head from the pylorus, then across in front of the aorta."""
    u, contrast = b.u, 1.0 if b.oral_contrast else 0.0
    pylorus, head, z_p = b.pylorus, b.pancreas_head, b.z_pancreas
    x_d = head[0] - b.pancreas_head_semi[0] - b.pancreas_halo - u(14, 20)
    y_d3 = b.aorta_y_at(z_p - 50) - b.r_aorta - u(12, 16)
    curve = np.stack(
        [
            pylorus,
            np.array([x_d + 10, pylorus[1] + 15, pylorus[2] - 5]),
            np.array([x_d, head[1], head[2] + 5]),
            np.array([x_d, head[1] + 5, head[2] - 35]),
            np.array([0.0, y_d3, head[2] - u(50, 60)]),
            np.array([u(25, 35), y_d3 - 5, z_p - 30]),
            np.array([u(40, 50), b.pancreas_neck[1] + 5, z_p - 20]),
        ]
    )
    content = b.choice(["collapsed", "fluid", "gas", "contrast"], [0.4, 0.35, 0.1, 0.3 * contrast])
    add_bowel(b, "duodenum", curve, np.full(len(curve), u(10, 13)), content, False)


def add_colon(b: AnatomyBuilder) -> None:
    """Ascending, transverse and descending colon (with sigmoid and rectum) around the cavity."""
    u, a, crest, kidney_z = b.u, b.cav_a, b.crest_z, b.left_kidney_z
    liver_bottom = b.liver_center[2] - 80 * b.liver_scale
    cecum = np.array([-a * u(0.55, 0.7), -u(20, 50), crest - u(20, 50)])
    hepatic = np.array([-a * u(0.55, 0.7), -u(10, 40), max(liver_bottom - 10, kidney_z - 60)])
    splenic = np.array([a * u(0.6, 0.75), u(-20, 10), b.spleen_center[2] - u(50, 70)])
    ascending = np.stack([cecum, np.array([-a * u(0.7, 0.8), u(0, 30), kidney_z - 70]), hepatic])
    transverse = np.stack(
        [hepatic, np.array([0.0, -b.cav_ant * u(0.55, 0.75), b.z_pancreas - u(50, 110)]), splenic]
    )
    descending = np.stack(
        [
            splenic,
            np.array([a * u(0.7, 0.8), u(10, 35), kidney_z - 60]),
            np.array([a * u(0.65, 0.75), u(0, 30), crest - 30]),
            np.array([u(10, 40), -u(10, 40), crest - 90]),  # sigmoid
            np.array([0.0, b.spine.y_l1 + 20, crest - 150]),  # rectum
        ]
    )
    for name, curve, r in (
        ("colon_ascending", ascending, (22, 30)),
        ("colon_transverse", transverse, (18, 26)),
        ("colon_descending", descending, (15, 22)),
    ):
        content = b.choice(["stool", "gas", "fluid", "collapsed"], [0.55, 0.3, 0.05, 0.1])
        add_bowel(b, name, curve, b.rng.uniform(*r, len(curve)), content, True)


def add_small_bowel(b: AnatomyBuilder) -> None:
    """Loops as smooth random walks: several in the mid and lower abdomen, one or two jejunal loops
    near the pancreas tail."""
    rng, a, ant = b.rng, b.cav_a, b.cav_ant
    lower = (
        np.array([-0.6 * a, -0.85 * ant, b.crest_z - 110]),
        np.array([0.6 * a, 10.0, b.z_pancreas - 40]),
    )
    upper = (
        np.array([0.2 * a, -0.7 * ant, b.left_kidney_z - 70]),
        np.array([0.7 * a, 10.0, b.z_pancreas - 5]),
    )
    regions = [lower] * int(rng.integers(4, 8)) + [upper] * int(rng.integers(1, 3))
    contrast = 0.3 if b.oral_contrast else 0.0
    for i, (lo, hi) in enumerate(regions):
        p = rng.uniform(lo, hi)
        d = unit(rng.normal(size=3))
        points = [p]
        for _ in range(int(rng.integers(5, 9))):
            d = unit(d + 0.9 * rng.normal(size=3))
            p = np.clip(p + d * b.u(28, 42), lo, hi)
            points.append(p)
        curve = np.stack(points)
        curve = curve[np.concatenate([[True], np.linalg.norm(np.diff(curve, axis=0), axis=1) > 5.0])]
        content = b.choice(["fluid", "collapsed", "contrast", "gas"], [0.45, 0.3, contrast, 0.1])
        radius = b.u(9, 15)
        if len(curve) >= 2:
            add_bowel(b, f"small_bowel_{i}", curve, np.full(len(curve), radius), content, False)


STOMACH_GAP_MM = (3.0, 8.0)  # fat (the lesser sac) between the stomach's back wall and the pancreas


def stomach_in_front_rng(seed: int) -> np.random.Generator:
    """The twenty-second random stream of a case seed (the fat gap of ``stomach_in_front``)."""
    return option_rng(seed, 21)


def keep_stomach_in_front(rng: np.random.Generator, anatomy: Anatomy) -> Anatomy:
    """``anatomy`` with its stomach kept in front of the pancreas, as the lesser sac keeps it.

    The stomach is a filler: drawn as a tube, it takes what the organs left, and its tube passes
    through the pancreas' body and tail in every phantom (a median 44% of the gland inside it, 40
    seeds), so the gland lay inside a ring of stomach wall and content, which no real pancreas
    does. Here the stomach gives up the pancreas dilated by a fat gap (``STOMACH_GAP_MM``) and
    everything behind it (LPS +y) in the same column, so that its back wall lies on the gland with
    fat between them. Nothing else changes."""
    parts = list(anatomy.parts)
    index = next((i for i, p in enumerate(parts) if p.name == "stomach"), None)
    pancreas = next((p for p in parts if p.code == PANCREAS), None)
    if index is None or pancreas is None:
        return anatomy
    stomach = parts[index]
    gap = float(rng.uniform(*STOMACH_GAP_MM))
    h = 2.0
    grid = Coarse.covering(stomach.lo, stomach.hi, h)
    inside = grid.evaluate(pancreas.shape) < 0
    if not inside.any():
        return anatomy
    near = ndimage.distance_transform_edt(~inside, sampling=h) <= gap
    shadow = np.logical_or.accumulate(near, axis=1)  # (z, y, x): y grows towards the back
    outside = ndimage.distance_transform_edt(~shadow, sampling=h)
    signed = (outside - ndimage.distance_transform_edt(shadow, sampling=h)).astype(np.float32)
    behind = Sampled(lambda x, y, z: signed, stomach.lo, stomach.hi, h)  # on the same grid
    tube = stomach.shape

    def in_front(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return np.maximum(tube(x, y, z), -behind(x, y, z))

    parts[index] = dataclasses.replace(stomach, shape=in_front)
    return dataclasses.replace(anatomy, parts=parts)

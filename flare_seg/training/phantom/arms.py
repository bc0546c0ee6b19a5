"""Arms down beside the trunk (``PhantomOptions.arms``): in scans of trauma, elderly or ICU
patients the arms lie along the body instead of above the head, so skin, fat, muscle and a humerus
appear left and right of the abdomen, a look-alike of spleen and liver muscle-density tissue a
network must not label.

Each arm is a vertical cylinder (tapering to the forearm) of skin, fat, muscle and a cortical
humerus with fatty marrow, from above the field of view to the hips, kept a small gap outside the
trunk's outline. Drawn from an eighth random stream of the case seed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np

from flare_seg.training.phantom.body import THETA, Body
from flare_seg.training.phantom.canvas import HuFn, PaintContext, Part
from flare_seg.training.phantom.coarse import ShapeFn
from flare_seg.training.phantom.params import option_rng

if TYPE_CHECKING:
    from flare_seg.training.phantom.anatomy import Anatomy, AnatomyBuilder

ARMS_DOWN_PROBABILITY = 0.4  # of cases with the arms option
# The field of view grows to hold the arms up to a 50 cm display field (512 pixels of 1 mm, less the
# 15 mm margin the grid adds); arms beyond it are cut at the edge, as scanners cut them.
_REACH_MAX_MM = 241.0


def arms_rng(seed: int) -> np.random.Generator:
    """The eighth random stream of a case seed."""
    return option_rng(seed, 7)


def add_arms(rng: np.random.Generator, b: AnatomyBuilder, anatomy: Anatomy) -> Anatomy:
    """``anatomy`` with both arms down in ``ARMS_DOWN_PROBABILITY`` of cases (else unchanged), and
    the in-plane reach the field of view must cover."""
    if rng.random() >= ARMS_DOWN_PROBABILITY:
        return anatomy
    body, hu = anatomy.body, b.hu
    marrow = float(rng.uniform(-80, 20))
    parts: list[Part] = []
    reach = anatomy.body.skin_radius_max()
    y0 = float(rng.uniform(-15, 35))
    bottom = b.crest_z - float(rng.uniform(60, 200))
    for side in (1, -1):
        r = float(rng.uniform(36, 50))
        gap = float(rng.uniform(1, 20))
        theta = 0.0 if side > 0 else math.pi
        half_width = float(np.interp(theta, THETA, body.cavity_lut) * (1 + abs(body.scale_amp)))
        half_width += float(np.interp(theta, THETA, body.muscle_lut) + np.interp(theta, THETA, body.fat_lut))
        half_width += body.skin_mm
        cx, cy = side * (half_width + gap + r), y0 + float(rng.uniform(-8, 8))
        fat = float(rng.uniform(3, 15))
        bone_r = float(rng.uniform(9, 13))
        shape = _arm_shape(body, cx, cy, r, bottom, gap_mm=1.0)
        paint = _arm_hu(hu, cx, cy, fat, bone_r, marrow, body.skin_mm)
        lo = np.array([cx - r - 2, cy - r - 2, bottom - 2])
        hi = np.array([cx + r + 2, cy + r + 2, b.top_z])
        parts.append(Part(f"arm_{side}", shape, lo, hi, paint, force=True))
        reach = max(reach, min(abs(cx) + r, _REACH_MAX_MM))
    return dataclasses.replace(anatomy, parts=[*anatomy.parts, *parts], reach_mm=float(reach))


def _arm_shape(body: Body, cx: float, cy: float, r: float, bottom: float, gap_mm: float) -> ShapeFn:
    """Signed distance (mm) of a vertical cylinder tapering to 80% below the elbow, ending at
    ``bottom``, kept ``gap_mm`` outside the trunk's outline."""
    elbow = bottom + 0.45 * (300.0 if bottom < 0 else 200.0)

    def fn(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        radius = r * (1.0 - 0.2 * np.clip((elbow - z) / 80.0, 0.0, 1.0))
        arm = np.hypot(x - cx, y - cy) - radius
        arm = np.maximum(arm, bottom - z)
        theta = np.arctan2(y, x)
        outline = body.cavity_radius(theta, z) + np.interp(theta, THETA, body.muscle_lut + body.fat_lut)
        outside = np.hypot(x, y) - (outline + body.skin_mm)
        return np.maximum(arm, gap_mm - outside).astype(np.float32)

    return fn


def _arm_hu(
    hu: dict[str, float], cx: float, cy: float, fat: float, bone_r: float, marrow: float, skin: float
) -> HuFn:
    """Skin, subcutaneous fat, muscle, then the humerus (cortex and marrow) at the arm's axis."""

    def paint(ctx: PaintContext) -> np.ndarray:
        depth = -ctx.sdf
        out = np.full(ctx.sdf.shape, np.float32(hu["skin"]), np.float32)
        np.copyto(out, np.float32(hu["fat"]), where=depth > skin)
        np.copyto(out, np.float32(hu["muscle"]), where=depth > skin + fat)
        x, y, _ = ctx.coords()
        from_axis = np.broadcast_to(np.hypot(x - cx, y - cy), out.shape)
        np.copyto(out, np.float32(hu["cortical"]), where=from_axis < bone_r)
        np.copyto(out, np.float32(marrow), where=from_axis < bone_r - 3.0)
        return out

    return paint

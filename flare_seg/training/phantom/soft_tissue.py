"""Unlabelled soft-tissue structures that are not bowel or vessels: gallbladder, heart, bladder and
the psoas muscles."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from flare_seg.training.phantom.canvas import Part, const, constant_part, layers
from flare_seg.training.phantom.shapes import (
    Frame,
    VerticalTube,
    around,
    ellipsoid_fn,
    orthonormal,
    rotation,
    unit,
)

if TYPE_CHECKING:
    from flare_seg.training.phantom.anatomy import AnatomyBuilder


def add_gallbladder(b: AnatomyBuilder) -> None:
    """Fluid-filled ellipsoid under the liver, in 85% of patients (the rest had a cholecystectomy)."""
    hu = b.hu
    if b.rng.random() < 0.85:
        center = b.liver_center + np.array([b.u(25, 45), 0.0, -b.u(45, 70)])
        center[1] = -b.cav_ant * b.u(0.35, 0.55)
        axes = orthonormal(np.array([1.0, 0, 0]), unit([b.u(-0.3, 0.3), -b.u(0.4, 0.8), -1.0]))
        gallbladder = ellipsoid_fn(Frame(center, axes), (b.u(12, 17), b.u(12, 17), b.u(30, 45)))
        b.force.append(
            Part("gallbladder", gallbladder, *around(center, 46.0), const(hu["water"]), force=True)
        )


def add_heart(b: AnatomyBuilder) -> None:
    """Ellipsoid resting on the diaphragm: myocardium around blood (arterial or venous HU)."""
    hu = b.hu
    xy = np.array([b.u(10, 30), -b.cav_ant * b.u(0.15, 0.3)])
    semi = (b.u(55, 65), b.u(42, 50), b.u(48, 55))
    floor = float(b.body.diaphragm_z(*xy.astype(np.float32)))
    center = np.array([*xy, floor + semi[2] * b.u(0.6, 0.8)])
    ellipsoid = ellipsoid_fn(Frame(center, rotation([0, 0, 1], math.radians(b.u(20, 40))).T), semi)

    def heart(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return np.maximum(ellipsoid(x, y, z), b.above_diaphragm(x, y, z))

    blood = hu["artery"] if b.phase == "arterial" else hu["vein"]
    wall = layers(hu["myocardium"], (b.u(8, 12), blood))
    b.force.append(Part("heart", heart, *around(center, 66.0), wall, force=True))


def add_bladder(b: AnatomyBuilder) -> None:
    """Urine-filled ellipsoid in the pelvis (a filler: takes only free voxels)."""
    center = np.array([0.0, -b.cav_ant * b.u(0.2, 0.4), b.crest_z - b.u(130, 160)])
    semi = (b.u(30, 55), b.u(25, 45), b.u(25, 45))
    bladder = ellipsoid_fn(Frame(center, np.eye(3)), semi)
    b.fillers.append(Part("bladder", bladder, *around(center, 56.0), const(b.hu["urine"])))


def add_psoas(b: AnatomyBuilder) -> None:
    """Psoas muscles: from T12 down beside the spine, then forward into the pelvis (fillers)."""
    spine = b.spine
    for side in (-1, 1):
        z = np.array([b.l1_z + 15, b.l1_z, b.l1_z - b.pitch, b.crest_z, b.crest_z - 60, b.crest_z - 140])
        r = np.array([0.5, 6.0, 13.0, b.u(18, 26), b.u(20, 27), b.u(18, 24)])
        rx, _ = spine.radii(z)
        x = side * (rx + r - 3.0)
        x[-2:] = side * np.array([b.cav_a * 0.45, b.cav_a * 0.55])
        y = spine.center_y(z) + 3.0
        y[-2:] = y[-2:] - np.array([30.0, 55.0]) - 0.55 * np.maximum(b.sacrum_z - z[-2:], 0)
        b.fillers.append(
            constant_part(f"psoas_{side}", VerticalTube(z, x, y, r), b.hu["muscle"], force=False)
        )

"""The bony pelvis as a radiologist sees it on an abdomen-pelvis CT: iliac wings as thick plates of
bone flaring from the sacroiliac joints to the crests and down to the acetabula, with the femoral
necks and greater trochanters below the femoral heads, and the gluteal muscles behind the wings.

Optional (``PhantomOptions.iliac_wings``): without it, the body layer draws the wings as a thin shell
in the muscle wall. Drawn from its own random stream, so the rest of the anatomy of a seed is the
same with and without it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flare_seg.training.phantom.body import Body
from flare_seg.training.phantom.canvas import Part, const, layers
from flare_seg.training.phantom.shapes import Frame, ellipsoid, ellipsoid_fn, orthonormal, unit
from flare_seg.training.phantom.skeleton import Spine

# The parts ``pelvis_parts`` draws, one per side each, named "<part>_<side>".
PELVIS_PARTS = ("iliac_wing", "gluteus", "acetabulum", "femoral_neck", "trochanter")


def is_pelvis_part(name: str) -> bool:
    """Whether a part of that name is one that ``pelvis_parts`` draws."""
    return name.rsplit("_", 1)[0] in PELVIS_PARTS


def femoral_heads(parts: Sequence[Part]) -> list[tuple[np.ndarray, float]]:
    """(centre, radius) of the right (-1) and left (+1) femoral heads among ``parts``, anatomy mm."""
    heads = []
    for side in (-1, 1):
        part = next(p for p in parts if p.name == f"femoral_head_{side}")
        heads.append(((part.lo + part.hi) / 2.0, float((part.hi - part.lo)[0] / 2.0)))
    return heads


def _plate(frame: Frame, semi: tuple[float, float, float], cup_mm: float):
    """A curved elliptical plate: an ellipsoid of semi-axes ``semi`` (the third the half-thickness)
    in ``frame``, bent by ``cup_mm`` towards +w at its rim (a bowl, like the iliac fossa)."""

    def fn(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        u, v, w = frame.local(x, y, z)
        r2 = (u / semi[0]) ** 2 + (v / semi[1]) ** 2
        return ellipsoid(u, v, w - cup_mm * r2, *semi)

    return fn


def pelvis_parts(
    rng: np.random.Generator,
    hu: dict[str, float],
    body: Body,
    spine: Spine,
    cavity_half_width: float,
    femoral_heads: list[tuple[np.ndarray, float]],
) -> list[Part]:
    """Iliac wings, femoral necks and trochanters, and gluteal muscles for both sides.

    ``femoral_heads``: (centre, radius) per side, right (-1) first; anatomy mm."""
    parts: list[Part] = []
    crest = body.crest_z
    sacrum_z = spine.sacrum_z
    bone = layers(hu["cortical"], (2.0, hu["cancellous"]))
    for side, (head, r_head) in zip((-1, 1), femoral_heads, strict=True):
        y_sacrum = float(spine.center_y(np.array([sacrum_z - 30.0]))[0])
        si = np.array(
            [side * rng.uniform(35, 50), y_sacrum + rng.uniform(0, 15), sacrum_z - rng.uniform(10, 40)]
        )
        asis = np.array(
            [
                side * cavity_half_width * rng.uniform(0.8, 0.95),
                -rng.uniform(10, 45),
                crest - rng.uniform(35, 60),
            ]
        )
        top = np.array([side * cavity_half_width * rng.uniform(0.7, 0.85), rng.uniform(0, 40), crest])
        roof = head + np.array([0.0, 0.0, r_head + rng.uniform(5, 15)])
        center = (si + asis + top + roof) / 4.0
        along = asis - si  # horizontal direction of the wing, back to front
        down = roof - top
        axes = orthonormal(along, np.cross(along, down) * side)  # w: the wing's normal, towards medial
        frame = Frame(center, axes)
        half_u = 0.5 * float(np.linalg.norm(along)) * rng.uniform(1.15, 1.35)
        half_v = 0.5 * float(np.linalg.norm(down)) * rng.uniform(1.1, 1.3)
        half_t = rng.uniform(5.0, 9.0)
        wing = _plate(frame, (half_u, half_v, half_t), cup_mm=rng.uniform(5, 15))
        reach = max(half_u, half_v) + 20.0
        parts.append(Part(f"iliac_wing_{side}", wing, center - reach, center + reach, bone, force=True))
        # gluteal muscles: a thick plate behind (lateral-posterior of) the wing
        glute = Frame(center + axes[2] * -rng.uniform(18, 28) + np.array([0.0, 15.0, -20.0]), axes)
        g_shape = _plate(glute, (half_u * 1.1, half_v * 1.2, rng.uniform(12, 22)), cup_mm=0.0)
        parts.append(
            Part(
                f"gluteus_{side}",
                g_shape,
                center - reach - 30,
                center + reach + 30,
                const(hu["muscle"]),
                force=True,
            )
        )
        # acetabulum: a cup of bone around the femoral head, open laterally
        cup_c = head + np.array([-side * rng.uniform(4, 10), 0.0, rng.uniform(0, 6)])
        cup = ellipsoid_fn(
            Frame(cup_c, np.eye(3)), (r_head + rng.uniform(6, 10), r_head + rng.uniform(8, 14), r_head + 8)
        )
        parts.append(
            Part(f"acetabulum_{side}", cup, cup_c - r_head - 20, cup_c + r_head + 20, bone, force=True)
        )
        # femoral neck and greater trochanter, lateral and down from the head
        neck_dir = unit(np.array([side * 1.0, rng.uniform(-0.2, 0.2), -rng.uniform(0.5, 0.8)]))
        neck_len = rng.uniform(35, 50)
        neck_c = head + neck_dir * neck_len * 0.5
        neck = orthonormal(neck_dir, np.array([0.0, 0.0, 1.0]))
        r_neck = r_head * rng.uniform(0.55, 0.7)
        neck_shape = ellipsoid_fn(Frame(neck_c, neck), (neck_len * 0.6, r_neck, r_neck))
        parts.append(Part(f"femoral_neck_{side}", neck_shape, neck_c - 40, neck_c + 40, bone, force=True))
        troch_c = head + neck_dir * neck_len + np.array([0.0, 0.0, -rng.uniform(5, 20)])
        troch = Frame(troch_c, np.eye(3))
        t_semi = (rng.uniform(14, 20), rng.uniform(16, 22), rng.uniform(25, 40))
        troch_shape = ellipsoid_fn(troch, t_semi)
        parts.append(Part(f"trochanter_{side}", troch_shape, troch_c - 45, troch_c + 45, bone, force=True))
    return parts

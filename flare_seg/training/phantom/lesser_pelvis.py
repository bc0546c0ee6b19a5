"""The lesser pelvis and the hips as an abdomen-pelvis CT shows them below the iliac crests.

Optional (``PhantomOptions.true_pelvis``, which brings the ``iliac_wings`` bones with it):

- the sacrum ends in the coccyx a little above the femoral heads (without the option the
  vertebral column runs on below them);
- the pubic bones in front of the bladder, from the acetabula to the symphysis, and the ischia
  behind, down to the ischial tuberosities: a ring of bone around each obturator foramen;
- the femoral shafts below the trochanters;
- a lesser pelvis 40-55% narrower than the abdomen, hip muscles beside it (``PELVIS_NARROWING``);
- muscle where a real pelvis has it: the iliacus on the inner face of each iliac wing, the
  obturator internus lining the side walls of the lesser pelvis, the gluteus maximus behind the
  hips, and the thigh muscles around the femoral shafts, each inside the body's subcutaneous fat;
- abdomen-pelvis fields of view that reach below the hips (``hip_bottom_z``): real abdomen-pelvis
  scans end at or below the lesser trochanters.

Drawn from its own random stream, so the rest of the anatomy of a seed is the same with and without
it. None of it is labelled: it is the background a localization network must not mistake for an
organ (real pelvic muscles and bowel beside bone look like kidneys to a network that never saw them).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from flare_seg.training.phantom.body import THETA, Body
from flare_seg.training.phantom.canvas import Part, const, layers
from flare_seg.training.phantom.params import option_rng
from flare_seg.training.phantom.pelvis import femoral_heads, is_pelvis_part
from flare_seg.training.phantom.shapes import Frame, Tube, ellipsoid_fn

if TYPE_CHECKING:
    from flare_seg.training.phantom.anatomy import Anatomy, AnatomyBuilder


def true_pelvis_rng(seed: int) -> np.random.Generator:
    """The twentieth random stream of a case seed (the lesser pelvis of ``true_pelvis``)."""
    return option_rng(seed, 19)


def _inside_wall(body: Body, fat_share: float):
    """Shape (mm) of the body inside its skin less ``fat_share`` of the subcutaneous fat: muscles
    drawn with it reach into the fat but leave a layer of it under the skin."""

    def fn(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        theta = np.arctan2(y, x)
        reach = body.cavity_radius(theta, z) + np.interp(theta, THETA, body.muscle_lut).astype(np.float32)
        reach = reach + fat_share * np.interp(theta, THETA, body.fat_lut).astype(np.float32)
        return (np.hypot(x, y) - reach).astype(np.float32)

    return fn


def _clipped(shape, clip):
    def fn(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return np.maximum(shape(x, y, z), clip(x, y, z))

    return fn


def hip_bottom_z(anatomy: Anatomy) -> float:
    """Height (mm, anatomy z) of the lower of the two femoral heads' centres."""
    return float(min(center[2] for center, _ in femoral_heads(anatomy.parts)))


def add_true_pelvis(rng: np.random.Generator, builder: AnatomyBuilder, anatomy: Anatomy) -> Anatomy:
    """``anatomy`` (with the ``iliac_wings`` bones already added) with the sacrum ended at the
    coccyx, the pubic and ischial bones, the femoral shafts and the pelvic and hip muscles."""
    hu, body, spine = builder.hu, anatomy.body, builder.spine
    heads = femoral_heads(anatomy.parts)
    head_z = float(np.mean([c[2] for c, _ in heads]))
    bone = layers(hu["cortical"], (rng.uniform(2.0, 3.5), hu["cancellous"]))
    muscle = const(hu["muscle"])
    bones: list[Part] = []
    muscles: list[Part] = []

    # the coccyx's tip: the column ends here
    tip_z = head_z + rng.uniform(5.0, 30.0)
    parts = []
    for p in anatomy.parts:
        if p.name == "spine":
            shape = p.shape

            def ended(x, y, z, shape=shape):
                return np.maximum(shape(x, y, z), tip_z - z)

            lo = p.lo.copy()
            lo[2] = max(lo[2], tip_z - 5.0)
            p = dataclasses.replace(p, shape=ended, lo=lo)
        parts.append(p)

    # pubic symphysis just behind the front wall, a little below the heads' centres
    z_sym = head_z - rng.uniform(10.0, 30.0)
    y_front = -body.front_wall_mm(np.float32(z_sym))
    symphysis = np.array([0.0, y_front + rng.uniform(8.0, 18.0), z_sym])
    r_ramus = rng.uniform(6.0, 9.0)
    for side, (head, r_head) in zip((-1, 1), heads, strict=True):
        medial = -side
        # superior pubic ramus: from the acetabulum's front, forwards and to the midline
        acetabulum_front = head + np.array([medial * 0.5 * r_head, -0.8 * r_head, 0.2 * r_head])
        sym_side = symphysis + np.array([side * rng.uniform(6.0, 10.0), 0.0, 5.0])
        pubis = [acetabulum_front, 0.5 * (acetabulum_front + sym_side) + np.array([0, -5.0, 0]), sym_side]
        # inferior ramus and ischium: from the symphysis down and back to the tuberosity, then up
        # behind the acetabulum
        tuberosity = np.array(
            [
                head[0] + medial * rng.uniform(10.0, 25.0),
                head[1] + rng.uniform(15.0, 30.0),
                head_z - rng.uniform(40.0, 55.0),
            ]
        )
        below_sym = sym_side + np.array([side * rng.uniform(12.0, 20.0), 8.0, -rng.uniform(25.0, 35.0)])
        acetabulum_back = head + np.array([medial * 0.6 * r_head, 0.9 * r_head, 0.1 * r_head])
        ischium = [sym_side, below_sym, tuberosity, acetabulum_back]
        r_isch = rng.uniform(8.0, 13.0)
        tube = Tube(
            [np.stack(pubis), np.stack(ischium)],
            [np.full(3, r_ramus), np.array([r_ramus, r_ramus, r_isch, r_isch + 3.0])],
        )
        bones.append(Part(f"pubis_ischium_{side}", tube, tube.lo - 2, tube.hi + 2, bone, force=True))
        # the femoral shaft from the trochanter down (beyond any field of view)
        neck_dir = np.array([side * 1.0, 0.0, -0.65])
        top = head + neck_dir / np.linalg.norm(neck_dir) * rng.uniform(40.0, 55.0) + np.array([0, 0, -15.0])
        shaft = [top, top + np.array([-side * 8.0, 0.0, -120.0]), top + np.array([-side * 16.0, 0.0, -260.0])]
        r_shaft = rng.uniform(12.0, 15.0)
        cortex = rng.uniform(4.0, 7.0)
        shaft_tube = Tube([np.stack(shaft)], [np.full(3, r_shaft)])
        bones.append(
            Part(
                f"femoral_shaft_{side}",
                shaft_tube,
                shaft_tube.lo - 2,
                shaft_tube.hi + 2,
                layers(hu["cortical"], (cortex, hu["fat"] + rng.uniform(40.0, 100.0))),
                force=True,
            )
        )
        wall = _inside_wall(body, rng.uniform(0.2, 0.6))
        # thigh muscles around the shaft (quadriceps, adductors, hamstrings), inside the fat
        thigh_c = top + np.array(
            [-side * rng.uniform(5.0, 20.0), rng.uniform(-5.0, 10.0), -rng.uniform(70, 90)]
        )
        thigh = ellipsoid_fn(Frame(thigh_c, np.eye(3)), (rng.uniform(55, 70), rng.uniform(55, 70), 110.0))
        muscles.append(
            Part(f"thigh_{side}", _clipped(thigh, wall), thigh_c - 115, thigh_c + 115, muscle, force=True)
        )
        # gluteus maximus: behind the hip joint, from the sacrum's side to below the tuberosity
        y_back = float(spine.center_y(np.array([head_z]))[0])
        glute_c = np.array(
            [side * rng.uniform(55.0, 85.0), y_back + rng.uniform(0.0, 25.0), head_z - rng.uniform(0, 25)]
        )
        glute_semi = (rng.uniform(45.0, 65.0), rng.uniform(30.0, 45.0), rng.uniform(60.0, 85.0))
        glute = ellipsoid_fn(Frame(glute_c, np.eye(3)), glute_semi)
        reach = max(glute_semi) + 5.0
        muscles.append(
            Part(
                f"gluteus_maximus_{side}",
                _clipped(glute, wall),
                glute_c - reach,
                glute_c + reach,
                muscle,
                force=True,
            )
        )
        # obturator internus: a plate lining the side wall of the lesser pelvis, inside the rami
        obt_c = np.array(
            [
                head[0] + medial * (r_head + rng.uniform(8.0, 14.0)),
                head[1] + rng.uniform(0, 15),
                head_z - rng.uniform(5, 20),
            ]
        )
        obt_semi = (rng.uniform(6.0, 10.0), rng.uniform(28.0, 40.0), rng.uniform(28.0, 40.0))
        obturator = ellipsoid_fn(Frame(obt_c, np.eye(3)), obt_semi)
        muscles.append(Part(f"obturator_{side}", obturator, obt_c - 42, obt_c + 42, muscle, force=True))
        # iliacus: the inner face of the iliac wing, joining the psoas
        wing = next((p for p in parts if p.name == f"iliac_wing_{side}"), None)
        if wing is not None:
            wing_c = (wing.lo + wing.hi) / 2.0
            il_c = wing_c + np.array(
                [medial * rng.uniform(15.0, 25.0), -rng.uniform(0.0, 15.0), -rng.uniform(0.0, 20.0)]
            )
            il_semi = (rng.uniform(10.0, 16.0), rng.uniform(30.0, 45.0), rng.uniform(45.0, 65.0))
            iliacus = ellipsoid_fn(Frame(il_c, np.eye(3)), il_semi)
            muscles.append(Part(f"iliacus_{side}", iliacus, il_c - 66, il_c + 66, muscle, force=True))

    # Muscles after the organs (which are never painted over) and kept out of the spine; then the
    # wings' bones and the new bones over them; then the bowel and the other fillers, which take
    # only what is left.
    def outside_column(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return -np.maximum(spine.union(x, y, z), tip_z - z)

    muscles = [dataclasses.replace(m, shape=_clipped(m.shape, outside_column)) for m in muscles]
    n_first = len(builder.force) + len(builder.organs)
    n_wings = sum(1 for p in parts if is_pelvis_part(p.name))
    cut = n_first + n_wings
    parts = [*parts[:n_first], *muscles, *parts[n_first:cut], *bones, *parts[cut:]]
    # the lesser pelvis is narrow: hip muscles fill the body layer's cavity beside it
    body = dataclasses.replace(
        body, pelvis_narrowing=max(body.pelvis_narrowing, rng.uniform(*PELVIS_NARROWING))
    )
    return dataclasses.replace(anatomy, body=body, parts=parts)


PELVIS_NARROWING = (0.4, 0.55)  # the cavity's lateral narrowing in the lesser pelvis (0.15-0.3 without)

"""Optional variety beyond the textbook phantom (``PhantomOptions``): a realistic bony pelvis and
wider tissue intensities (per-tissue offsets, fatty liver, fatty pancreas, low unenhanced values),
so that models trained on phantoms see what real scans show. Drawn from a fifth random stream of the
case seed, so that a seed's anatomy, grid and noise are the same with the options on and off."""

from __future__ import annotations

import dataclasses

import numpy as np

from flare_seg.training.phantom.anatomy import Anatomy, AnatomyBuilder
from flare_seg.training.phantom.appearance import Appearance
from flare_seg.training.phantom.pelvis import pelvis_parts

# Soft tissues whose mean HU gets a per-case offset (air, fat, water, bone and contrast media keep
# their physical ranges).
SPREAD_TISSUES = (
    "liver",
    "spleen",
    "kidney_cortex",
    "kidney_medulla",
    "pancreas",
    "muscle",
    "bowel_wall",
    "portal_vein",
    "vein",
    "artery",
    "myocardium",
    "skin",
)
FATTY_LIVER_PROBABILITY = 0.2  # steatosis: the liver 15-60 HU darker (below the spleen)
FATTY_PANCREAS_PROBABILITY = 0.35  # fatty infiltration of the ageing pancreas: 10-60 HU darker


def variety_rng(seed: int) -> np.random.Generator:
    """The fifth random stream of a case seed (the first four are ``params.case_rngs``)."""
    return np.random.default_rng(np.random.SeedSequence(int(seed)).spawn(5)[4])


def spread_appearance(rng: np.random.Generator, appearance: Appearance, spread_hu: float) -> Appearance:
    """``appearance`` with each soft tissue's mean moved by N(0, ``spread_hu``), the soft-tissue
    range scaled by U(0.8, 1.1) about water, and sometimes a fatty liver or pancreas."""
    hu = dict(appearance.hu)
    scale = rng.uniform(0.8, 1.1)
    for name in SPREAD_TISSUES:
        hu[name] = hu[name] * scale + rng.normal(0.0, spread_hu)
    if rng.random() < FATTY_LIVER_PROBABILITY:
        hu["liver"] -= rng.uniform(15, 60)
    if rng.random() < FATTY_PANCREAS_PROBABILITY:
        hu["pancreas"] -= rng.uniform(10, 60)
    return dataclasses.replace(appearance, hu={k: float(v) for k, v in hu.items()})


def add_bony_pelvis(rng: np.random.Generator, builder: AnatomyBuilder, anatomy: Anatomy) -> Anatomy:
    """``anatomy`` with iliac wings, acetabula, femoral necks, trochanters and gluteal muscles, and
    without the body layer's thin-shell wings."""
    heads = []
    for side in (-1, 1):
        part = next(p for p in anatomy.parts if p.name == f"femoral_head_{side}")
        heads.append(((part.lo + part.hi) / 2.0, float((part.hi - part.lo)[0] / 2.0)))
    extra = pelvis_parts(rng, builder.hu, anatomy.body, builder.spine, builder.cav_a, heads)
    # After the organs (which they never paint over: the organs' shapes stay those of the seed),
    # before the bowel and muscles, which take only what is left.
    n_first = len(builder.force) + len(builder.organs)
    parts = [*anatomy.parts[:n_first], *extra, *anatomy.parts[n_first:]]
    return Anatomy(dataclasses.replace(anatomy.body, ilium_thickness=0.0), parts, anatomy.kidney_bottom_z)

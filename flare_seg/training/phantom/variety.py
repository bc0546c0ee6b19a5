"""Optional variety beyond the textbook phantom (``PhantomOptions``): a realistic bony pelvis, wider
tissue intensities (per-tissue offsets, fatty liver, fatty pancreas, low unenhanced values), and
organ size, shape and bone density beyond the textbook (atrophic pancreas, deeper liver, a spleen
tilted towards the front, a rounder abdomen, osteopenic bone), so that models trained on phantoms
see what real scans show. The pelvis and intensities are drawn from a fifth random stream of the
case seed, the organ variety from a sixth, so that a seed's anatomy, grid and noise are the same
with the options on and off, and each option leaves the others' draws unchanged."""

from __future__ import annotations

import dataclasses

import numpy as np

from flare_seg.training.phantom.anatomy import Anatomy, AnatomyBuilder, OrganVariety
from flare_seg.training.phantom.appearance import Appearance
from flare_seg.training.phantom.params import option_rng
from flare_seg.training.phantom.pelvis import femoral_heads, pelvis_parts

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


ATROPHIC_PANCREAS_PROBABILITY = 0.5  # the ageing pancreas: thinner (its cross-section 50-85%)
OSTEOPENIA_PROBABILITY = 0.5  # vertebral bodies of 80-200 HU: no brighter than an enhanced kidney


def variety_rng(seed: int) -> np.random.Generator:
    """The fifth random stream of a case seed (the first four are ``params.case_rngs``)."""
    return option_rng(seed, 4)


def organ_variety_rng(seed: int) -> np.random.Generator:
    """The sixth random stream of a case seed (the organ variety of ``anatomy_variety``)."""
    return option_rng(seed, 5)


def lateral_spleen_rng(seed: int) -> np.random.Generator:
    """The ninth random stream of a case seed (the spleen position of ``lateral_spleen``)."""
    return option_rng(seed, 8)


LATERAL_SPLEEN_PROBABILITY = 0.6
FATTY_PANCREAS_LOBULES_PROBABILITY = 0.6


def fatty_pancreas_rng(seed: int) -> np.random.Generator:
    """The tenth random stream of a case seed (the pancreas of ``fatty_pancreas``)."""
    return option_rng(seed, 9)


def fatty_pancreas_variety(rng: np.random.Generator, variety: OrganVariety | None) -> OrganVariety:
    """``variety`` (None: the textbook one) with, in ``FATTY_PANCREAS_LOBULES_PROBABILITY`` of
    cases, the ageing pancreas of real scans: lobules of 5-12 mm with fat between them (20-50% of
    the organ), and a cross-section 60-90% of the drawn one (at least 45% of the textbook one).
    The label covers the whole organ, fat clefts included, as reference segmentations do; such a
    pancreas averages 0-30 HU, darker than the bowel around it."""
    variety = variety or OrganVariety()
    if rng.random() >= FATTY_PANCREAS_LOBULES_PROBABILITY:
        return variety
    return dataclasses.replace(
        variety,
        pancreas_fat_fraction=float(rng.uniform(0.2, 0.5)),
        pancreas_lobule_mm=float(rng.uniform(5.0, 12.0)),
        pancreas_thickness=max(variety.pancreas_thickness * float(rng.uniform(0.6, 0.9)), 0.45),
        pancreas_lobule_seed=int(rng.integers(2**31)),
    )


def lateral_spleen_variety(rng: np.random.Generator, variety: OrganVariety | None) -> OrganVariety:
    """``variety`` (None: the textbook one) with, in ``LATERAL_SPLEEN_PROBABILITY`` of cases, the
    spleen's centre turned 5-20 degrees further out to the flank and set in from the cavity wall by
    50-90% of the textbook distance (spleens lie anywhere from behind the flank to against the
    lateral ribs)."""
    variety = variety or OrganVariety()
    if rng.random() >= LATERAL_SPLEEN_PROBABILITY:
        return variety
    return dataclasses.replace(
        variety, spleen_flank_deg=float(rng.uniform(5.0, 20.0)), spleen_inset=float(rng.uniform(0.5, 0.9))
    )


ORGAN_LAYOUT_PROBABILITY = 0.7
LOW_LEFT_LOBE_PROBABILITY = 0.6
THIN_LEFT_LOBE_PROBABILITY = 0.6
PANCREAS_LIPOMATOSIS_PROBABILITY = 0.5
PANCREAS_FORWARD_PROBABILITY = 0.6
FLAT_PANCREAS_PROBABILITY = 0.6


def organ_layout_rng(seed: int) -> np.random.Generator:
    """The eleventh random stream of a case seed (the organ layout of ``organ_layout``)."""
    return option_rng(seed, 10)


def organ_layout_variety(rng: np.random.Generator, variety: OrganVariety | None) -> OrganVariety:
    """``variety`` (None: the textbook one) with, in ``ORGAN_LAYOUT_PROBABILITY`` of cases, the
    organs placed and sized as in many real abdomens rather than the textbook's: a left liver lobe
    reaching up to 40% further to the left, the liver up to 20 mm further to the front, both kidneys
    up to 20 mm higher (upper poles at T11-T12; the right one then sits in the liver's renal
    impression) with their hila turned up to 25 degrees further to the front and their lower poles
    leaning further to the front (up to about 20 degrees more, as along a steep psoas), and a spleen up to
    60% larger (200-320 mL) and up to 15 mm higher under the dome."""
    variety = variety or OrganVariety()
    if rng.random() >= ORGAN_LAYOUT_PROBABILITY:
        return variety
    return dataclasses.replace(
        variety,
        liver_left_lobe=float(rng.uniform(1.0, 1.4)),
        liver_forward_mm=float(rng.uniform(0.0, 20.0)),
        kidney_rise_mm=float(rng.uniform(0.0, 20.0)),
        kidney_turn_deg=float(rng.uniform(0.0, 25.0)),
        kidney_lean=float(rng.uniform(0.0, 0.35)),
        spleen_volume=float(rng.uniform(1.0, 1.6)),
        spleen_rise_mm=float(rng.uniform(0.0, 15.0)),
    )


def low_left_lobe_rng(seed: int) -> np.random.Generator:
    """The fourteenth random stream of a case seed (the left liver lobe of ``low_left_lobe``)."""
    return option_rng(seed, 13)


def low_left_lobe_variety(rng: np.random.Generator, variety: OrganVariety | None) -> OrganVariety:
    """``variety`` (None: the textbook one) with, in ``LOW_LEFT_LOBE_PROBABILITY`` of cases, the
    left liver lobe's centre 10-35 mm lower, in front of the stomach: the lowest point of the
    liver's leftmost 30% then lies about 3-6 cm above the liver's lowest point (over 4 such cases:
    35-60 mm), as in many real livers (the real development CT: 42 mm), instead of 6-10 cm."""
    variety = variety or OrganVariety()
    if rng.random() >= LOW_LEFT_LOBE_PROBABILITY:
        return variety
    return dataclasses.replace(variety, liver_left_lobe_drop_mm=float(rng.uniform(10.0, 35.0)))


def thin_left_lobe_rng(seed: int) -> np.random.Generator:
    """The seventeenth random stream of a case seed (the left liver lobe of ``thin_left_lobe``)."""
    return option_rng(seed, 16)


def thin_left_lobe_variety(rng: np.random.Generator, variety: OrganVariety | None) -> OrganVariety:
    """``variety`` (None: the textbook one) with, in ``THIN_LEFT_LOBE_PROBABILITY`` of cases, the
    left liver lobe a plate 30-50% as thick as the textbook wedge (about 2.5-4.5 cm at its root,
    thinner to the left) and 0-30% taller, its front against the front abdominal wall (from 4 mm
    pressed into it to 4 mm inside), so that stomach, bowel and fat fill the space behind it, as
    in many real livers (the real development CT: about 2.5 cm)."""
    variety = variety or OrganVariety()
    if rng.random() >= THIN_LEFT_LOBE_PROBABILITY:
        return variety
    return dataclasses.replace(
        variety,
        liver_left_lobe_thickness=float(rng.uniform(0.3, 0.5)),
        liver_left_lobe_height=float(rng.uniform(1.0, 1.3)),
        liver_left_lobe_front_mm=float(rng.uniform(-4.0, 4.0)),
    )


def pancreas_lipomatosis_rng(seed: int) -> np.random.Generator:
    """The eighteenth random stream of a case seed (the pancreas of ``pancreas_lipomatosis``)."""
    return option_rng(seed, 17)


def pancreas_lipomatosis_variety(rng: np.random.Generator, variety: OrganVariety | None) -> OrganVariety:
    """``variety`` (None: the textbook one) with, in ``PANCREAS_LIPOMATOSIS_PROBABILITY`` of cases,
    the atrophic, fat-infiltrated pancreas of many older patients: fat between lobules of 4-9 mm
    taking 30-60% of the organ, and a cross-section 40-60% of the textbook one (the gland 1-1.7 cm
    thick, 15-35 mL). The label covers the whole organ, as reference segmentations do; on 3 mm
    voxels such a pancreas has a median of about -50 to 10 HU, a lace of parenchyma in the fat
    around it (the real development CT: 19 mL at 6 HU median)."""
    variety = variety or OrganVariety()
    if rng.random() >= PANCREAS_LIPOMATOSIS_PROBABILITY:
        return variety
    return dataclasses.replace(
        variety,
        pancreas_fat_fraction=float(rng.uniform(0.3, 0.6)),
        pancreas_lobule_mm=float(rng.uniform(4.0, 9.0)),
        pancreas_thickness=float(rng.uniform(0.4, 0.6)),
        pancreas_lobule_seed=int(rng.integers(2**31)),
    )


def pancreas_forward_rng(seed: int) -> np.random.Generator:
    """The nineteenth random stream of a case seed (the pancreas position of ``pancreas_forward``)."""
    return option_rng(seed, 18)


def pancreas_forward_variety(rng: np.random.Generator, variety: OrganVariety | None) -> OrganVariety:
    """``variety`` (None: the textbook one) with, in ``PANCREAS_FORWARD_PROBABILITY`` of cases,
    15-45 mm more fat between the aorta and the pancreas, as in patients with abundant visceral
    fat: the head, neck and body lie that much further to the front (the gland's centre then about
    5-8 cm in front of the vertebral body instead of 4-5 cm; the real development CT: 6.7 cm), the
    tail, held at the splenic hilum, a third of it, so the gland also runs more steeply from front
    to back. A slim abdomen has no room for that: the neck's centre stays within 55% of the way
    from the aorta to the front wall. The splenic and portal veins follow the gland; the SMA stays
    on the aorta."""
    variety = variety or OrganVariety()
    if rng.random() >= PANCREAS_FORWARD_PROBABILITY:
        return variety
    return dataclasses.replace(variety, pancreas_forward_mm=float(rng.uniform(15.0, 45.0)))


def sample_organ_variety(rng: np.random.Generator) -> OrganVariety:
    """Organ size and shape factors: an atrophic pancreas in half the cases, a liver up to 30% and a
    spleen up to 40% deeper, the spleen's long axis tilted up to 2.5 times further to the front, and
    an abdominal cavity up to 15% narrower and 35% deeper in front of the spine."""
    atrophic = rng.random() < ATROPHIC_PANCREAS_PROBABILITY
    return OrganVariety(
        pancreas_thickness=float(rng.uniform(0.5, 0.85) if atrophic else rng.uniform(0.85, 1.0)),
        liver_depth=float(rng.uniform(0.95, 1.3)),
        spleen_depth=float(rng.uniform(0.95, 1.4)),
        spleen_tilt=float(rng.uniform(1.0, 2.5)),
        cavity_width=float(rng.uniform(0.85, 1.05)),
        cavity_depth=float(rng.uniform(1.0, 1.35)),
    )


def bone_density_appearance(rng: np.random.Generator, appearance: Appearance) -> Appearance:
    """``appearance`` with osteopenic bone in ``OSTEOPENIA_PROBABILITY`` of cases: cancellous bone
    80-200 HU, cortical bone and ribs at 70-100% of their drawn HU (thinner, not much less dense)."""
    if rng.random() >= OSTEOPENIA_PROBABILITY:
        return appearance
    hu = dict(appearance.hu)
    hu["cancellous"] = float(rng.uniform(80, 200))
    dense = float(rng.uniform(0.7, 1.0))
    for name in ("cortical", "rib"):
        hu[name] = max(hu[name] * dense, hu["cancellous"] + 100.0)
    return dataclasses.replace(appearance, hu=hu)


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
    heads = femoral_heads(anatomy.parts)
    extra = pelvis_parts(rng, builder.hu, anatomy.body, builder.spine, builder.cav_a, heads)
    # After the organs (which they never paint over: the organs' shapes stay those of the seed),
    # before the bowel and muscles, which take only what is left.
    n_first = len(builder.force) + len(builder.organs)
    parts = [*anatomy.parts[:n_first], *extra, *anatomy.parts[n_first:]]
    return Anatomy(dataclasses.replace(anatomy.body, ilium_thickness=0.0), parts, anatomy.kidney_bottom_z)


def flat_pancreas_rng(seed: int) -> np.random.Generator:
    """The twenty-first random stream of a case seed (the pancreas' course of ``flat_pancreas``)."""
    return option_rng(seed, 20)


def flat_pancreas_variety(rng: np.random.Generator, variety: OrganVariety | None) -> OrganVariety:
    """``variety`` (None: the textbook one) with, in ``FLAT_PANCREAS_PROBABILITY`` of cases, the
    pancreas' tail 10-30 mm lower (the body half of it, neither below the neck): a gland that runs
    flatter from head to tail. Drawn, the tail's centroid lies 31-51 mm above the head's (10th-90th
    percentile, 16 cases of seed 1731); on the real development CT it lies 28 mm above."""
    variety = variety or OrganVariety()
    if rng.random() >= FLAT_PANCREAS_PROBABILITY:
        return variety
    return dataclasses.replace(variety, pancreas_tail_drop_mm=float(rng.uniform(10.0, 30.0)))

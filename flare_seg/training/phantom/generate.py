"""One phantom case, step by step: sample (appearance, anatomy, acquisition), paint, reconstruct.

Each step draws from its own random stream (`case_rngs`), so a change in one step (e.g. a new
structure) leaves the draws of the others unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import SimpleITK as sitk

from flare_seg.training.phantom.acquisition import (
    Grid,
    Reconstruction,
    blur,
    outside_circle,
    sample_grid,
    sample_reconstruction,
    to_int16,
)
from flare_seg.training.phantom.anatomy import Anatomy, AnatomyBuilder
from flare_seg.training.phantom.appearance import add_noise, sample_appearance
from flare_seg.training.phantom.arms import add_arms, arms_rng
from flare_seg.training.phantom.body import paint_body
from flare_seg.training.phantom.bowel import (
    keep_stomach_in_front,
    sample_stomach_plan,
    stomach_in_front_rng,
    stomach_rng,
)
from flare_seg.training.phantom.canvas import Canvas
from flare_seg.training.phantom.fissures import add_liver_fissures, liver_fissures_rng
from flare_seg.training.phantom.gallbladder import add_gallbladder_in_fossa, gallbladder_rng
from flare_seg.training.phantom.lesions import (
    NO_LESIONS,
    lesion_rng,
    liver_mass_rng,
    sample_lesions,
    sample_liver_mass,
)
from flare_seg.training.phantom.lesser_pelvis import add_true_pelvis, hip_bottom_z, true_pelvis_rng
from flare_seg.training.phantom.params import (
    DEFAULT_OPTIONS,
    FREE,
    RESERVED,
    PhantomInfo,
    PhantomOptions,
    case_rngs,
)
from flare_seg.training.phantom.variety import (
    add_bony_pelvis,
    bone_density_appearance,
    fatty_pancreas_rng,
    fatty_pancreas_variety,
    flat_pancreas_rng,
    flat_pancreas_variety,
    lateral_spleen_rng,
    lateral_spleen_variety,
    low_left_lobe_rng,
    low_left_lobe_variety,
    organ_layout_rng,
    organ_layout_variety,
    organ_variety_rng,
    pancreas_forward_rng,
    pancreas_forward_variety,
    pancreas_lipomatosis_rng,
    pancreas_lipomatosis_variety,
    sample_organ_variety,
    spread_appearance,
    thin_left_lobe_rng,
    thin_left_lobe_variety,
    variety_rng,
)

logger = logging.getLogger(__name__)


def generate_case_with_info(
    seed: int, options: PhantomOptions = DEFAULT_OPTIONS
) -> tuple[sitk.Image, sitk.Image, PhantomInfo]:
    """Like `generate_case`, also returning what was sampled."""
    started = time.perf_counter()
    rng_anatomy, rng_grid, rng_hu, rng_noise = case_rngs(seed)
    appearance = sample_appearance(rng_hu)
    rng_variety = variety_rng(seed)
    if options.hu_spread_hu > 0:
        appearance = spread_appearance(rng_variety, appearance, options.hu_spread_hu)
    variety = None
    if options.anatomy_variety:
        rng_organs = organ_variety_rng(seed)
        variety = sample_organ_variety(rng_organs)
        appearance = bone_density_appearance(rng_organs, appearance)
    if options.lateral_spleen:
        variety = lateral_spleen_variety(lateral_spleen_rng(seed), variety)
    if options.fatty_pancreas:
        variety = fatty_pancreas_variety(fatty_pancreas_rng(seed), variety)
    if options.pancreas_lipomatosis:
        variety = pancreas_lipomatosis_variety(pancreas_lipomatosis_rng(seed), variety)
    if options.organ_layout:
        variety = organ_layout_variety(organ_layout_rng(seed), variety)
    if options.low_left_lobe:
        variety = low_left_lobe_variety(low_left_lobe_rng(seed), variety)
    if options.thin_left_lobe:
        variety = thin_left_lobe_variety(thin_left_lobe_rng(seed), variety)
    if options.pancreas_forward:
        variety = pancreas_forward_variety(pancreas_forward_rng(seed), variety)
    if options.flat_pancreas:
        variety = flat_pancreas_variety(flat_pancreas_rng(seed), variety)
    plan = sample_lesions(lesion_rng(seed)) if options.lesions else NO_LESIONS
    mass = None
    if options.liver_masses > 0:
        mass = sample_liver_mass(liver_mass_rng(seed), appearance.phase, options.liver_masses)
    if mass is not None:
        plan = dataclasses.replace(plan, liver=(*plan.liver, mass))
    stomach = sample_stomach_plan(stomach_rng(seed), appearance.phase) if options.collapsed_stomach else None
    builder = AnatomyBuilder(rng_anatomy, appearance, variety, plan, stomach)
    anatomy = builder.build()
    if options.iliac_wings or options.true_pelvis:
        anatomy = add_bony_pelvis(rng_variety, builder, anatomy)
    hips_z = None
    if options.true_pelvis:
        anatomy = add_true_pelvis(true_pelvis_rng(seed), builder, anatomy)
        hips_z = hip_bottom_z(anatomy)
    if options.arms:
        anatomy = add_arms(arms_rng(seed), builder, anatomy)
    if options.stomach_in_front:
        anatomy = keep_stomach_in_front(stomach_in_front_rng(seed), anatomy)
    fissures: tuple[str, ...] | None = None
    if options.liver_fissures:
        anatomy, fissures = add_liver_fissures(liver_fissures_rng(seed), builder, anatomy)
    gallbladder: dict[str, float | int | bool] | None = None
    if options.gallbladder_fossa:
        anatomy, gallbladder_plan = add_gallbladder_in_fossa(gallbladder_rng(seed), builder, anatomy)
        gallbladder = {} if gallbladder_plan is None else gallbladder_plan.summary()
    grid, fov, flips, oblique = sample_grid(
        rng_grid, options, anatomy.in_plane_reach_mm(), anatomy.kidney_bottom_z, hips_z
    )
    sampled = time.perf_counter()
    canvas = _paint(grid, anatomy, appearance.hu, options)
    painted = time.perf_counter()
    reconstruction = sample_reconstruction(rng_noise)
    image_zyx, mask_zyx = _reconstruct(canvas, rng_noise, reconstruction)
    del canvas
    image, mask = _to_images(grid, image_zyx, mask_zyx)
    logger.debug(
        "phantom seed %d: %s, %s, size %s: sample %.2fs, paint %.2fs, finish %.2fs",
        seed,
        appearance.phase,
        fov,
        grid.size_xyz,
        sampled - started,
        painted - sampled,
        time.perf_counter() - painted,
    )
    info = PhantomInfo(
        seed=int(seed),
        size=options.size,
        phase=appearance.phase,
        fov=fov,
        noise_sd_hu=reconstruction.noise_sd_hu,
        blur_sigma_vox_xyz=reconstruction.blur_sigma_vox_xyz,
        pad_value=reconstruction.pad_value,
        flipped_xyz=flips,
        oblique_deg=oblique,
        size_xyz=grid.size_xyz,
        spacing_xyz=grid.spacing_xyz,
        hu_means={k: round(v, 1) for k, v in appearance.hu.items() if not k.startswith("_")},
        organ_variety=None if variety is None else _rounded(dataclasses.asdict(variety)),
        lesions=plan.summary() if options.lesions else None,
        arms_down=any(p.name.startswith("arm_") for p in anatomy.parts) if options.arms else None,
        stomach_collapsed=builder.stomach_collapsed if options.collapsed_stomach else None,
        liver_mass=(mass.kind if mass is not None else "") if options.liver_masses > 0 else None,
        liver_fissures=fissures,
        gallbladder=gallbladder,
    )
    return image, mask, info


def _rounded(factors: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in factors.items()}


def generate_case(seed: int, options: PhantomOptions = DEFAULT_OPTIONS) -> tuple[sitk.Image, sitk.Image]:
    """One synthetic CT case: (image, mask) with exactly the same geometry.

    image: int16 HU; air about -1000, optionally -2048 or -3024 outside a circular field of view.
    mask: uint8 labels from flare_seg.labels (0 background, organs as listed there; both kidneys
        share one label). Deterministic for a given seed and options.
    """
    image, mask, _ = generate_case_with_info(seed, options)
    return image, mask


def _paint(grid: Grid, anatomy: Anatomy, hu: dict[str, float], options: PhantomOptions) -> Canvas:
    """The body layer, then every part in painting order, on a fresh canvas over `grid`."""
    canvas = Canvas(grid, h_mm=2.0 if options.size == "full" else 3.0)
    paint_body(canvas, anatomy.body, hu)
    for part in anatomy.parts:
        canvas.paint(part)
    return canvas


def _reconstruct(
    canvas: Canvas, rng: np.random.Generator, reconstruction: Reconstruction
) -> tuple[np.ndarray, np.ndarray]:
    """Noise, blur, int16 conversion and circular-FOV padding; returns the (image int16, mask uint8)
    arrays (z, y, x), with reserved mask codes written as background."""
    hu = canvas.hu
    add_noise(hu, rng, reconstruction.noise_sd_hu, reconstruction.blur_sigma_vox_xyz)
    blur(hu, reconstruction.blur_sigma_vox_xyz)
    image = to_int16(hu)
    mask = canvas.mask
    mask[mask == RESERVED] = FREE
    if reconstruction.pad_value is not None:
        outside = outside_circle(hu.shape)
        image[:, outside] = reconstruction.pad_value
        mask[:, outside] = FREE
    return image, mask


def _to_images(grid: Grid, image_zyx: np.ndarray, mask_zyx: np.ndarray) -> tuple[sitk.Image, sitk.Image]:
    """SimpleITK images on `grid`; numpy (z, y, x) arrays become SimpleITK (x, y, z) images."""
    image = sitk.GetImageFromArray(image_zyx)
    image.SetSpacing(grid.spacing_xyz)
    image.SetOrigin(grid.origin_xyz)
    image.SetDirection(grid.direction)
    mask = sitk.GetImageFromArray(mask_zyx)
    mask.CopyInformation(image)
    return image, mask

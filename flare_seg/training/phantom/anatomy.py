"""One sampled patient: the body layer and every other structure, in painting order.

`STRUCTURES` is the list of structures a patient is built from, in the order they are sampled. Each
entry adds its parts to an `AnatomyBuilder`, which holds the random stream, the case's appearance,
the skeleton landmarks and the landmarks that later structures are placed against (e.g. the kidneys
place the pancreas tail, the liver places the portal vein). The order fixes the random draws, so a new
structure goes where its landmarks are known, and changes the phantoms of every seed.

Parts are collected in three lists painted in this order: `force` (bones, vessels and other
structures that organs wrap around), `organs` (claimed in priority order kidneys, spleen, pancreas,
liver; each is kept clear of those before it), and `fillers` (muscles and bowel, which only take what
is left).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from flare_seg.training.phantom import bowel, organs, skeleton, soft_tissue, vessels
from flare_seg.training.phantom.appearance import Appearance, Waves
from flare_seg.training.phantom.body import THETA, Body, sample_body
from flare_seg.training.phantom.bowel import StomachPlan
from flare_seg.training.phantom.canvas import Part
from flare_seg.training.phantom.coarse import ShapeFn
from flare_seg.training.phantom.lesions import NO_LESIONS, LesionPlan
from flare_seg.training.phantom.organs import Exclusion
from flare_seg.training.phantom.params import uniform


@dataclass
class Anatomy:
    """One sampled patient: the body layer, then every other part in painting order."""

    body: Body
    parts: list[Part]
    kidney_bottom_z: float  # lowest kidney pole, mm (anatomy z), for fields of view that cut it
    reach_mm: float | None = None  # in-plane reach the field of view covers (None: the skin's)

    def in_plane_reach_mm(self) -> float:
        """Distance (mm) from the anatomy z axis that the field of view must cover."""
        return self.body.skin_radius_max() if self.reach_mm is None else self.reach_mm


@dataclass(frozen=True)
class OrganVariety:
    """Organ size and shape factors beyond the textbook phantom (all 1.0: the textbook draw).

    pancreas_thickness: the pancreas' cross-section radii (an atrophic pancreas below 1).
    liver_depth: the right lobe's antero-posterior semi-axis (the volume stays calibrated).
    spleen_depth: the spleen's width across its long axis (the volume stays calibrated).
    spleen_tilt: how far the spleen's long axis leans to the front (along the ribs).
    cavity_width, cavity_depth: the abdominal cavity's half-width and its depth in front of the spine
        (a rounder, deeper abdomen with both).
    spleen_flank_deg: how many degrees the spleen's centre turns from behind the left flank towards
        the flank itself (further out to the side).
    spleen_inset: how far the spleen's centre lies inside the cavity wall, as a factor on the
        textbook distance (below 1: closer to the ribs).
    pancreas_fat_fraction: the share of the pancreas taken by fat between its lobules (0: none).
    pancreas_lobule_mm: the lobules' size (the shortest wavelength of the lobule pattern), mm.
    pancreas_lobule_seed: seed of the lobule pattern.
    liver_left_lobe: the left lobe's reach to the left and its width, as a factor (above 1: a left
        lobe that spans the epigastrium in front of the stomach, towards the spleen).
    liver_forward_mm: how far the liver's centre lies in front of the textbook position, mm.
    kidney_rise_mm: how far both kidneys lie above the textbook height, mm (the right upper pole
        then sits in the liver's renal impression).
    kidney_turn_deg: how many degrees further the kidneys' hila turn to the front.
    kidney_lean: how much further the kidneys' long axes lean with the lower pole to the front (the
        added antero-posterior component of the axis per unit of its height).
    spleen_volume: the spleen's volume, as a factor on the textbook draw.
    spleen_rise_mm: how far the spleen's centre lies above the textbook height under the dome, mm.
    liver_left_lobe_drop_mm: how far the left lobe's centre lies below the textbook height, mm (the
        lowest point of the liver's leftmost 30% then lies about 3-6 cm above the liver's lowest
        point instead of 6-10 cm, as in many real livers).
    liver_left_lobe_thickness: the left lobe's antero-posterior semi-axis, as a factor (below 1: a
        plate lying against the front abdominal wall, draped in front of the stomach; 1: the
        textbook wedge, which fills the front of the upper abdomen).
    liver_left_lobe_height: the left lobe's cranio-caudal semi-axis, as a factor.
    liver_left_lobe_front_mm: where a plate-like left lobe's front lies, mm inside the front
        cavity wall (negative: pressed against it, the wall shaping its front).
    pancreas_forward_mm: how much more fat lies between the aorta and the pancreas' neck, mm: head,
        neck and body lie that much further to the front, the tail (at the splenic hilum) a third
        of it; less where the abdomen has no room for it (the neck's centre stays within 55% of
        the way from the aorta to the front wall).
    pancreas_tail_drop_mm: how much lower the pancreas' tail lies than drawn, mm (the body half of
        it): a flatter gland, its tail no more than 5 mm below the neck.
    """

    pancreas_thickness: float = 1.0
    liver_depth: float = 1.0
    spleen_depth: float = 1.0
    spleen_tilt: float = 1.0
    cavity_width: float = 1.0
    cavity_depth: float = 1.0
    spleen_flank_deg: float = 0.0
    spleen_inset: float = 1.0
    pancreas_fat_fraction: float = 0.0
    pancreas_lobule_mm: float = 8.0
    pancreas_lobule_seed: int = 0
    liver_left_lobe: float = 1.0
    liver_forward_mm: float = 0.0
    kidney_rise_mm: float = 0.0
    kidney_turn_deg: float = 0.0
    kidney_lean: float = 0.0
    spleen_volume: float = 1.0
    spleen_rise_mm: float = 0.0
    liver_left_lobe_drop_mm: float = 0.0
    liver_left_lobe_thickness: float = 1.0
    liver_left_lobe_height: float = 1.0
    liver_left_lobe_front_mm: float = 0.0
    pancreas_forward_mm: float = 0.0
    pancreas_tail_drop_mm: float = 0.0


class AnatomyBuilder:
    """Samples one patient's anatomy, structure by structure, in the anatomy frame (LPS mm).

    `hu` holds the case's mean HU per tissue; paint functions capture it. The landmark attributes
    declared below are set by the structures of `STRUCTURES` that place them.
    """

    # landmarks set by the structures (anatomy mm unless noted)
    bifurcation_z: float  # aortic bifurcation
    r_aorta: float
    x_aorta: float  # abdominal aorta centre x
    aorta_z: np.ndarray  # aorta centreline knots: heights and y
    aorta_y: np.ndarray
    x_ivc: float
    ivc_z: np.ndarray  # IVC centreline knots: heights and y
    ivc_y: np.ndarray
    left_kidney_z: float
    left_kidney: tuple[np.ndarray, np.ndarray, float]  # centre (x, y, z), semi-axes, perirenal halo
    kidney_bottom_z: float
    spleen_center: np.ndarray
    spleen_halo: float
    spleen_hilum: np.ndarray
    to_spleen_hilum: np.ndarray  # unit vector
    z_pancreas: float
    pancreas_head: np.ndarray
    pancreas_head_semi: tuple[float, float, float]
    pancreas_halo: float
    pancreas_neck: np.ndarray
    r_splenic: float  # splenic vein radius
    splenic_curve: np.ndarray  # (4, 3) control points
    confluence: np.ndarray  # portal confluence
    liver_center: np.ndarray
    liver_scale: float
    liver_hilum: np.ndarray
    liver_shape: tuple[ShapeFn, np.ndarray, np.ndarray]  # the liver's implicit and its box
    pylorus: np.ndarray
    stomach_collapsed: bool  # empty (collapsed) stomach

    def __init__(
        self,
        rng: np.random.Generator,
        appearance: Appearance,
        variety: OrganVariety | None = None,
        lesions: LesionPlan = NO_LESIONS,
        stomach: StomachPlan | None = None,
    ) -> None:
        self.rng, self.hu = rng, appearance.hu
        self.variety = variety or OrganVariety()
        self.lesions = lesions
        self.stomach = stomach  # None: the textbook stomach (empty in 25% of cases, no folds)
        self.phase, self.oral_contrast = appearance.phase, appearance.oral_contrast
        self.force: list[Part] = []
        self.organs: list[Part] = []
        self.fillers: list[Part] = []
        self.exclusions: list[Exclusion] = []
        # skeleton landmarks: L1 centre height, vertebral pitch, iliac crest (L4), sacrum (S1)
        self.pitch = self.u(30, 35)
        self.l1_z = self.u(-150, -125)
        self.crest_z = self.l1_z - 3 * self.pitch + self.u(-5, 10)
        self.sacrum_z = self.l1_z - 4.5 * self.pitch
        self.spine = skeleton.sample_spine(self)
        v = self.variety
        self.body = sample_body(rng, self.spine.y_l1, self.crest_z, self.l1_z, v.cavity_width, v.cavity_depth)
        self.cav_a = float(np.interp(0.0, THETA, self.body.cavity_lut))  # cavity half-width
        self.cav_ant = float(np.interp(-np.pi / 2, THETA, self.body.cavity_lut))  # to the front wall
        self.top_z = 400.0  # vertical structures run up to here (the field of view crops them)

    def u(self, lo: float, hi: float) -> float:
        """One uniform draw from the anatomy stream."""
        return uniform(self.rng, lo, hi)

    def build(self) -> Anatomy:
        """Adds every structure of `STRUCTURES`, in order."""
        for _, add in STRUCTURES:
            add(self)
        return Anatomy(self.body, [*self.force, *self.organs, *self.fillers], self.kidney_bottom_z)

    # --- helpers for the structures ---------------------------------------------------------------

    def cavity_clip(self, gap_mm: float) -> ShapeFn:
        """Shape that keeps `gap_mm` inside the abdominal cavity wall."""
        return lambda x, y, z: self.body.cavity_sdf(x, y, z) + gap_mm

    def below_diaphragm(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Shape of the space below the diaphragm's lower surface (mm)."""
        return z - self.body.diaphragm_z(x, y)

    def above_diaphragm(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Shape of the space above the diaphragm's upper surface (mm)."""
        return self.body.diaphragm_z(x, y) + self.body.diaphragm_mm - z

    def aorta_y_at(self, z: float) -> float:
        """y (mm) of the aorta's centre at height z (mm)."""
        return float(np.interp(z, self.aorta_z, self.aorta_y))

    def texture(self, sd: float, wavelength_mm: tuple[float, float] = (40, 120), waves: int = 3) -> Waves:
        """A smooth texture field of standard deviation `sd` HU drawn from the anatomy stream."""
        return Waves.random(self.rng, waves, wavelength_mm, sd)

    def choice(self, options: Sequence[str], weights: Sequence[float]) -> str:
        """One of `options`, drawn with the given (unnormalized) weights."""
        w = np.asarray(weights, float)
        return str(options[int(self.rng.choice(len(options), p=w / w.sum()))])


# The structures of one patient in sampling order: (name, function that adds its parts).
STRUCTURES: tuple[tuple[str, Callable[[AnatomyBuilder], None]], ...] = (
    ("spine", skeleton.add_spine),
    ("great_vessels", vessels.add_great_vessels),
    ("kidneys", organs.add_kidneys),
    ("spleen", organs.add_spleen),
    ("pancreas", organs.add_pancreas),
    ("liver", organs.add_liver),
    ("portal_system", vessels.add_portal_system),
    ("gallbladder", soft_tissue.add_gallbladder),
    ("heart", soft_tissue.add_heart),
    ("femoral_heads", skeleton.add_femoral_heads),
    ("bladder", soft_tissue.add_bladder),
    ("psoas", soft_tissue.add_psoas),
    ("stomach", bowel.add_stomach),
    ("duodenum", bowel.add_duodenum),
    ("colon", bowel.add_colon),
    ("small_bowel", bowel.add_small_bowel),
)


def build_anatomy(rng: np.random.Generator, appearance: Appearance) -> Anatomy:
    """Samples one patient from the anatomy stream `rng`."""
    return AnatomyBuilder(rng, appearance).build()

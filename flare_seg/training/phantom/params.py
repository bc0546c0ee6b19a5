"""What a phantom is asked for and what was sampled; mask codes and the random streams shared by
the generation steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from flare_seg.labels import BACKGROUND, LABELS

_LABEL_BY_NAME = {name: value for value, name in LABELS.items()}
LIVER = _LABEL_BY_NAME["liver"]
KIDNEY = _LABEL_BY_NAME["kidney"]
SPLEEN = _LABEL_BY_NAME["spleen"]
PANCREAS = _LABEL_BY_NAME["pancreas"]
FREE = BACKGROUND
RESERVED = 255  # internal mask code: claimed by a non-organ structure; written out as background
if RESERVED in LABELS:
    raise RuntimeError("label 255 is reserved by the phantom generator")

SIZE_LIMITS = {"full": 320, "small": 150}  # most slices per case


@dataclass(frozen=True)
class PhantomOptions:
    """How phantoms are sampled.

    size: "full" gives 512 x 512 voxels in-plane with 0.6-1.0 mm pixels and 1-5 mm slices over a 25-45
        cm field of view (FLARE21-like); "small" gives about 96-128 voxels in-plane with 3-4 mm pixels
        and 3-6 mm slices, for fast tests (same anatomy in mm, same code path).
    flip_probability: probability that each of the three grid axes is flipped in the direction matrix.
    oblique_probability: probability of composing a 5-15 degree rotation about a random axis into the
        direction matrix.
    iliac_wings: draw the bony pelvis (iliac wings as thick plates, femoral necks and trochanters,
        gluteal muscles; ``phantom.pelvis``) instead of a thin shell in the muscle wall.
    hu_spread_hu: SD (HU) of a per-case offset of each soft tissue's mean HU, with a soft-tissue
        contrast scale and sometimes a fatty liver or pancreas (``phantom.variety``); 0 keeps the
        textbook ranges.
    anatomy_variety: organ size, shape and bone density beyond the textbook (an atrophic pancreas,
        a deeper liver and spleen, a spleen tilted along the ribs, osteopenic bone;
        ``phantom.variety``).
    lesions: kidney cysts and liver lesions (cysts, hypodense tumours, large masses), labelled as
        their organ (``phantom.lesions``).
    arms: the arms down beside the trunk in some cases (``phantom.arms``).
    lateral_spleen: the spleen further out to the left flank and closer to the ribs in some cases
        (``phantom.variety``).
    fatty_pancreas: a lobulated, fat-infiltrated and thinner pancreas in some cases, labelled as a
        whole (``phantom.variety``).
    organ_layout: the organs placed and sized as in many real abdomens in some cases: a larger left
        liver lobe, the liver further to the front, higher kidneys turned further to the front, a
        larger and higher spleen (``phantom.variety``).
    collapsed_stomach: an empty stomach in some cases, a thick wall of rugal folds whose mucosa
        enhances with contrast (``phantom.bowel``).
    liver_masses: the share of cases (0 to 1; 0: none) with one large liver mass (hypodense,
        hyperdense, necrotic or heterogeneous, often bulging out of the liver), labelled liver
        (``phantom.lesions``).
    low_left_lobe: a left liver lobe that reaches lower, in front of the stomach and towards the
        gallbladder's level, in some cases (``phantom.variety``).
    thin_left_lobe: a left liver lobe that is a thin plate against the front abdominal wall, with
        stomach and bowel behind it, in some cases (``phantom.variety``).
    pancreas_lipomatosis: an atrophic pancreas mostly replaced by fat in some cases, labelled as a
        whole (``phantom.variety``).
    pancreas_forward: more fat between the aorta and the pancreas, the gland further to the front,
        in some cases (``phantom.variety``).
    liver_fissures: fat-filled fissures in the liver in most cases (the umbilical fissure with the
        ligamentum teres, the falciform ligament's groove, the fissure for the ligamentum venosum),
        left out of the liver label (``phantom.fissures``).
    gallbladder_fossa: the gallbladder in a fossa on the liver's underside (a quarter to two thirds
        of it inside the liver's outline, its fundus forward and down), pear-shaped, with a wall,
        sludge or stones in some cases (``phantom.gallbladder``).
    flat_pancreas: a pancreas whose tail lies lower, nearer the head's height, in some cases
        (``phantom.variety``).
    stomach_in_front: the stomach kept in front of the pancreas, with fat between them, instead of
        its tube wrapping around the gland's body and tail (``phantom.bowel``).
    true_pelvis: the lesser pelvis and the hips below the iliac crests (the sacrum ending at the
        coccyx, pubic and ischial bones, femoral shafts, the iliacus, obturator, gluteal and thigh
        muscles) with the ``iliac_wings`` bones, and abdomen-pelvis fields of view that reach below
        the hips (``phantom.lesser_pelvis``).
    """

    size: Literal["full", "small"] = "full"
    flip_probability: float = 0.5
    oblique_probability: float = 0.0
    iliac_wings: bool = False
    hu_spread_hu: float = 0.0
    anatomy_variety: bool = False
    lesions: bool = False
    arms: bool = False
    lateral_spleen: bool = False
    fatty_pancreas: bool = False
    organ_layout: bool = False
    collapsed_stomach: bool = False
    liver_masses: float = 0.0
    low_left_lobe: bool = False
    thin_left_lobe: bool = False
    pancreas_lipomatosis: bool = False
    pancreas_forward: bool = False
    liver_fissures: bool = False
    gallbladder_fossa: bool = False
    true_pelvis: bool = False
    flat_pancreas: bool = False
    stomach_in_front: bool = False

    def __post_init__(self) -> None:
        if self.size not in SIZE_LIMITS:
            raise ValueError(f"size must be one of {sorted(SIZE_LIMITS)}, got {self.size!r}")
        for name in ("flip_probability", "oblique_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
        if not 0.0 <= self.liver_masses <= 1.0:
            raise ValueError(f"liver_masses must lie in [0, 1], got {self.liver_masses!r}")
        if not 0.0 <= self.hu_spread_hu <= 100.0:
            raise ValueError(f"hu_spread_hu must lie in [0, 100], got {self.hu_spread_hu!r}")


DEFAULT_OPTIONS = PhantomOptions()


@dataclass(frozen=True)
class PhantomInfo:
    """What was sampled for one case (for bookkeeping and tests; not needed to use the images).

    hu_means: the case's mean HU per tissue before texture, blur and noise.
    organ_variety: the organ size and shape factors (``OrganVariety``) with anatomy_variety, else None.
    lesions: lesion counts per organ with the lesions option, else None.
    arms_down: whether the arms lie beside the trunk, with the arms option, else None.
    stomach_collapsed: whether the stomach is empty (painted as folds), with the collapsed_stomach
        option, else None.
    liver_mass: the kind of large liver mass ("" for none), with the liver_masses option, else None.
    liver_fissures: the liver's fissures drawn ("umbilical", "teres", "falciform", "venosum"), with
        the liver_fissures option, else None.
    gallbladder: the gallbladder's volume (mL), share inside the liver's outline, wall, sludge and
        stone count with the gallbladder_fossa option ({} for a case without one), else None.
    fov: one of FIELDS_OF_VIEW; "cut_top"/"cut_bottom" cut the liver/spleen top or the kidneys' bottom.
    flipped_xyz: which grid axes point against the LPS axes (before any oblique tilt).
    pad_value: HU written outside the circular reconstruction field of view, or None.
    """

    seed: int
    size: str
    phase: str
    fov: str
    noise_sd_hu: float
    blur_sigma_vox_xyz: tuple[float, float, float]
    pad_value: int | None
    flipped_xyz: tuple[bool, bool, bool]
    oblique_deg: float
    size_xyz: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]
    hu_means: dict[str, float]
    organ_variety: dict[str, float] | None = None
    lesions: dict[str, int] | None = None
    arms_down: bool | None = None
    stomach_collapsed: bool | None = None
    liver_mass: str | None = None
    liver_fissures: tuple[str, ...] | None = None
    gallbladder: dict[str, float | int | bool] | None = None


def uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """One draw from U(lo, hi) as a Python float."""
    return float(rng.uniform(lo, hi))


def case_rngs(seed: int) -> list[np.random.Generator]:
    """The four independent random streams of one case: anatomy, acquisition grid, appearance (HU)
    and reconstruction (noise, blur, circle), spawned from SeedSequence(seed)."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(4)]


def option_rng(seed: int, index: int) -> np.random.Generator:
    """Random stream ``index`` (0-based; 0-3 are ``case_rngs``) of a case seed: each generator
    option draws from its own, so turning one on leaves every other draw of the seed unchanged."""
    return np.random.default_rng(np.random.SeedSequence(int(seed)).spawn(index + 1)[index])

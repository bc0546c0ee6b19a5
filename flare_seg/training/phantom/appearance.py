"""Appearance: tissue HU per contrast phase, smooth texture fields and image noise.

`Appearance` is what one case draws before its anatomy: the contrast phase, a mean HU per tissue
from that phase's range, and whether oral contrast was given. Structures read their HU from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from flare_seg.training.phantom.shapes import plane_sin, unit

PHASES = ("unenhanced", "arterial", "portal_venous", "delayed")
PHASE_PROBABILITIES = (0.2, 0.2, 0.45, 0.15)

# Mean HU ranges per tissue, in PHASES order; a case draws one mean per tissue from its phase's range.
HU_RANGES: dict[str, tuple[tuple[float, float], ...]] = {
    "air": ((-1000, -1000),) * 4,
    "gas": ((-1010, -970),) * 4,
    "lung": ((-900, -800),) * 4,
    "fat": ((-120, -80),) * 4,
    "visceral_fat": ((-115, -85),) * 4,
    "skin": ((10, 50),) * 4,
    "muscle": ((40, 50), (45, 60), (50, 70), (50, 65)),
    "liver": ((55, 65), (65, 85), (100, 130), (85, 105)),
    "spleen": ((45, 50), (100, 140), (110, 130), (85, 105)),
    "kidney_cortex": ((30, 40), (150, 220), (150, 200), (110, 150)),
    "kidney_medulla": ((25, 35), (70, 110), (125, 175), (120, 170)),
    "pancreas": ((40, 50), (100, 130), (100, 130), (70, 95)),
    "artery": ((35, 45), (250, 400), (150, 250), (100, 140)),
    "portal_vein": ((35, 45), (80, 130), (150, 200), (100, 140)),
    "vein": ((35, 45), (60, 100), (130, 180), (100, 140)),
    "myocardium": ((40, 50), (90, 130), (90, 120), (80, 100)),
    "bowel_wall": ((30, 45), (60, 100), (70, 110), (60, 90)),
    "water": ((0, 20),) * 4,
    "food": ((10, 45),) * 4,
    "urine": ((0, 15), (0, 20), (5, 25), (300, 900)),
    "stool": ((-150, 30),) * 4,
    "oral_contrast": ((200, 450),) * 4,
    "csf": ((0, 15),) * 4,
    "cord": ((30, 40),) * 4,
    "disc": ((70, 100),) * 4,
    "cancellous": ((200, 400),) * 4,
    "cortical": ((700, 1500),) * 4,
    "rib": ((300, 700),) * 4,
    "cartilage": ((90, 140),) * 4,
    "table": ((-300, 200),) * 4,
}


@dataclass(frozen=True)
class Appearance:
    """What one case looks like before noise: the contrast phase (one of PHASES), the mean HU per
    tissue (keys of HU_RANGES) and whether oral contrast was given."""

    phase: str
    hu: dict[str, float]
    oral_contrast: bool


def sample_appearance(rng: np.random.Generator) -> Appearance:
    """Draws the phase, one mean HU per tissue from that phase's range, and oral contrast (30%)."""
    phase = int(rng.choice(len(PHASES), p=PHASE_PROBABILITIES))
    hu = sample_hu(rng, phase)
    oral_contrast = bool(rng.random() < 0.3)
    return Appearance(PHASES[phase], hu, oral_contrast)


def sample_hu(rng: np.random.Generator, phase: int) -> dict[str, float]:
    """One mean HU per tissue, uniform in its range for phase index `phase` (into PHASES)."""
    return {name: float(rng.uniform(*ranges[phase])) for name, ranges in HU_RANGES.items()}


@dataclass(frozen=True)
class Waves:
    """Smooth scalar field with zero mean and standard deviation `sd` (a sum of plane waves)."""

    k: np.ndarray
    phase: np.ndarray
    sd: float

    @staticmethod
    def random(rng: np.random.Generator, n: int, wavelength_mm: tuple[float, float], sd: float) -> Waves:
        """n plane waves with wavelengths uniform in `wavelength_mm` (mm) and random directions."""
        lam = rng.uniform(*wavelength_mm, n)
        k = np.stack([unit(rng.normal(size=3)) for _ in range(n)]) * (2 * np.pi / lam)[:, None]
        return Waves(k, rng.uniform(0, 2 * np.pi, n), sd)

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        total: np.ndarray | float = 0.0
        for k, ph in zip(self.k, self.phase, strict=True):
            total = total + plane_sin(k, float(ph), x, y, z)
        return np.asarray(total * np.float32(self.sd * math.sqrt(2.0 / len(self.k))), np.float32)


def gaussian_sum_sq(sigma: float) -> float:
    """Sum of squared weights of scipy's 1-D Gaussian kernel (truncate=3): noise variance factor."""
    if sigma <= 0:
        return 1.0
    delta = np.zeros(41)
    delta[20] = 1.0
    return float(np.sum(ndimage.gaussian_filter1d(delta, sigma, truncate=3.0) ** 2))


def add_noise(
    hu: np.ndarray,
    rng: np.random.Generator,
    noise_sd_hu: float,
    blur_sigma_vox_xyz: tuple[float, float, float],
) -> None:
    """Adds white Gaussian noise to the (z, y, x) float32 HU volume in place, slab by slab.

    The noise comes before the blur (sigma in voxels, (x, y, z)) with its SD raised so that the
    blurred noise has SD `noise_sd_hu`, which gives it the in-plane correlation of real CT noise.
    """
    factor = math.sqrt(math.prod(gaussian_sum_sq(s) for s in blur_sigma_vox_xyz))
    sd = np.float32(noise_sd_hu / factor)
    slab = 16
    for k0 in range(0, hu.shape[0], slab):
        block = hu[k0 : k0 + slab]
        block += rng.standard_normal(block.shape, dtype=np.float32) * sd

"""Focal lesions inside the labelled organs (``PhantomOptions.lesions``): simple kidney cysts,
often bulging out of the kidney, and liver cysts, hypodense tumours and large masses. A lesion is
part of its organ's label, as in FLARE21's reference masks, so a network must take a dark hole or
bulge for the organ it sits in, not for a gap in it.

Lesions are spheres in the organ's template coordinates (so that they follow its warp), placed by
a direction and a depth relative to the template's semi-axes; they are drawn from a seventh random
stream of the case seed, so that a seed's anatomy is otherwise the same with the option on or off.

``PhantomOptions.liver_masses`` adds, in that share of the cases (a third from the command line
unless given) and from a thirteenth stream, one large liver mass as tumours look in real scans
(``sample_liver_mass``): hypodense, hyperdense (arterial-phase enhancement), with a necrotic core,
or heterogeneous, 5-15 cm across, often bulging out of the liver's outline, in a liver grown by the
mass's volume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flare_seg.training.phantom.appearance import Waves
from flare_seg.training.phantom.coarse import ShapeFn
from flare_seg.training.phantom.params import option_rng
from flare_seg.training.phantom.shapes import Frame, Warp, unit

KIDNEY_CYST_PROBABILITY = 0.35  # per kidney (simple cysts are common after 50)
LIVER_LESION_PROBABILITY = 0.45  # per case: cysts, metastases, a tumour
LARGE_MASS_PROBABILITY = 0.12  # per case with liver lesions: one mass of 4-8 cm radius
LIVER_MASS_SHARE = 1 / 3  # the share of cases with a mass that --liver-masses gives without a value
LIVER_MASS_KINDS = ("hypodense", "hyperdense", "necrotic", "heterogeneous")


@dataclass(frozen=True)
class Lesion:
    """A sphere at ``position`` (template coordinates: fractions of the organ's semi-axes) with
    radius ``radius_mm``; ``hu`` is its mean HU if ``fluid``, else an offset from the organ's.

    A mass may also have a necrotic core (the inner ``core_fraction`` of its radius at ``core_hu``),
    a smooth ``texture`` (HU added inside it), and ``grows_organ``: the organ's volume target grows
    by the mass's, as a liver with a large tumour is larger.
    """

    position: tuple[float, float, float]
    radius_mm: float
    hu: float
    fluid: bool
    core_fraction: float = 0.0
    core_hu: float = 0.0
    texture: Waves | None = None
    grows_organ: bool = False
    kind: str = ""


@dataclass(frozen=True)
class LesionPlan:
    """The lesions of one case, per organ (kidneys by side: +1 left, -1 right)."""

    left_kidney: tuple[Lesion, ...] = ()
    right_kidney: tuple[Lesion, ...] = ()
    liver: tuple[Lesion, ...] = ()

    def kidney(self, side: int) -> tuple[Lesion, ...]:
        return self.left_kidney if side > 0 else self.right_kidney

    def summary(self) -> dict[str, int]:
        """Lesion counts per organ (recorded in the case info)."""
        return {
            "left_kidney": len(self.left_kidney),
            "right_kidney": len(self.right_kidney),
            "liver": len(self.liver),
        }


NO_LESIONS = LesionPlan()


def lesion_rng(seed: int) -> np.random.Generator:
    """The seventh random stream of a case seed."""
    return option_rng(seed, 6)


def sample_lesions(rng: np.random.Generator) -> LesionPlan:
    """Kidney cysts (1-3, 4-25 mm radius, water, centred near the surface so that many bulge out)
    and liver lesions (1-5: cysts, or hypodense solid lesions 15-70 HU below the liver; sometimes
    one large mass)."""
    kidneys = [_kidney_cysts(rng) if rng.random() < KIDNEY_CYST_PROBABILITY else () for _ in range(2)]
    liver: tuple[Lesion, ...] = ()
    if rng.random() < LIVER_LESION_PROBABILITY:
        liver = _liver_lesions(rng)
    return LesionPlan(left_kidney=kidneys[0], right_kidney=kidneys[1], liver=liver)


def liver_mass_rng(seed: int) -> np.random.Generator:
    """The thirteenth random stream of a case seed (the mass of ``liver_masses``)."""
    return option_rng(seed, 12)


def sample_liver_mass(rng: np.random.Generator, phase: str, share: float = LIVER_MASS_SHARE) -> Lesion | None:
    """One large liver mass in ``share`` of cases (else None): 25-75 mm radius, centred from
    mid-liver to its surface (so that many bulge out), one of ``LIVER_MASS_KINDS``:
    hypodense (15-60 HU below the liver), hyperdense (10-50 HU above it when enhanced, as
    hepatocellular carcinoma in the arterial and portal-venous phases; else slightly hypodense),
    necrotic (a rim near the liver's HU around a 5-35 HU core of 30-70% of the radius), or
    heterogeneous (a smooth texture of SD 15-30 HU about 0-40 HU below the liver); the other kinds
    carry a faint texture of SD 3-8 HU."""
    if rng.random() >= share:
        return None
    radius = float(rng.uniform(25, 75))
    position = _position(rng, 0.3, 0.9)
    kind = LIVER_MASS_KINDS[int(rng.integers(len(LIVER_MASS_KINDS)))]
    texture = Waves.random(rng, 4, (10, 40), float(rng.uniform(3, 8)))
    core_fraction, core_hu = 0.0, 0.0
    if kind == "hypodense":
        offset = -float(rng.uniform(15, 60))
    elif kind == "hyperdense":
        enhanced = phase in ("arterial", "portal_venous")
        offset = float(rng.uniform(10, 50)) if enhanced else -float(rng.uniform(5, 20))
    elif kind == "necrotic":
        offset = float(rng.uniform(-20, 10))
        core_fraction, core_hu = float(rng.uniform(0.3, 0.7)), float(rng.uniform(5, 35))
    else:
        offset = -float(rng.uniform(0, 40))
        texture = Waves.random(rng, 6, (10, 30), float(rng.uniform(15, 30)))
    return Lesion(position, radius, offset, False, core_fraction, core_hu, texture, True, kind)


def _kidney_cysts(rng: np.random.Generator) -> tuple[Lesion, ...]:
    return tuple(
        Lesion(_position(rng, 0.6, 1.05), float(rng.uniform(4, 25)), float(rng.uniform(0, 20)), True)
        for _ in range(int(rng.integers(1, 4)))
    )


def _liver_lesions(rng: np.random.Generator) -> tuple[Lesion, ...]:
    lesions = []
    if rng.random() < LARGE_MASS_PROBABILITY:
        radius = float(rng.uniform(40, 80))
        lesions.append(Lesion(_position(rng, 0.2, 0.6), radius, -float(rng.uniform(15, 60)), False))
    for _ in range(int(rng.integers(1, 6))):
        if rng.random() < 0.4:
            lesion = Lesion(
                _position(rng, 0.1, 0.9), float(rng.uniform(4, 30)), float(rng.uniform(0, 20)), True
            )
        else:
            lesion = Lesion(
                _position(rng, 0.1, 0.85), float(rng.uniform(5, 30)), -float(rng.uniform(15, 70)), False
            )
        lesions.append(lesion)
    return tuple(lesions)


def _position(rng: np.random.Generator, depth_lo: float, depth_hi: float) -> tuple[float, float, float]:
    """A point at depth U(lo, hi) (1: the surface) along a random direction, in semi-axis units."""
    p = unit(rng.normal(size=3)) * rng.uniform(depth_lo, depth_hi)
    return (float(p[0]), float(p[1]), float(p[2]))


def lesion_sdf(
    lesions: tuple[Lesion, ...], frame: Frame, warp: Warp, semi: np.ndarray, scale: float
) -> ShapeFn | None:
    """The union of ``lesions`` as a signed distance (mm, anatomy coordinates) for an organ whose
    template has semi-axes ``semi`` (mm at scale 1) in ``frame`` with ``warp``, at ``scale``; None
    without lesions."""
    return None if not lesions else _union_sdf(lesions, frame, warp, semi, scale)


def _union_sdf(
    lesions: tuple[Lesion, ...], frame: Frame, warp: Warp, semi: np.ndarray, scale: float
) -> ShapeFn:
    """``lesion_sdf`` of one or more lesions."""
    centres = [np.asarray(lesion.position) * semi for lesion in lesions]
    radii = [lesion.radius_mm for lesion in lesions]

    def fn(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        u, v, w = warp.warped(frame, scale, x, y, z)
        out: np.ndarray | None = None
        for c, r in zip(centres, radii, strict=True):
            d = scale * np.sqrt((u - c[0]) ** 2 + (v - c[1]) ** 2 + (w - c[2]) ** 2) - r
            out = d if out is None else np.minimum(out, d)
        assert out is not None
        return out.astype(np.float32)

    return fn


def each_lesion_sdf(
    lesions: tuple[Lesion, ...], frame: Frame, warp: Warp, semi: np.ndarray, scale: float
) -> list[ShapeFn]:
    """One signed distance per lesion (see ``lesion_sdf``)."""
    return [_union_sdf((lesion,), frame, warp, semi, scale) for lesion in lesions]


def lesion_hu(lesion: Lesion, organ_hu: float) -> float:
    """The mean HU of ``lesion`` in an organ of mean ``organ_hu``."""
    return lesion.hu if lesion.fluid else organ_hu + lesion.hu

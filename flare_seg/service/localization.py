"""The organs' box from the localization heatmaps, checked against anatomy before it is trusted.

The localization network gives one heatmap per organ on a coarse (~6 mm) canonical LPS grid. On a
field of view or an appearance it never saw (a pelvis, a reconstruction circle, a large mass), it
can fire far from the organ as well as on it. A box that is the union of everything above the
threshold then spans the whole scan and the segmentation network, whose spatial-configuration
branch reads positions relative to the box centre, puts organs in the wrong place.

``plan_localization`` therefore:

1. keeps, per organ, the connected blob that holds most of the heatmap's mass (for the kidneys,
   the two largest blobs when they lie side by side: one label covers both), plus fragments close
   to it; where an organ's heatmap has rival blobs of comparable mass (a liver in the pelvis as
   large as the real one, as an oblique abdomen-pelvis scan gives), the organs' blobs are chosen
   together: the choice that leaves the most organs consistent with each other's layout (step 2),
   then the one holding the most mass;
2. checks each organ's extent and volume against generous adult ranges, and the organs' layout
   (the spleen left of the liver; each organ within a plausible height of the others);
3. drops organs that fail, with a warning; grows the segmented region when an organ is missing or
   dropped (it may be anywhere near the others); and falls back to the whole volume, with a
   warning, when no organ is left.

An organ cut off at the scan's top or bottom is normal (a scan that starts below the diaphragm cuts
the liver and spleen): it is never judged too small, its region to segment ends at the edge, and
the organs' box, whose centre anchors the segmentation network's position channels, is extended
past the edge to the organ's typical length, so that the missing part does not pull the centre
towards the middle of the scan.

Everything is in edge coordinates of the localization grid ((z, y, x), voxel ``i`` covers
[i, i + 1)), as in ``flare_seg.grid``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from flare_seg.labels import ORGANS

# Largest plausible extent (mm, (z, y, x)) and volume (mL) of each organ's heatmap in an adult,
# generous (about 1.5x the textbook upper values: hepatomegaly, splenomegaly, a large mass).
# "kidney" covers both kidneys (one label): side by side, at heights up to ~8 cm apart.
MAX_EXTENT_MM_ZYX: dict[str, tuple[float, float, float]] = {
    "liver": (300.0, 260.0, 300.0),
    "kidney": (230.0, 150.0, 320.0),
    "spleen": (230.0, 200.0, 170.0),
    "pancreas": (140.0, 130.0, 280.0),
}
MAX_VOLUME_ML: dict[str, float] = {"liver": 5000.0, "kidney": 1200.0, "spleen": 2500.0, "pancreas": 400.0}
# No organ's centroid lies further in height from the median of the other organs' centroids. In
# adults the liver, kidneys, spleen and pancreas centroids lie within about 8 cm of each other (on
# the shipped models' phantoms at most 105 mm: a low pair of kidneys); a heatmap blob 15 cm away
# is the pelvis or the chest mistaken for the organ (a spleen in the pelvis on a scan that starts
# mid-liver). The exception this misses: a kidney label that is only a transplant in the iliac
# fossa, which is then segmented only if it lies in the grown region.
MAX_HEIGHT_APART_MM = 150.0
# The spleen's centroid lies to the patient's left (+x in LPS) of the liver's by at least this.
SPLEEN_LEFT_OF_LIVER_MM = 30.0
FRAGMENT_GAP_MM = 12.0  # blobs this close to an organ's main blob are part of it
KIDNEY_PAIR_MIN_MASS = 0.15  # the second kidney blob holds at least this fraction of the first's mass
KIDNEY_PAIR_MIN_APART_MM = 50.0  # ... lies this far to the side of it
KIDNEY_PAIR_MAX_HEIGHT_MM = 100.0  # ... and this close in height
# A blob that holds at least this fraction of an organ's largest blob's mass is a rival to it: the
# organs' blobs are then chosen together, by their layout (at most MAX_RIVALS per organ, the
# largest first). On the real abdomen-pelvis CT the pelvis's spurious blobs hold 3 to 40 % of the
# organ's mass straight, and 100 % (the liver) when the scan is oblique.
RIVAL_MIN_MASS = 0.25
MAX_RIVALS = 3
GROW_MM = 40.0  # region grown on every side when an organ is missing or was dropped
# Typical adult cranio-caudal length (mm) of each organ's label ("kidney": both kidneys, the right
# one lower). An organ cut off at the scan's top or bottom face is extended to it, for the box only.
TYPICAL_LENGTH_MM = {"liver": 150.0, "kidney": 120.0, "spleen": 110.0, "pancreas": 60.0}


@dataclass(frozen=True)
class OrganLocation:
    """One organ's blob on the localization grid (edge coordinates, (z, y, x))."""

    name: str
    lo_zyx: tuple[float, float, float]
    hi_zyx: tuple[float, float, float]
    centroid_mm_zyx: tuple[float, float, float]  # from the grid's leading edge
    volume_ml: float  # heatmap mass (occupancy) in mL
    peak: float
    touches_edge: bool  # the blob reaches a face of the scan (the organ may be cut off)


@dataclass(frozen=True)
class LocalizationPlan:
    """What the segmentation stage uses: the organs' box (its centre anchors the position
    channels), the region to segment, and what went wrong on the way."""

    lo_zyx: np.ndarray  # organs' box, edge coordinates of the localization grid; along z, organs cut
    hi_zyx: np.ndarray  # off at the scan's top or bottom are extended past it to a typical length
    region_lo_zyx: np.ndarray  # region to segment (the box, grown when an organ is missing)
    region_hi_zyx: np.ndarray
    found: bool  # False: no plausible organ; box and region are the whole grid
    organs: tuple[OrganLocation, ...]  # the organs kept
    dropped: tuple[str, ...]  # organs whose heatmap was found implausible
    missing: tuple[str, ...]  # organs with no heatmap above the threshold
    warnings: tuple[str, ...]


def plan_localization(
    heatmaps: np.ndarray, spacing_mm_zyx: tuple[float, float, float], threshold: float
) -> LocalizationPlan:
    """The organs' box and the region to segment from ``heatmaps`` (D, H, W, organs) in [0, 1]
    on a canonical grid of ``spacing_mm_zyx``; see the module docstring."""
    heat = np.asarray(heatmaps, np.float32)
    if heat.ndim != 4 or heat.shape[-1] != len(ORGANS):
        raise ValueError(f"expected heatmaps (D, H, W, {len(ORGANS)}), got shape {heat.shape}")
    spacing = np.asarray(spacing_mm_zyx, float)
    shape = np.asarray(heat.shape[:3], float)
    names = list(ORGANS.values())
    missing: list[str] = []
    dropped: dict[str, str] = {}
    rivals: dict[str, list[OrganLocation]] = {}
    for i, name in enumerate(names):
        candidates = _organ_candidates(name, heat[..., i], spacing, threshold)
        if not candidates:
            missing.append(name)
            continue
        reasons = [_implausible(c, spacing) for c in candidates]
        plausible = [c for c, reason in zip(candidates, reasons, strict=True) if not reason]
        if plausible:
            rivals[name] = plausible
        else:
            dropped[name] = reasons[0]
    located = _choose_blobs(rivals)
    dropped.update(_layout_outliers(located))
    kept = tuple(o for n, o in located.items() if n not in dropped)
    warnings = [f"the {name}'s localization was ignored: {why}" for name, why in dropped.items()]
    if not kept:
        whole = (np.zeros(3), shape.copy())
        if dropped:
            warnings.append("no organ was localized plausibly: the whole image was segmented")
        return LocalizationPlan(*whole, *whole, False, (), tuple(dropped), tuple(missing), tuple(warnings))
    region_lo = np.min([o.lo_zyx for o in kept], axis=0)
    region_hi = np.max([o.hi_zyx for o in kept], axis=0)
    boxes = [extend_cut_box(o.name, o.lo_zyx, o.hi_zyx, spacing, shape) for o in kept]
    lo = np.min([b[0] for b in boxes], axis=0)
    hi = np.max([b[1] for b in boxes], axis=0)
    if dropped or missing:
        grow = GROW_MM / spacing
        region_lo, region_hi = np.maximum(region_lo - grow, 0.0), np.minimum(region_hi + grow, shape)
        if dropped:
            warnings.append(
                f"the segmented region was grown by {GROW_MM:.0f} mm around the organs that were "
                f"localized ({', '.join(o.name for o in kept)})"
            )
    return LocalizationPlan(
        lo, hi, region_lo, region_hi, True, kept, tuple(dropped), tuple(missing), tuple(warnings)
    )


def extend_cut_box(
    name: str,
    lo_zyx: Sequence[float] | np.ndarray,
    hi_zyx: Sequence[float] | np.ndarray,
    spacing: Sequence[float] | np.ndarray,
    shape: Sequence[float] | np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """An organ's box (edge coordinates on a grid of ``spacing`` and ``shape``), extended beyond
    the scan's top or bottom face to the organ's typical length when the organ reaches that face
    and is shorter: the box of the whole organ, as far as it can be told, so that a scan starting
    below the diaphragm (or ending above the kidneys' lower poles) does not move the organs' box
    centre by half the missing part. Training computes the segmentation network's box centre the
    same way for the shorter scans it simulates."""
    lo, hi = np.array(lo_zyx, float), np.array(hi_zyx, float)
    missing = TYPICAL_LENGTH_MM[name] / float(spacing[0]) - (hi[0] - lo[0])
    if missing > 0:
        if hi[0] >= shape[0] and lo[0] > 0:
            hi[0] += missing
        elif lo[0] <= 0 and hi[0] < shape[0]:
            lo[0] -= missing
    return lo, hi


def _organ_candidates(
    name: str, heat: np.ndarray, spacing: np.ndarray, threshold: float
) -> list[OrganLocation]:
    """The organ's possible locations, largest first: its main blob (with its fragments, and the
    second kidney), then up to ``MAX_RIVALS - 1`` rival blobs of at least ``RIVAL_MIN_MASS`` of the
    main blob's mass that are not part of an earlier location, each taken the same way. Empty if
    nothing is above the threshold."""
    blobs, count = ndimage.label(heat > threshold, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    masses = np.asarray(ndimage.sum_labels(heat, blobs, index), float)
    centroids = np.asarray(ndimage.center_of_mass(heat, blobs, index), float).reshape(count, 3)
    centroids_mm = (centroids + 0.5) * spacing
    order = [int(j) for j in np.argsort(-masses, kind="stable")]
    gap = np.maximum(np.round(FRAGMENT_GAP_MM / spacing).astype(int), 1)
    used: set[int] = set()  # blob labels already part of a location
    out: list[OrganLocation] = []
    for main in order:
        if len(out) == MAX_RIVALS or masses[main] < RIVAL_MIN_MASS * masses[order[0]]:
            break
        if main + 1 in used:
            continue
        keep = [main]
        if name == "kidney":
            for j in order:
                apart = centroids_mm[j] - centroids_mm[main]
                if (
                    j != main
                    and j + 1 not in used
                    and masses[j] >= KIDNEY_PAIR_MIN_MASS * masses[main]
                    and abs(apart[2]) >= KIDNEY_PAIR_MIN_APART_MM
                    and abs(apart[0]) <= KIDNEY_PAIR_MAX_HEIGHT_MM
                ):
                    keep.append(j)
                    break
        selected = np.isin(blobs, index[keep])
        near = ndimage.binary_dilation(selected, structure=np.ones(tuple(2 * gap + 1), bool))
        fragments = np.unique(blobs[near & (blobs > 0)])
        used.update(int(f) for f in fragments)
        out.append(_location(name, heat, np.isin(blobs, fragments), spacing))
    return out


def _choose_blobs(rivals: dict[str, list[OrganLocation]]) -> dict[str, OrganLocation]:
    """One location per organ from its candidates (largest first): the combination whose layout
    leaves the most organs (``_layout_outliers``), then the one holding the most heatmap mass
    (each organ's relative to its largest candidate), then the earliest. With one candidate each,
    the largest blobs."""
    names = list(rivals)
    best: tuple[tuple[int, float], dict[str, OrganLocation]] | None = None
    for combo in itertools.product(*(rivals[n] for n in names)):
        chosen = dict(zip(names, combo, strict=True))
        kept = len(chosen) - len(_layout_outliers(chosen))
        mass = sum(o.volume_ml / rivals[o.name][0].volume_ml for o in combo)
        if best is None or (kept, mass) > best[0]:
            best = ((kept, mass), chosen)
    return best[1] if best is not None else {}


def _location(name: str, heat: np.ndarray, selected: np.ndarray, spacing: np.ndarray) -> OrganLocation:
    idx = [np.flatnonzero(np.any(selected, axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))]
    lo = tuple(float(v[0]) for v in idx)
    hi = tuple(float(v[-1] + 1) for v in idx)
    weights = np.where(selected, heat, 0.0)
    mass = float(weights.sum())
    grid = np.indices(heat.shape, dtype=float)
    centroid = tuple(float(((grid[a] + 0.5) * weights).sum() / mass * spacing[a]) for a in range(3))
    touches = any(a == 0 for a in lo) or any(b == n for b, n in zip(hi, heat.shape, strict=True))
    return OrganLocation(
        name=name,
        lo_zyx=lo,  # type: ignore[arg-type]
        hi_zyx=hi,  # type: ignore[arg-type]
        centroid_mm_zyx=centroid,  # type: ignore[arg-type]
        volume_ml=mass * float(np.prod(spacing)) / 1000.0,
        peak=float(heat[selected].max()),
        touches_edge=touches,
    )


def _implausible(organ: OrganLocation, spacing: np.ndarray) -> str:
    """Why the organ's blob cannot be that organ ("" if it can)."""
    extent = (np.asarray(organ.hi_zyx) - np.asarray(organ.lo_zyx)) * spacing
    limit = np.asarray(MAX_EXTENT_MM_ZYX[organ.name])
    if np.any(extent > limit):
        axis = int(np.argmax(extent / limit))
        return (
            f"its heatmap spans {extent[axis]:.0f} mm along {'zyx'[axis]}, more than the "
            f"{limit[axis]:.0f} mm an adult {organ.name} can"
        )
    if organ.volume_ml > MAX_VOLUME_ML[organ.name]:
        return f"its heatmap holds {organ.volume_ml:.0f} mL, more than {MAX_VOLUME_ML[organ.name]:.0f} mL"
    return ""


def _layout_outliers(located: dict[str, OrganLocation]) -> dict[str, str]:
    """Organs whose position contradicts the others': too far in height from the rest, or a
    spleen to the right of the liver.

    Height: with three organs or more, each organ's centroid is compared with the median of the
    *other* organs' centroids (so the outlier does not pull the reference towards itself); the
    organ furthest beyond ``MAX_HEIGHT_APART_MM`` goes, and the check is repeated on the rest
    while at least three are left."""
    out: dict[str, str] = {}
    z = {n: located[n].centroid_mm_zyx[0] for n in located}
    while len(z) >= 3:
        apart = {n: abs(z[n] - float(np.median([z[m] for m in z if m != n]))) for n in z}
        worst = max(apart, key=lambda n: apart[n])
        if apart[worst] <= MAX_HEIGHT_APART_MM:
            break
        out[worst] = f"it lies {apart[worst]:.0f} mm in height from the other organs"
        del z[worst]
    names = list(located)
    if "liver" in located and "spleen" in located and not out.keys() & {"liver", "spleen"}:
        dx = located["spleen"].centroid_mm_zyx[2] - located["liver"].centroid_mm_zyx[2]
        if dx < SPLEEN_LEFT_OF_LIVER_MM:
            # Which of the two is wrong: the one further from the others in the patient's x.
            others = [located[n].centroid_mm_zyx[2] for n in names if n not in ("liver", "spleen", *out)]
            if others:
                mid = float(np.median(others))
                bad = "spleen" if located["spleen"].centroid_mm_zyx[2] < mid else "liver"
            else:
                bad = "spleen"
            out[bad] = "the spleen would not lie to the patient's left of the liver"
    return out

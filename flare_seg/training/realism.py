"""How close phantoms are to a real CT: intensity, noise texture and shape statistics, side by side.

    python -m flare_seg.training.realism --real CT.nii.gz LABELS.nii.gz --phantoms DIR [--cases 8]

Every case is first brought onto one grid (canonical LPS, ``--spacing-mm`` isotropic, 3 mm by
default: antialiased, so noise and texture compare at the same scale) and measured the same way:

- HU percentiles (5, 50, 95) per organ (the mask eroded by one voxel, so partial volume at the edge
  does not count), of fat (-190..-30 HU in the body, outside organs), of muscle and other soft
  tissue (-29..150 HU outside organs), of bone (> 250 HU) and of the air around the body;
- noise: the SD of the high-pass residual (image minus its 3 x 3 x 3 mean) inside the eroded liver
  and its in-plane correlation length (lag in mm where the residual's autocorrelation falls to 0.5);
- shape: organ volumes (mL) and extents (mm), centroids relative to the body centre (x, y), to the
  spine (x: its midline; y: the front of the vertebral body, slice by slice, which unlike the body
  centre does not move with the fat, the arms or the table) and to the liver's centroid (z), the
  body's width and depth, the fraction of the body that is fat, the
  scan's length, the liver's leftmost 30% (its left lobe): median front-to-back thickness and
  the height of its lowest point above the liver's, and the pancreas' course: how far its tail (the
  leftmost 20% of its width) lies above and behind its head (the rightmost 20%).

A phantom dataset is summarised by its median and 10th-90th percentile range over the cases. The
table is meant to judge changes to the generator by numbers; the real CT is only measured.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from flare_seg.geometry import to_canonical
from flare_seg.labels import ORGANS

log = logging.getLogger(__name__)

Stats = dict[str, float]
FAT_HU = (-190.0, -30.0)
SOFT_HU = (-29.0, 150.0)
BONE_HU = 250.0
BODY_HU = -400.0
SPINE_HU = 200.0  # osteopenic vertebral bodies are darker than BONE_HU; their cortex is not
SPINE_MIDLINE_MM = 40.0  # the vertebra: the largest bone in a slice within this of the body's midline


def resample_isotropic(image: sitk.Image, spacing_mm: float, labels: bool) -> np.ndarray:
    """``image`` on a canonical LPS grid of ``spacing_mm`` (z, y, x): images smoothed first (a
    Gaussian of sigma = half the spacing ratio, in mm) and interpolated linearly; labels nearest."""
    canonical, _ = to_canonical(image)
    old = np.asarray(canonical.GetSpacing(), float)
    size = np.maximum(1, np.round(np.asarray(canonical.GetSize()) * old / spacing_mm)).astype(int)
    if not labels:
        canonical = sitk.Cast(canonical, sitk.sitkFloat32)
        sigma = [max(0.0, 0.5 * (spacing_mm - s)) for s in old]
        if max(sigma) > 0:
            canonical = sitk.SmoothingRecursiveGaussian(canonical, [max(s, 1e-3) for s in sigma])
    out = sitk.Resample(
        canonical,
        [int(v) for v in size],
        sitk.Transform(),
        sitk.sitkNearestNeighbor if labels else sitk.sitkLinear,
        canonical.GetOrigin(),
        (spacing_mm,) * 3,
        canonical.GetDirection(),
        0 if labels else -1000.0,
    )
    return sitk.GetArrayFromImage(out)


def body_mask(hu: np.ndarray) -> np.ndarray:
    """The patient (and table): the largest component above -400 HU, holes filled per slice."""
    fg = hu > BODY_HU
    blobs, n = ndimage.label(fg)
    if n == 0:
        return fg
    sizes = ndimage.sum_labels(fg, blobs, np.arange(1, n + 1))
    body = blobs == (1 + int(np.argmax(sizes)))
    return np.stack([ndimage.binary_fill_holes(s) for s in body])


def _percentiles(values: np.ndarray, prefix: str, out: Stats) -> None:
    if values.size < 20:
        return
    p5, p50, p95 = np.percentile(values, [5, 50, 95])
    out[f"{prefix} HU p5"], out[f"{prefix} HU p50"], out[f"{prefix} HU p95"] = p5, p50, p95


def _noise(hu: np.ndarray, region: np.ndarray, spacing_mm: float, out: Stats) -> None:
    """High-pass residual SD and its in-plane correlation length inside ``region``."""
    if region.sum() < 200:
        return
    residual = hu - ndimage.uniform_filter(hu, 3)
    r = np.where(region, residual - residual[region].mean(), 0.0)
    out["noise SD (liver, high-pass)"] = float(residual[region].std())
    var = float((r * r).sum())
    if var <= 0.0:  # no noise at all: no correlation length to speak of
        return
    lags = []
    for lag in range(1, 6):
        shifted = np.roll(r, lag, axis=2) * np.roll(region, lag, axis=2)
        lags.append(float((r * shifted).sum()) / var)
    corr = np.array([1.0, *lags])
    below = np.flatnonzero(corr < 0.5)
    if below.size:
        k = int(below[0])
        frac = (corr[k - 1] - 0.5) / max(corr[k - 1] - corr[k], 1e-6)
        out["noise corr. length mm"] = (k - 1 + frac) * spacing_mm


def spine_front(hu: np.ndarray, body: np.ndarray, spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Per slice, the y (mm) of the vertebral body's front and the x (mm) of the spine's midline
    (NaN where no vertebra is found): the largest bone component near the body's midline, its front
    the most anterior bone within 10 mm of its median x."""
    front = np.full(hu.shape[0], np.nan)
    mid = np.full(hu.shape[0], np.nan)
    for z in range(hu.shape[0]):
        xs = np.nonzero(body[z].any(axis=0))[0]
        if xs.size == 0:
            continue
        centre_x = 0.5 * (xs.min() + xs.max())
        blobs, n = ndimage.label((hu[z] > SPINE_HU) & body[z])
        best: tuple[int, np.ndarray, np.ndarray] | None = None
        for i in range(1, n + 1):
            ys_i, xs_i = np.nonzero(blobs == i)
            if (
                abs(xs_i.mean() - centre_x) * spacing_mm > SPINE_MIDLINE_MM
                or ys_i.size * spacing_mm**2 < 100.0
            ):
                continue
            if best is None or ys_i.size > best[0]:
                best = (ys_i.size, ys_i, xs_i)
        if best is None:
            continue
        _, ys_i, xs_i = best
        x_mid = float(np.median(xs_i))
        near = np.abs(xs_i - x_mid) * spacing_mm <= 10.0
        front[z], mid[z] = float(ys_i[near].min()) * spacing_mm, x_mid * spacing_mm
    return front, mid


def _shape(labels: np.ndarray, body: np.ndarray, spacing_mm: float, out: Stats, hu: np.ndarray) -> None:
    voxel_ml = spacing_mm**3 / 1000.0
    grid_z = np.arange(labels.shape[0]) * spacing_mm
    ys, xs = np.nonzero(body.any(axis=0))
    if ys.size:
        centre_yx = np.array([ys.mean(), xs.mean()]) * spacing_mm
        out["body width mm"] = float(xs.max() - xs.min() + 1) * spacing_mm
        out["body depth mm"] = float(ys.max() - ys.min() + 1) * spacing_mm
    else:
        centre_yx = np.zeros(2)
    out["scan length mm"] = labels.shape[0] * spacing_mm
    spine_y, spine_x = spine_front(hu, body, spacing_mm)
    liver_z = None
    if np.any(labels == 1):
        liver_z = float(grid_z[np.nonzero(labels == 1)[0]].mean())
    for k, name in ORGANS.items():
        idx = np.nonzero(labels == k)
        if idx[0].size == 0:
            continue
        out[f"{name} volume mL"] = idx[0].size * voxel_ml
        for axis, a in zip("zyx", idx, strict=True):
            out[f"{name} extent {axis} mm"] = float(a.max() - a.min() + 1) * spacing_mm
        # +x: the patient's left, +y: posterior (LPS)
        out[f"{name} centroid x - body mm"] = float(idx[2].mean() * spacing_mm - centre_yx[1])
        out[f"{name} centroid y - body mm"] = float(idx[1].mean() * spacing_mm - centre_yx[0])
        found = np.isfinite(spine_y[idx[0]])  # the organ's voxels on slices with a vertebra
        if found.mean() >= 0.5:
            z_found = idx[0][found]
            out[f"{name} centroid y - vertebral body front mm"] = float(
                np.mean(idx[1][found] * spacing_mm - spine_y[z_found])
            )
            out[f"{name} centroid x - spine mm"] = float(
                np.mean(idx[2][found] * spacing_mm - spine_x[z_found])
            )
        if liver_z is not None and k != 1:
            out[f"{name} centroid z - liver mm"] = float(grid_z[idx[0]].mean() - liver_z)
    if np.any(labels == 1):
        _left_lobe(labels == 1, spacing_mm, out)
    if np.any(labels == 4):
        _pancreas_course(labels == 4, spacing_mm, out)


def _pancreas_course(pancreas: np.ndarray, spacing_mm: float, out: Stats) -> None:
    """How the pancreas runs from its head (its rightmost 20% of the width, LPS -x) to its tail
    (the leftmost 20%): how far the tail's centroid lies above the head's and behind it (LPS +y)."""
    z, y, x = np.nonzero(pancreas)
    lo, hi = np.percentile(x, [20.0, 80.0])
    head, tail = x <= lo, x >= hi
    if not head.any() or not tail.any():
        return
    out["pancreas tail - head height mm"] = float(z[tail].mean() - z[head].mean()) * spacing_mm
    out["pancreas tail - head depth mm"] = float(y[tail].mean() - y[head].mean()) * spacing_mm


def _left_lobe(liver: np.ndarray, spacing_mm: float, out: Stats) -> None:
    """The liver's leftmost 30% of its width (LPS +x), roughly its left lobe: the median
    antero-posterior thickness of its (z, x) columns (a plate against the front wall is thin, a
    wedge filling the upper abdomen thick), and how far its lowest point lies above the liver's."""
    z, y, x = np.nonzero(liver)
    left = x > x.min() + 0.7 * (x.max() - x.min())
    if not left.any():
        return
    zl, yl, xl = z[left], y[left], x[left]
    column = zl * liver.shape[2] + xl
    order = np.argsort(column, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(column[order])) + 1]
    ys = yl[order]
    thickness = np.maximum.reduceat(ys, starts) - np.minimum.reduceat(ys, starts) + 1
    out["liver left lobe thickness mm"] = float(np.median(thickness)) * spacing_mm
    out["liver left lobe bottom - liver's mm"] = float(zl.min() - z.min()) * spacing_mm


def measure(image: sitk.Image, labels_image: sitk.Image, spacing_mm: float = 3.0) -> Stats:
    """The statistics of one case (see the module docstring)."""
    hu = resample_isotropic(image, spacing_mm, labels=False).astype(np.float32)
    labels = resample_isotropic(labels_image, spacing_mm, labels=True)
    if hu.shape != labels.shape:
        raise ValueError(f"image grid {hu.shape} and label grid {labels.shape} differ")
    body = body_mask(hu)
    organs = labels > 0
    near_organs = ndimage.binary_dilation(organs, iterations=1)
    out: Stats = {}
    for k, name in ORGANS.items():
        core = ndimage.binary_erosion(labels == k, iterations=1)
        _percentiles(hu[core], name, out)
    inside = body & ~near_organs
    _percentiles(hu[inside & (hu >= FAT_HU[0]) & (hu <= FAT_HU[1])], "fat", out)
    _percentiles(hu[inside & (hu >= SOFT_HU[0]) & (hu <= SOFT_HU[1])], "soft tissue", out)
    _percentiles(hu[body & (hu > BONE_HU)], "bone", out)
    air = ~ndimage.binary_dilation(body, iterations=2)
    _percentiles(hu[air], "outside air", out)
    n_body = max(int(body.sum()), 1)
    out["fat fraction of body"] = float(((hu >= FAT_HU[0]) & (hu <= FAT_HU[1]) & body).sum()) / n_body
    out["bone fraction of body"] = float((body & (hu > BONE_HU)).sum()) / n_body
    _noise(hu, ndimage.binary_erosion(labels == 1, iterations=2), spacing_mm, out)
    _shape(labels, body, spacing_mm, out, hu)
    return out


def _phantom_cases(directory: Path, cases: int) -> list[tuple[Path, Path]]:
    images = sorted((directory / "TrainingImg").glob("*_0000.nii.gz"))[:cases]
    pairs = []
    for image in images:
        mask = directory / "TrainingMask" / image.name.replace("_0000.nii.gz", ".nii.gz")
        if mask.is_file():
            pairs.append((image, mask))
    return pairs


def table(real: Stats, phantoms: list[Stats]) -> str:
    """Rows: each statistic; columns: the real CT, the phantoms' median and 10-90% range, and
    where the real value falls among the phantoms (its percentile rank)."""
    keys = list(real) + [k for s in phantoms for k in s if k not in real]
    seen: set[str] = set()
    lines = [f"{'statistic':34s} {'real':>9s} {'phantom p50':>11s} {'p10':>9s} {'p90':>9s} {'rank':>5s}"]
    for key in keys:
        if key in seen:
            continue
        seen.add(key)
        values = np.array([s[key] for s in phantoms if key in s], float)
        r = real.get(key)
        rs = (
            f"{r:9.1f}"
            if r is not None and abs(r) >= 10
            else (f"{r:9.3f}" if r is not None else f"{'-':>9s}")
        )
        if values.size:
            p10, p50, p90 = np.percentile(values, [10, 50, 90])
            rank = f"{100.0 * np.mean(values < r):4.0f}%" if r is not None else "    -"
            fmt = "{:11.1f} {:9.1f} {:9.1f}" if abs(p50) >= 10 else "{:11.3f} {:9.3f} {:9.3f}"
            lines.append(f"{key:34s} {rs} {fmt.format(p50, p10, p90)} {rank:>5s}")
        else:
            lines.append(f"{key:34s} {rs} {'-':>11s} {'-':>9s} {'-':>9s} {'-':>5s}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flare_seg.training.realism", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--real", nargs=2, metavar=("CT", "LABELS"), required=True, type=Path)
    parser.add_argument("--phantoms", type=Path, required=True, help="a FLARE21-layout phantom dataset")
    parser.add_argument("--cases", type=int, default=8, help="phantom cases measured (first by name)")
    parser.add_argument("--spacing-mm", type=float, default=3.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    pairs = _phantom_cases(args.phantoms, args.cases)
    if not pairs:
        print(f"error: no phantom cases in {args.phantoms}", file=sys.stderr)
        return 2
    try:
        real = measure(sitk.ReadImage(str(args.real[0])), sitk.ReadImage(str(args.real[1])), args.spacing_mm)
    except (RuntimeError, ValueError) as exc:
        print(f"error: {args.real[0]}: {exc}", file=sys.stderr)
        return 2
    phantoms = []
    for image, mask in pairs:
        log.info("measuring %s", image.name)
        phantoms.append(measure(sitk.ReadImage(str(image)), sitk.ReadImage(str(mask)), args.spacing_mm))
    print(f"real: {args.real[0].name}; phantoms: {len(phantoms)} of {args.phantoms} at {args.spacing_mm} mm")
    print(table(real, phantoms))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How the pipeline holds up on one labelled real CT presented the ways other scans come: its own
grid, another axis order, a fine and a thick grid, an oblique grid, shorter fields of view, more
noise, a wide field of view with a -2000 reconstruction circle, a portal-venous look, and a large
hypodense liver mass. Prints
each version's per-organ Dice and the mean over the versions, and writes them as JSON.

    python bench/realct_versions.py [--ct CT.nii.gz --labels LABELS.nii.gz] [--models-dir DIR]
                                    [--out realct_versions.json] [--keep DIR]

The defaults are the development CT in ../shared/realct (an unenhanced abdomen-pelvis scan at
3 mm). It is for measuring only: a model is never trained or tuned on it. Every version is built
from the CT and its labels with the same resampling for both (labels nearest-neighbour), so each
has its own reference; the mask is compared on that version's grid, as a user's scan would be.

``portal_venous`` raises the organs' HU by typical portal-venous enhancement (liver +55, kidney
+140, spleen +75, pancreas +45 over unenhanced values), through each label blurred by 1.5 mm so
the organs' edges are not sharper than a scan's. It uses the labels to make the image, so it
measures how a network trained on contrast-enhanced-looking phantoms copes with that phase, not
how well it finds organs it was not shown.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from flare_seg.evaluation import dice
from flare_seg.labels import ORGANS

REAL_CT = Path(__file__).resolve().parents[1].parent / "shared" / "realct"
PORTAL_VENOUS_HU = {1: 55.0, 2: 140.0, 3: 75.0, 4: 45.0}
Pair = tuple[sitk.Image, sitk.Image]


def _resampled(ct: sitk.Image, labels: sitk.Image, reference: sitk.Image) -> Pair:
    fill = float(np.min(sitk.GetArrayViewFromImage(ct)))
    image = sitk.Resample(ct, reference, sitk.Transform(), sitk.sitkLinear, fill, sitk.sitkInt16)
    mask = sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return image, mask


def _grid(ct: sitk.Image, spacing_xyz: tuple[float, float, float]) -> sitk.Image:
    """The same extent and direction as ``ct`` at another spacing."""
    extent = np.asarray(ct.GetSize()) * np.asarray(ct.GetSpacing())
    reference = sitk.Image([int(v) for v in np.round(extent / np.asarray(spacing_xyz))], sitk.sitkInt16)
    reference.SetSpacing(spacing_xyz)
    reference.SetDirection(ct.GetDirection())
    half = 0.5 * (np.asarray(spacing_xyz) - np.asarray(ct.GetSpacing()))  # the same outer edge
    direction = np.asarray(ct.GetDirection()).reshape(3, 3)
    reference.SetOrigin(tuple(np.asarray(ct.GetOrigin()) + direction @ half))
    return reference


def _oblique(ct: sitk.Image) -> sitk.Image:
    """``ct``'s grid turned 12 degrees about the patient's z axis and 6 about x, about its centre."""
    size = ct.GetSize()
    centre = ct.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in size])
    turn = sitk.Euler3DTransform(centre, np.deg2rad(6.0), 0.0, np.deg2rad(12.0))
    matrix = np.asarray(turn.GetMatrix()).reshape(3, 3)
    reference = sitk.Image(size, sitk.sitkInt16)
    reference.SetSpacing(ct.GetSpacing())
    reference.SetDirection(tuple((matrix @ np.asarray(ct.GetDirection()).reshape(3, 3)).ravel()))
    reference.SetOrigin(turn.TransformPoint(ct.GetOrigin()))
    return reference


def _slices(ct: sitk.Image, labels: sitk.Image, keep_from: float, keep_to: float) -> Pair:
    """The slices between fractions ``keep_from`` and ``keep_to`` of the stored slice order."""
    n = ct.GetSize()[2]
    a, b = round(n * keep_from), round(n * keep_to)
    return ct[:, :, a:b], labels[:, :, a:b]


def _noisier(ct: sitk.Image, labels: sitk.Image, sigma_hu: float = 25.0) -> Pair:
    """Correlated noise (white noise smoothed by 0.7 voxels, scaled to ``sigma_hu``) added."""
    array = sitk.GetArrayFromImage(ct).astype(np.float32)
    noise = ndimage.gaussian_filter(np.random.default_rng(5).standard_normal(array.shape, np.float32), 0.7)
    out = sitk.GetImageFromArray(np.round(array + noise * (sigma_hu / noise.std())).astype(np.int16))
    out.CopyInformation(ct)
    return out, labels


def _wide_circle(ct: sitk.Image, labels: sitk.Image, fov_mm: float = 500.0) -> Pair:
    """Padded with air to a ``fov_mm`` square field of view, -2000 outside its inscribed circle."""
    size, spacing = np.asarray(ct.GetSize()), np.asarray(ct.GetSpacing())
    target = np.maximum(size[:2], np.round(fov_mm / spacing[:2]).astype(int))
    lower = [int(v) for v in (target - size[:2]) // 2] + [0]
    upper = [int(v) for v in target - size[:2] - np.asarray(lower[:2])] + [0]
    image = sitk.ConstantPad(ct, lower, upper, -1024)
    mask = sitk.ConstantPad(labels, lower, upper, 0)
    array = sitk.GetArrayFromImage(image)
    y, x = np.mgrid[0 : array.shape[1], 0 : array.shape[2]]
    radius = (y - (array.shape[1] - 1) / 2.0) * spacing[1], (x - (array.shape[2] - 1) / 2.0) * spacing[0]
    array[:, np.hypot(*radius) > fov_mm / 2.0] = -2000
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out, mask


def _portal_venous(ct: sitk.Image, labels: sitk.Image) -> Pair:
    array = sitk.GetArrayFromImage(ct).astype(np.float32)
    lab = sitk.GetArrayViewFromImage(labels)
    sigma = 1.5 / np.asarray(ct.GetSpacing()[::-1])
    for label, hu in PORTAL_VENOUS_HU.items():
        array += hu * ndimage.gaussian_filter((lab == label).astype(np.float32), sigma)
    out = sitk.GetImageFromArray(np.round(array).astype(np.int16))
    out.CopyInformation(ct)
    return out, labels


def _liver_mass(ct: sitk.Image, labels: sitk.Image, radius_mm: float = 30.0, drop_hu: float = 45.0) -> Pair:
    """A hypodense mass painted inside the liver (still labelled liver, as FLARE21 labels liver
    tumours): a ball of up to ``radius_mm`` about the liver's deepest point, ``drop_hu`` below the
    liver's median, its edge blurred by 2 mm."""
    array = sitk.GetArrayFromImage(ct).astype(np.float32)
    liver = sitk.GetArrayViewFromImage(labels) == 1
    spacing = np.asarray(ct.GetSpacing()[::-1])
    depth = ndimage.distance_transform_edt(liver, sampling=spacing)
    centre = np.unravel_index(int(np.argmax(depth)), depth.shape)
    radius = min(radius_mm, 0.8 * float(depth[centre]))
    grid = np.indices(array.shape, dtype=np.float32)
    distance = np.sqrt(sum(((grid[a] - centre[a]) * spacing[a]) ** 2 for a in range(3)))
    ball = ndimage.gaussian_filter((distance <= radius).astype(np.float32), 2.0 / spacing)
    array -= drop_hu * ball * liver
    out = sitk.GetImageFromArray(np.round(array).astype(np.int16))
    out.CopyInformation(ct)
    return out, labels


def versions(ct: sitk.Image, labels: sitk.Image) -> Iterator[tuple[str, Callable[[], Pair]]]:
    """(name, builder) of every version, built one at a time."""
    yield "as_stored", lambda: (ct, labels)
    yield "lps", lambda: (sitk.DICOMOrient(ct, "LPS"), sitk.DICOMOrient(labels, "LPS"))
    yield "fine_0.8x0.8x1.6", lambda: _resampled(ct, labels, _grid(ct, (0.8, 0.8, 1.6)))
    yield "thick_5mm", lambda: _resampled(ct, labels, _grid(ct, (*ct.GetSpacing()[:2], 5.0)))
    yield "oblique", lambda: _resampled(ct, labels, _oblique(ct))
    yield "first_85pct_slices", lambda: _slices(ct, labels, 0.0, 0.85)
    yield "last_85pct_slices", lambda: _slices(ct, labels, 0.15, 1.0)
    yield "noise_25hu", lambda: _noisier(ct, labels)
    yield "fov500_circle", lambda: _wide_circle(ct, labels)
    yield "portal_venous", lambda: _portal_venous(ct, labels)
    yield "liver_mass", lambda: _liver_mass(ct, labels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ct", type=Path, default=REAL_CT / "example_ct.nii.gz")
    parser.add_argument("--labels", type=Path, default=REAL_CT / "example_ct_labels.nii.gz")
    parser.add_argument("--models-dir", type=Path, default=None, help="default: the packaged models")
    parser.add_argument("--out", type=Path, default=Path("realct_versions.json"))
    parser.add_argument("--keep", type=Path, default=None, help="write each version, reference and mask here")
    args = parser.parse_args(argv)
    for path in (args.ct, args.labels):
        if not path.is_file():
            print(f"error: {path} is not a file", file=sys.stderr)
            return 2
    from flare_seg.service.pipeline import Segmenter

    segmenter = Segmenter.load(args.models_dir) if args.models_dir else Segmenter.load()
    ct = sitk.ReadImage(str(args.ct), sitk.sitkInt16)
    labels = sitk.ReadImage(str(args.labels), sitk.sitkUInt8)
    names = list(ORGANS.values())
    print(f"models {segmenter.model_version}   " + "  ".join(f"{n:>8s}" for n in names) + "   seconds")
    scores: dict[str, dict[str, float]] = {}
    for name, build in versions(ct, labels):
        image, reference = build()
        t = time.perf_counter()
        result = segmenter.segment_image(image)
        seconds = time.perf_counter() - t
        ref = sitk.GetArrayViewFromImage(reference)
        scores[name] = {n: round(dice(result.labels_zyx == k, ref == k), 4) for k, n in ORGANS.items()}
        print(f"{name:22s}" + "  ".join(f"{scores[name][n]:8.3f}" for n in names) + f"   {seconds:6.1f}")
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(image, str(args.keep / f"{name}_0000.nii.gz"))
            sitk.WriteImage(reference, str(args.keep / f"{name}_labels.nii.gz"))
            mask = sitk.GetImageFromArray(result.labels_zyx)
            mask.CopyInformation(image)
            sitk.WriteImage(mask, str(args.keep / f"{name}.nii.gz"))
    mean = {n: round(float(np.mean([s[n] for s in scores.values()])), 4) for n in names}
    print(f"{'mean':22s}" + "  ".join(f"{mean[n]:8.3f}" for n in names))
    report = {"models": segmenter.model_version, "ct": str(args.ct), "versions": scores, "mean": mean}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where a predicted mask goes wrong against a reference: per organ, the missed (FN) and extra (FP)
volume, split into the rim (within ``--rim-mm`` of the reference organ's surface: boundary
disagreement) and beyond it (missed or extra pieces of anatomy), and the largest pieces beyond the
rim with their size and where they lie from the reference organ's centre, in patient terms
(left/right, anterior/posterior, superior/inferior, from the image's direction matrix, so flipped
and oblique grids read the same).

    python bench/error_components.py PREDICTION.nii.gz REFERENCE.nii.gz [--organ liver] [--top 5]

Both masks must share one grid (a ``flare-seg predict`` output and its reference do); they are read
and checked as ``flare-seg evaluate`` reads and checks them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from flare_seg.evaluation import check_same_geometry, dice, read_label_image
from flare_seg.labels import ORGANS


def _patient_offset(image: sitk.Image, index_zyx: np.ndarray, centre_zyx: np.ndarray) -> str:
    """'12 mm left, 30 mm anterior, 5 mm superior' of ``index_zyx`` from ``centre_zyx`` (LPS)."""

    def physical(zyx: np.ndarray) -> np.ndarray:
        return np.array(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in zyx[::-1]]))

    d = physical(index_zyx) - physical(centre_zyx)
    words = (("left", "right"), ("posterior", "anterior"), ("superior", "inferior"))
    parts = (f"{abs(v):.0f} mm {pos if v >= 0 else neg}" for v, (pos, neg) in zip(d, words, strict=True))
    return ", ".join(parts)


def _report(image: sitk.Image, pred: np.ndarray, ref: np.ndarray, rim_mm: float, top: int) -> None:
    spacing = np.array(image.GetSpacing()[::-1])
    ml = float(np.prod(spacing)) / 1000.0
    inside = ndimage.distance_transform_edt(ref, sampling=spacing)
    outside = ndimage.distance_transform_edt(~ref, sampling=spacing)
    fn, fp = ref & ~pred, pred & ~ref
    volumes = f"reference {ref.sum() * ml:.1f} mL  prediction {pred.sum() * ml:.1f} mL"
    print(f"  Dice {dice(pred, ref):.4f}  {volumes}")
    centre = np.array(ndimage.center_of_mass(ref)) if ref.any() else np.array(ref.shape) / 2.0
    for name, wrong, depth in (("missed", fn, inside), ("extra", fp, outside)):
        beyond = wrong & (depth > rim_mm)
        print(f"  {name}: {wrong.sum() * ml:.1f} mL, {beyond.sum() * ml:.1f} mL of it beyond the rim")
        pieces, count = ndimage.label(beyond, structure=np.ones((3, 3, 3), bool))
        if not count:
            continue
        sizes = np.asarray(ndimage.sum_labels(beyond, pieces, range(1, count + 1)))
        for i in np.argsort(-sizes)[:top]:
            where = np.array(ndimage.center_of_mass(pieces == i + 1))
            print(f"    {sizes[i] * ml:6.1f} mL at {_patient_offset(image, where, centre)} of the centre")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prediction")
    parser.add_argument("reference")
    parser.add_argument(
        "--organ",
        choices=list(ORGANS.values()),
        action="append",
        help="organ to report (repeatable; default: all)",
    )
    parser.add_argument("--rim-mm", type=float, default=3.0, help="rim width, mm (default 3)")
    parser.add_argument("--top", type=int, default=5, help="pieces listed per kind (default 5)")
    args = parser.parse_args(argv)
    try:  # read and checked as flare-seg evaluate does
        pred_image, ref_image = (
            read_label_image(Path(args.prediction)),
            read_label_image(Path(args.reference)),
        )
        check_same_geometry(pred_image, ref_image)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pred, ref = sitk.GetArrayFromImage(pred_image), sitk.GetArrayFromImage(ref_image)
    for label, name in ORGANS.items():
        if args.organ and name not in args.organ:
            continue
        print(name)
        _report(ref_image, pred == label, ref == label, args.rim_mm, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Evaluation of organ segmentations: Dice and normalized surface distance (NSD), FLARE21 style.

Layers, innermost first:

- :func:`dice` and :func:`normalized_surface_distance` work on boolean numpy arrays in z,y,x order
  (the order of ``sitk.GetArrayViewFromImage``) with spacing given in mm, also z,y,x.
- :func:`evaluate_case` works on two ``SimpleITK`` label images; it checks that their geometries
  agree and is the one place in this module that turns SimpleITK's x,y,z spacing into z,y,x.
- :func:`evaluate_dirs` is the file-path wrapper behind ``flare-seg evaluate PRED_DIR LABEL_DIR``: it
  evaluates every case of a label folder, writes ``evaluation.csv`` and ``evaluation.json`` and returns
  an :class:`EvaluationReport`.

Conventions: an organ absent from both prediction and reference scores 1.0 (a NaN would poison the
means); an organ present in exactly one of them scores 0.0.
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import spatial

from flare_seg.labels import ORGANS

logger = logging.getLogger(__name__)

DEFAULT_TOLERANCE_MM = 1.0
# Geometry comparison in evaluate_case: NIfTI stores the affine as float32, so a round trip can move
# spacing/origin by ~1e-5 mm and direction cosines by ~1e-7; these bounds are far below any real mismatch.
GEOMETRY_ATOL_MM = 1e-3
DIRECTION_ATOL = 1e-4

NIFTI_SUFFIX = ".nii.gz"
MAX_LABEL_VOXELS = 2**32  # a label volume larger than this is not a CT's
# FLARE images are named <case>_0000.nii.gz (channel 0) while its TrainingMask labels are <case>.nii.gz.
CHANNEL_SUFFIX = "_0000"
CSV_NAME = "evaluation.csv"
JSON_NAME = "evaluation.json"
METRICS = ("dice", "nsd")

Scores = dict[str, dict[str, float]]  # organ name -> metric name ("dice", "nsd") -> value


@dataclass(frozen=True)
class EvaluationReport:
    """Scores of a folder of predictions against a folder of reference labels.

    Attributes:
        per_case: case id -> organ name -> {"dice": ..., "nsd": ...}; a missing prediction is scored
            as an empty one (0.0 for organs present in the label, 1.0 for absent ones).
        mean: organ name -> {"dice": ..., "nsd": ...}, mean over all cases including missing ones.
        std: same layout as ``mean``, population standard deviation (ddof=0) over the same cases.
        missing: sorted ids of the cases that had no prediction file.
        tolerance_mm: the NSD tolerance in mm.
    """

    per_case: dict[str, Scores]
    mean: Scores
    std: Scores
    missing: list[str]
    tolerance_mm: float = DEFAULT_TOLERANCE_MM

    def summary_table(self) -> str:
        """A plain-text table of per-organ mean ± std Dice and NSD, one organ a row, for printing."""
        nsd_header = f"NSD@{self.tolerance_mm:g}mm"
        rows = [("organ", "Dice", nsd_header)]
        for organ in ORGANS.values():
            rows.append(
                (
                    organ,
                    f"{self.mean[organ]['dice']:.4f} ± {self.std[organ]['dice']:.4f}",
                    f"{self.mean[organ]['nsd']:.4f} ± {self.std[organ]['nsd']:.4f}",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows
        ]
        lines.insert(1, "  ".join("-" * width for width in widths))
        lines.append(f"cases: {len(self.per_case)}, missing predictions: {len(self.missing)}")
        if self.missing:
            lines.append("missing: " + ", ".join(self.missing))
        return "\n".join(line.rstrip() for line in lines)

    def to_json_dict(self) -> dict[str, object]:
        """The report as a JSON-serializable dict (the content of ``evaluation.json``)."""
        return {
            "tolerance_mm": self.tolerance_mm,
            "cases": self.per_case,
            "mean": self.mean,
            "std": self.std,
            "missing": self.missing,
        }


# ---------------------------------------------------------------------------------------------------
# Array metrics (z,y,x arrays, spacing in mm in z,y,x order)
# ---------------------------------------------------------------------------------------------------


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient 2|P∩R| / (|P|+|R|) of two boolean masks of equal shape.

    Returns 1.0 when both masks are empty and 0.0 when exactly one is. Raises ValueError if the shapes
    differ.
    """
    pred, ref = _as_bool_pair(pred, ref)
    size_sum = np.count_nonzero(pred) + np.count_nonzero(ref)
    if size_sum == 0:
        return 1.0
    return float(2.0 * np.count_nonzero(pred & ref) / size_sum)


def normalized_surface_distance(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing_mm_zyx: tuple[float, float, float],
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
) -> float:
    """Normalized surface distance (surface Dice at a tolerance, Nikolov et al. 2021) of two 3-D masks,
    as DeepMind's ``surface-distance`` package computes it (the FLARE21 evaluation code).

    Surface elements live on the grid of voxel corners: each corner whose 2 x 2 x 2 neighbourhood of
    voxels is partly inside and partly outside a mask holds the piece of the mask's marching-cubes
    surface that crosses that neighbourhood, with its area in mm² (see :func:`_surfel_area_table`;
    outside the array counts as outside the mask). The NSD is the area of both surfaces lying within
    ``tolerance_mm`` of the other surface, divided by the total area of both:

        (area(S_P within tol of S_R) + area(S_R within tol of S_P)) / (area(S_P) + area(S_R))

    Distances are Euclidean between surface-element positions in mm, nearest neighbours found with a
    k-d tree over the two surfaces' elements (the same distances as a Euclidean distance transform of
    each surface, as the reference code computes them, without its memory and time over the whole
    box); a distance equal to the tolerance counts as within. Surfaces are found on the bounding box
    of ``pred | ref`` only.

    Args:
        pred: predicted mask, shape (z, y, x), boolean (non-zero is foreground).
        ref: reference mask, same shape.
        spacing_mm_zyx: voxel size in mm along z, y, x (SimpleITK's ``GetSpacing()`` reversed).
        tolerance_mm: tolerance in mm, >= 0.

    Returns:
        NSD in [0, 1]; 1.0 when both masks are empty, 0.0 when exactly one is.

    Raises:
        ValueError: shapes differ or are not 3-D, spacing is not 3 positive finite numbers, or the
            tolerance is negative or not finite.
    """
    pred, ref = _as_bool_pair(pred, ref)
    if pred.ndim != 3:
        raise ValueError(f"expected 3-D (z, y, x) masks, got shape {pred.shape}")
    spacing = _check_spacing(spacing_mm_zyx)
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(f"tolerance_mm must be a finite number >= 0, got {tolerance_mm!r}")

    pred_any, ref_any = bool(pred.any()), bool(ref.any())
    if not pred_any and not ref_any:
        return 1.0
    if not pred_any or not ref_any:
        return 0.0

    pred_box, ref_box = _crop_to_union(pred, ref, (1, 1, 1))
    return _surface_dice(pred_box, ref_box, spacing, tolerance_mm)


def _surface_dice(
    pred_box: np.ndarray, ref_box: np.ndarray, spacing: tuple[float, float, float], tolerance_mm: float
) -> float:
    """The NSD of two non-empty boolean masks on the same box (see ``normalized_surface_distance``)."""
    # surface element areas (mm²) and distances (mm) to the other surface, as 1-D arrays in the same order
    pred_border, pred_areas = _surface_elements(pred_box, spacing)
    ref_border, ref_areas = _surface_elements(ref_box, spacing)
    # nearest-neighbour distances between the two sets of surface-element positions (mm)
    pred_points = np.argwhere(pred_border) * np.asarray(spacing)
    ref_points = np.argwhere(ref_border) * np.asarray(spacing)
    pred_to_ref_mm = spatial.cKDTree(ref_points).query(pred_points, k=1)[0]
    ref_to_pred_mm = spatial.cKDTree(pred_points).query(ref_points, k=1)[0]

    # Sum the same 1-D arrays for numerator and denominator so that identical surfaces give exactly 1.
    within = (
        pred_areas[pred_to_ref_mm <= tolerance_mm].sum() + ref_areas[ref_to_pred_mm <= tolerance_mm].sum()
    )
    total = pred_areas.sum() + ref_areas.sum()
    return min(1.0, float(within / total))


def _as_bool_pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred).astype(bool, copy=False)
    ref = np.asarray(ref).astype(bool, copy=False)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    return pred, ref


def _check_spacing(spacing_mm_zyx: tuple[float, float, float]) -> tuple[float, float, float]:
    spacing = tuple(float(s) for s in spacing_mm_zyx)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing_mm_zyx must be 3 positive finite numbers, got {spacing_mm_zyx!r}")
    return (spacing[0], spacing[1], spacing[2])


def _crop_to_union(
    pred: np.ndarray, ref: np.ndarray, margin_vox: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of ``pred | ref`` grown by ``margin_vox`` per axis.

    Where the grown box leaves the array the crop is zero-padded, so the returned masks are empty on
    every face of the box. Both inputs must be non-empty.
    """
    box_shape: list[int] = []
    src: list[slice] = []
    dst: list[slice] = []
    for axis, margin in enumerate(margin_vox):
        other_axes = tuple(a for a in range(pred.ndim) if a != axis)
        present = np.flatnonzero(pred.any(axis=other_axes) | ref.any(axis=other_axes))
        lo, hi = int(present[0]) - margin, int(present[-1]) + 1 + margin  # half-open box [lo, hi)
        src_lo, src_hi = max(lo, 0), min(hi, pred.shape[axis])
        box_shape.append(hi - lo)
        src.append(slice(src_lo, src_hi))
        dst.append(slice(src_lo - lo, src_hi - lo))
    crops = []
    for mask in (pred, ref):
        box = np.zeros(box_shape, dtype=bool)
        box[tuple(dst)] = mask[tuple(src)]
        crops.append(box)
    return crops[0], crops[1]


def _surface_elements(
    mask: np.ndarray, spacing_mm_zyx: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """The surface of ``mask`` on the grid of its voxel corners: (border, areas).

    Corner (i, j, k) sits between voxels i..i+1, j..j+1, k..k+1; its neighbour code has bit
    ``4a + 2b + c`` set when voxel (i+a, j+b, k+c) is in the mask. ``border`` marks the corners whose
    code is neither 0 nor 255 (one smaller than ``mask`` on every axis); ``areas`` holds the surface
    area (mm²) of each border corner's code, in the order of ``border``'s nonzero elements. ``mask``
    must be empty on every face of the array (see :func:`_crop_to_union`) so that no surface is lost.
    """
    mask = mask.astype(np.uint8, copy=False)
    code = np.zeros(tuple(n - 1 for n in mask.shape), dtype=np.uint8)
    for a, b, c in itertools.product((0, 1), repeat=3):
        code |= mask[a : a + code.shape[0], b : b + code.shape[1], c : c + code.shape[2]] << (
            4 * a + 2 * b + c
        )
    border = (code != 0) & (code != 255)
    return border, _surfel_area_table(spacing_mm_zyx)[code[border]]


@functools.lru_cache(maxsize=64)
def _surfel_area_table(spacing_mm_zyx: tuple[float, float, float]) -> np.ndarray:
    """Surface area (mm²) inside a 2 x 2 x 2 voxel neighbourhood for each of its 256 neighbour codes
    (bit ``4a + 2b + c`` for voxel (a, b, c)), voxels ``spacing_mm_zyx`` apart.

    The surface is scikit-image's Lorensen marching-cubes surface at level 0.5 through the voxel
    centres. A configuration and its complement bound the same surface, but on ambiguous faces the
    Lorensen cases can add a second sheet to one of the two; the smaller area is the single surface,
    which gives exactly the table of DeepMind's ``surface-distance`` package.
    """
    from skimage import measure  # imported here: only evaluation needs it

    area = np.zeros(256, dtype=np.float64)
    corners = (
        np.arange(256)[:, None]
        >> np.array([4 * a + 2 * b + c for a, b, c in itertools.product((0, 1), repeat=3)])
    ) & 1
    for code in range(1, 255):
        cube = corners[code].reshape(2, 2, 2).astype(np.float64)
        verts, faces, _, _ = measure.marching_cubes(cube, 0.5, spacing=spacing_mm_zyx, method="lorensen")
        area[code] = measure.mesh_surface_area(verts, faces)
    table = np.minimum(area, area[::-1])  # area[::-1][code] is the area of the complement, 255 - code
    table.flags.writeable = False
    return table


# ---------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------


def evaluate_case(pred: sitk.Image, ref: sitk.Image, tolerance_mm: float = DEFAULT_TOLERANCE_MM) -> Scores:
    """Dice and NSD of every organ in :data:`flare_seg.labels.ORGANS` for one case.

    Args:
        pred: predicted label image (integer labels as in ``ORGANS``).
        ref: reference label image on the same grid.
        tolerance_mm: NSD tolerance in mm.

    Returns:
        organ name -> {"dice": ..., "nsd": ...}, organs in label order.

    Raises:
        ValueError: the images are not 3-D single-component images, or their geometries (size,
            spacing, origin, direction) differ beyond a small tolerance; the message names both values.
    """
    check_same_geometry(pred, ref)
    return _score_arrays(
        sitk.GetArrayViewFromImage(pred), sitk.GetArrayViewFromImage(ref), _spacing_mm_zyx(ref), tolerance_mm
    )


def _spacing_mm_zyx(image: sitk.Image) -> tuple[float, float, float]:
    """Voxel size in mm in array order.

    The one place where axes flip: SimpleITK's ``GetSpacing()`` is x,y,z while the arrays from
    ``sitk.GetArrayViewFromImage`` are indexed z,y,x.
    """
    x, y, z = image.GetSpacing()
    return (z, y, x)


def _score_arrays(
    pred_zyx: np.ndarray | None,
    ref_zyx: np.ndarray,
    spacing_mm_zyx: tuple[float, float, float],
    tolerance_mm: float,
) -> Scores:
    """Per-organ scores of label arrays (z,y,x); ``pred_zyx=None`` scores an empty prediction."""
    scores: Scores = {}
    for label, organ in ORGANS.items():
        ref_mask = ref_zyx == label
        pred_mask = np.zeros_like(ref_mask) if pred_zyx is None else pred_zyx == label
        scores[organ] = {
            "dice": dice(pred_mask, ref_mask),
            "nsd": normalized_surface_distance(pred_mask, ref_mask, spacing_mm_zyx, tolerance_mm),
        }
    return scores


def _check_label_image(image: sitk.Image, name: str) -> None:
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"{name} must be a 3-D single-component label image, got dimension {image.GetDimension()} "
            f"with {image.GetNumberOfComponentsPerPixel()} components"
        )
    values = sitk.GetArrayViewFromImage(image)
    low, high = float(values.min()), float(values.max())
    if low < 0:  # a CT (HU) given where labels belong, most likely
        raise ValueError(
            f"{name} is not a label image: its values run from {low:g} to {high:g} "
            f"(labels are 0 background, {', '.join(f'{k} {n}' for k, n in ORGANS.items())})"
        )
    if high > max(ORGANS):
        logger.warning(
            "%s has labels above %d (up to %g): they are not organs scored here", name, max(ORGANS), high
        )


def check_same_geometry(pred: sitk.Image, ref: sitk.Image) -> None:
    """Raise ValueError (naming what differs) unless ``pred`` and ``ref`` are 3-D label images on
    one grid: size, spacing, origin and direction."""
    _check_label_image(pred, "prediction")
    _check_label_image(ref, "reference")
    if pred.GetSize() != ref.GetSize():
        raise ValueError(f"size (x,y,z) differs: prediction {pred.GetSize()}, reference {ref.GetSize()}")
    checks = (
        ("spacing (x,y,z) mm", pred.GetSpacing(), ref.GetSpacing(), GEOMETRY_ATOL_MM),
        ("origin (x,y,z) mm", pred.GetOrigin(), ref.GetOrigin(), GEOMETRY_ATOL_MM),
        ("direction", pred.GetDirection(), ref.GetDirection(), DIRECTION_ATOL),
    )
    for what, pred_value, ref_value, atol in checks:
        if not np.allclose(pred_value, ref_value, rtol=0.0, atol=atol):
            raise ValueError(
                f"{what} differs beyond {atol:g}: "
                f"prediction {tuple(pred_value)}, reference {tuple(ref_value)}"
            )


# ---------------------------------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------------------------------


def evaluate_dirs(
    pred_dir: Path,
    label_dir: Path,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    out_dir: Path | None = None,
) -> EvaluationReport:
    """Evaluate the predictions in ``pred_dir`` against every label in ``label_dir``.

    Cases are the ``*.nii.gz`` files of ``label_dir``; the case id is the file name without
    ``.nii.gz`` and without a trailing ``_0000`` (FLARE TrainingMask names ``<case>.nii.gz`` are the
    norm). The prediction of a case is ``pred_dir/<case>.nii.gz``, or failing that
    ``pred_dir/<case>_0000.nii.gz``. A case without a prediction is scored as an empty prediction
    (Dice 0 / NSD 0 for organs present in its label) and listed in ``missing``. Prediction files
    without a label are ignored with a warning.

    Writes, atomically (temporary file + ``os.replace``), into ``out_dir`` (default ``pred_dir``):
    ``evaluation.csv`` with columns case, organ, dice, nsd (one row per case and organ) and
    ``evaluation.json`` with the per-case scores, per-organ mean and std, the missing cases and the
    tolerance.

    Raises:
        FileNotFoundError: ``pred_dir`` or ``label_dir`` is not a directory.
        ValueError: ``label_dir`` holds no ``*.nii.gz`` file, two label files map to the same case, or
            a prediction's geometry differs from its label's (the message names the case).
    """
    pred_dir, label_dir = Path(pred_dir), Path(label_dir)
    for what, folder in (("prediction", pred_dir), ("label", label_dir)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{what} directory {folder} does not exist")
    label_paths = _label_files(label_dir)
    unused_preds = {p.name for p in pred_dir.glob(f"*{NIFTI_SUFFIX}")}

    per_case: dict[str, Scores] = {}
    missing: list[str] = []
    for case, label_path in sorted(label_paths.items()):
        pred_path = _prediction_file(pred_dir, case)
        if pred_path is None:
            missing.append(case)
        else:
            unused_preds.discard(pred_path.name)
        per_case[case] = scores = _score_case(case, label_path, pred_path, pred_dir, tolerance_mm)
        logger.info(
            "%s: %s",
            case,
            ", ".join(f"{organ} dice={s['dice']:.4f} nsd={s['nsd']:.4f}" for organ, s in scores.items()),
        )
    if unused_preds:
        logger.warning(
            "ignoring %d prediction file(s) without a label: %s", len(unused_preds), sorted(unused_preds)
        )

    mean, std = _aggregate(per_case)
    report = EvaluationReport(
        per_case=per_case, mean=mean, std=std, missing=missing, tolerance_mm=float(tolerance_mm)
    )
    _write_report(report, pred_dir if out_dir is None else Path(out_dir))
    return report


def _score_case(
    case: str, label_path: Path, pred_path: Path | None, pred_dir: Path, tolerance_mm: float
) -> Scores:
    """One case's per-organ scores; without a prediction, those of an empty prediction."""
    try:
        ref = read_label_image(label_path)
    except ValueError as error:
        raise ValueError(f"case {case}: label {label_path}: {error}") from error
    if pred_path is None:
        logger.warning("no prediction for case %s in %s: scored as empty", case, pred_dir)
        _check_label_image(ref, f"label {label_path}")
        return _score_arrays(None, sitk.GetArrayViewFromImage(ref), _spacing_mm_zyx(ref), tolerance_mm)
    try:
        return evaluate_case(read_label_image(pred_path), ref, tolerance_mm)
    except ValueError as error:
        raise ValueError(f"case {case} ({pred_path} vs {label_path}): {error}") from error


def _write_report(report: EvaluationReport, out_dir: Path) -> None:
    """``evaluation.csv`` and ``evaluation.json`` into ``out_dir``, each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / CSV_NAME, _csv_text(report.per_case))
    _write_atomic(out_dir / JSON_NAME, json.dumps(report.to_json_dict(), indent=2, allow_nan=False) + "\n")
    logger.info("wrote %s and %s", out_dir / CSV_NAME, out_dir / JSON_NAME)


def read_label_image(path: Path) -> sitk.Image:
    """A label image from a NIfTI file, checked as the service checks its inputs: a readable 3-D
    scalar image whose data is complete (ITK zero-fills a truncated file without a word, which
    would be scored as a poor segmentation).

    Raises:
        ValueError (``InputError``): the message names the file and what is wrong with it.
    """
    from flare_seg.service.io import read_ct_volume  # NIfTI validation, shared with the service

    return read_ct_volume(Path(path), MAX_LABEL_VOXELS).to_image()  # one pass; checks CRC and length


def _case_id(file_name: str) -> str:
    case = file_name.removesuffix(NIFTI_SUFFIX)
    return case.removesuffix(CHANNEL_SUFFIX) or case


def _label_files(label_dir: Path) -> dict[str, Path]:
    label_paths: dict[str, Path] = {}
    for path in sorted(label_dir.glob(f"*{NIFTI_SUFFIX}")):
        case = _case_id(path.name)
        if case in label_paths:
            raise ValueError(f"label files {label_paths[case]} and {path} both map to case {case!r}")
        label_paths[case] = path
    if not label_paths:
        raise ValueError(f"no *{NIFTI_SUFFIX} label files in {label_dir}")
    return label_paths


def _prediction_file(pred_dir: Path, case: str) -> Path | None:
    for name in (f"{case}{NIFTI_SUFFIX}", f"{case}{CHANNEL_SUFFIX}{NIFTI_SUFFIX}"):
        if (pred_dir / name).is_file():
            return pred_dir / name
    return None


def _aggregate(per_case: dict[str, Scores]) -> tuple[Scores, Scores]:
    mean: Scores = {}
    std: Scores = {}
    for organ in ORGANS.values():
        mean[organ], std[organ] = {}, {}
        for metric in METRICS:
            values = np.array([scores[organ][metric] for scores in per_case.values()], dtype=np.float64)
            mean[organ][metric] = float(values.mean())
            std[organ][metric] = float(values.std())
    return mean, std


def _csv_text(per_case: dict[str, Scores]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "organ", *METRICS])
    for case, scores in per_case.items():
        for organ, organ_scores in scores.items():
            writer.writerow([case, organ, *(repr(organ_scores[m]) for m in METRICS)])
    return buffer.getvalue()


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as tmp:
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise

"""Building a CT volume from a DICOM stack: slice order, geometry, rescale, decoding.

Slices are sorted by their position along the slice normal (Image Position (Patient) projected on
the cross product of the two Image Orientation (Patient) cosines), never by Instance Number. The
grid's x axis runs along a row (increasing column index: the first orientation cosine), y along a
column (the second cosine), z along the normal, so ``direction``'s columns are those three vectors
and the origin is the first sorted slice's position: the same placement SimpleITK gives a series.

What cannot make a regular grid is an error that says so, never a silently wrong mask: slices
missing from the stack, non-uniform spacing, slices offset within their own plane (gantry tilt),
two slices at one position, mixed sizes or orientations.

Stored values become HU with each slice's Rescale Slope and Intercept: int16 (values outside its
range clipped) for integer rescales, float32 otherwise. Compressed transfer syntaxes are decoded by
pydicom's pixel handlers (pylibjpeg: JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, RLE).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from flare_seg.dicom.series import (
    DicomFile,
    DicomInputError,
    SeriesCandidate,
    SeriesChoice,
    choose_series,
    discover_series,
    sop_class_uid,
    sop_instance_uid,
)
from flare_seg.geometry import Geometry
from flare_seg.service.io import CtVolume, InputTooLargeError

logger = logging.getLogger(__name__)

_ORIENTATION_TOL = 1e-3  # direction cosines of one stack agree to this
_POSITION_TOL_MM = 0.02  # slice gaps may differ this much (plus 1 %) from the median
_INPLANE_TOL_MM = 0.05  # slice positions may stray this far from the line along the normal
INT16_MIN, INT16_MAX = -32768, 32767


@dataclass(frozen=True)
class Plane:
    """Where one slice (a file, or a frame of a multi-frame file) lies, and its rescale."""

    file_index: int
    frame_index: int  # 0 for single-frame files
    position_mm: tuple[float, float, float]
    orientation: tuple[float, ...]  # the six Image Orientation (Patient) cosines
    spacing_mm_rc: tuple[float, float]  # Pixel Spacing: between rows, between columns
    rows: int
    columns: int
    slope: float
    intercept: float


@dataclass(frozen=True)
class DicomSource:
    """What a DICOM SEG needs to reference the images a volume was built from.

    ``datasets`` are the source headers (no pixel data): for single-frame images one per volume
    slice, in volume order (z index k is ``datasets[k]``); for a multi-frame image the one object,
    with ``frame_order[k]`` the (0-based) frame that is volume slice k.
    """

    datasets: tuple[Dataset, ...] = field(repr=False)
    frame_order: tuple[int, ...] | None
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    description: str
    series_number: int | None
    warnings: tuple[str, ...] = ()  # about a DICOM SEG that references these images (derived UIDs)

    @property
    def multi_frame(self) -> bool:
        return self.frame_order is not None


@dataclass
class DicomVolume:
    """A CT volume read from DICOM, the source it references, and how its series was chosen."""

    volume: CtVolume
    source: DicomSource
    choice: SeriesChoice | None = None

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.source.warnings


def read_dicom_volume(
    folder: Path, max_voxels: int, *, display_name: str | None = None, recursive: bool = True
) -> DicomVolume:
    """Find the series in ``folder`` (and its subfolders, when ``recursive``), choose one (logged,
    with the reason) and read it.

    Raises:
        DicomInputError: no CT series, or the chosen one cannot make a regular volume.
        InputTooLargeError: more than ``max_voxels`` voxels.
    """
    where = display_name or folder.name
    candidates, unreadable = discover_series(folder, recursive=recursive)
    try:
        choice = choose_series(candidates, where)
        logger.info("%s: chose %s", where, choice.reason)
        volume = read_series(choice.chosen, max_voxels, where=where)
    except DicomInputError as e:
        if not unreadable:
            raise
        shown = "; ".join(unreadable[:3]) + (
            f"; and {len(unreadable) - 3} more" if len(unreadable) > 3 else ""
        )
        raise DicomInputError(f"{e} (unreadable files: {shown})") from None
    volume.choice = choice
    return volume


def read_series(candidate: SeriesCandidate, max_voxels: int, *, where: str) -> DicomVolume:
    """The volume of one stack (see the module docstring for the rules)."""
    if candidate.rejected is not None:
        raise DicomInputError(f"{where}: {candidate.label} cannot be segmented: {candidate.rejected}")
    files = candidate.files
    planes = [p for i, f in enumerate(files) for p in planes_of(f, i, where)]
    try:
        order, geometry = stack_geometry(planes, where)
    except DicomInputError as e:
        if not candidate.left_out:
            raise
        raise DicomInputError(f"{e} (left out of the series: {', '.join(candidate.left_out)})") from None
    nx, ny, nz = geometry.size_xyz
    if nx * ny * nz > max_voxels:
        raise InputTooLargeError(
            f"{where}: {nx} x {ny} x {nz} voxels ({nx * ny * nz}), over the limit of {max_voxels}"
        )
    _check_frame_of_reference(files, where)
    array = _decode(files, planes, order, geometry, where)
    # The source's warnings concern a SEG that references the images: whoever writes one says them
    # (a NIfTI mask of the same series needs no UIDs).
    return DicomVolume(CtVolume(array, geometry), _source(candidate, planes, order))


# ----------------------------------------------------------------------------- planes and geometry


def _fg(ds: Dataset, frame: int, sequence: str, attribute: str):
    """A functional-group attribute of a multi-frame image: the frame's own, else the shared one."""
    for groups in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        seq = ds.get(groups)
        if not seq:
            continue
        item = seq[frame] if groups.startswith("PerFrame") and len(seq) > frame else seq[0]
        inner = item.get(sequence)
        if inner and attribute in inner[0]:
            return inner[0].get(attribute)
    return None


def planes_of(f: DicomFile, file_index: int, where: str) -> list[Plane]:
    """The slice planes of a CT object: one for a single-frame image, one per frame otherwise."""
    ds = f.dataset
    rows, columns = int(ds.Rows), int(ds.Columns)
    if "PerFrameFunctionalGroupsSequence" not in ds and f.frames == 1:
        values = [
            (
                ds.get("ImagePositionPatient"),
                ds.get("ImageOrientationPatient"),
                ds.get("PixelSpacing"),
                ds.get("RescaleSlope"),
                ds.get("RescaleIntercept"),
            )
        ]
    else:
        values = [
            (
                _fg(ds, i, "PlanePositionSequence", "ImagePositionPatient"),
                _fg(ds, i, "PlaneOrientationSequence", "ImageOrientationPatient"),
                _fg(ds, i, "PixelMeasuresSequence", "PixelSpacing"),
                _fg(ds, i, "PixelValueTransformationSequence", "RescaleSlope"),
                _fg(ds, i, "PixelValueTransformationSequence", "RescaleIntercept"),
            )
            for i in range(f.frames)
        ]
    planes = []
    for i, (ipp, iop, spacing, slope, intercept) in enumerate(values):
        frame = f" frame {i + 1}" if f.frames > 1 else ""
        for name, value, n in (
            ("Image Position (Patient)", ipp, 3),
            ("Image Orientation (Patient)", iop, 6),
            ("Pixel Spacing", spacing, 2),
        ):
            if value is None or len(value) != n or not all(math.isfinite(float(v)) for v in value):
                raise DicomInputError(f"{where}: {f.path.name}{frame}: missing or invalid {name}")
        planes.append(
            Plane(
                file_index,
                i,
                tuple(float(v) for v in ipp),  # type: ignore[arg-type]
                tuple(float(v) for v in iop),
                (float(spacing[0]), float(spacing[1])),
                rows,
                columns,
                float(slope) if slope not in (None, "") else 1.0,
                float(intercept) if intercept not in (None, "") else 0.0,
            )
        )
    return planes


def stack_geometry(planes: Sequence[Plane], where: str) -> tuple[list[int], Geometry]:
    """The slice order (indices into ``planes``) and the regular grid the planes make.

    Raises:
        DicomInputError: the planes do not make one regular grid (see the module docstring).
    """
    first = planes[0]
    _check_same_plane_layout(planes, where)
    row = np.asarray(first.orientation[:3])
    col = np.asarray(first.orientation[3:])
    if abs(np.linalg.norm(row) - 1) > 1e-2 or abs(np.linalg.norm(col) - 1) > 1e-2 or abs(row @ col) > 1e-2:
        raise DicomInputError(
            f"{where}: Image Orientation (Patient) {first.orientation} is not two unit, orthogonal vectors"
        )
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    positions = np.asarray([p.position_mm for p in planes])
    along = positions @ normal
    order = [int(i) for i in np.argsort(along, kind="stable")]
    sorted_along = along[order]
    gap_mm = _slice_gap(sorted_along, where)
    _check_no_tilt(positions[order], normal, gap_mm, where)
    row_mm, col_mm = first.spacing_mm_rc
    if not (row_mm > 0 and col_mm > 0):
        raise DicomInputError(f"{where}: invalid Pixel Spacing {first.spacing_mm_rc}")
    direction = np.stack([row, col, normal], axis=1)  # columns: the image x, y, z axes
    geometry = Geometry(
        (first.columns, first.rows, len(planes)),
        (col_mm, row_mm, gap_mm),
        tuple(float(v) for v in positions[order[0]]),  # type: ignore[arg-type]
        tuple(float(v) for v in direction.ravel()),
    )
    return order, geometry


def _check_same_plane_layout(planes: Sequence[Plane], where: str) -> None:
    first = planes[0]
    for p in planes[1:]:
        if (p.rows, p.columns) != (first.rows, first.columns):
            raise DicomInputError(
                f"{where}: slices of different sizes "
                f"({first.columns} x {first.rows} and {p.columns} x {p.rows})"
            )
        if max(abs(a - b) for a, b in zip(p.orientation, first.orientation, strict=True)) > _ORIENTATION_TOL:
            raise DicomInputError(f"{where}: slices of different orientations in one stack")
        if max(abs(a - b) for a, b in zip(p.spacing_mm_rc, first.spacing_mm_rc, strict=True)) > 1e-4 * max(
            first.spacing_mm_rc
        ):
            raise DicomInputError(
                f"{where}: slices with different pixel spacings "
                f"({first.spacing_mm_rc} and {p.spacing_mm_rc} mm)"
            )


def _slice_gap(sorted_along: np.ndarray, where: str) -> float:
    """The constant distance between consecutive slices, or a clear error."""
    gaps = np.diff(sorted_along)
    if len(gaps) == 0:
        raise DicomInputError(f"{where}: a single slice, not a volume")
    median = float(np.median(gaps))
    if median <= _POSITION_TOL_MM or np.min(gaps) <= _POSITION_TOL_MM:
        k = int(np.argmin(gaps))
        raise DicomInputError(
            f"{where}: two slices at the same position ({sorted_along[k]:.2f} mm along the slice normal); "
            "duplicate files or two acquisitions in one series"
        )
    tol = _POSITION_TOL_MM + 0.01 * median
    big = np.flatnonzero(gaps > median + tol)
    if len(big) and np.all(np.abs(gaps[big] / median - np.round(gaps[big] / median)) * median <= tol):
        missing = int(sum(round(g / median) - 1 for g in gaps[big]))
        k = int(big[0])
        raise DicomInputError(
            f"{where}: {missing} slice(s) missing (a gap from {sorted_along[k]:.2f} "
            f"to {sorted_along[k + 1]:.2f} mm "
            f"along the slice normal, where the slices are {median:.2f} mm apart); export the complete series"
        )
    if np.max(np.abs(gaps - median)) > tol:
        raise DicomInputError(
            f"{where}: non-uniform slice spacing (gaps from {np.min(gaps):.3f} to {np.max(gaps):.3f} mm); "
            "reconstruct the series at a constant spacing"
        )
    return float((sorted_along[-1] - sorted_along[0]) / (len(sorted_along) - 1))


def _check_no_tilt(sorted_positions: np.ndarray, normal: np.ndarray, gap_mm: float, where: str) -> None:
    offsets = sorted_positions - sorted_positions[0]
    lateral = offsets - np.outer(offsets @ normal, normal)
    drift = float(np.max(np.linalg.norm(lateral, axis=1)))
    if drift > _INPLANE_TOL_MM:
        extent = float(offsets[-1] @ normal)
        tilt = math.degrees(math.atan2(float(np.linalg.norm(lateral[-1])), extent)) if extent else 90.0
        raise DicomInputError(
            f"{where}: the slices are offset within their own plane "
            f"(gantry tilt of about {tilt:.1f} degrees, "
            f"{drift:.2f} mm over the stack); tilted acquisitions are not supported: reconstruct without tilt"
        )


def _check_frame_of_reference(files: Sequence[DicomFile], where: str) -> None:
    uids = {str(f.dataset.get("FrameOfReferenceUID", "") or "") for f in files}
    if len(uids) > 1:
        raise DicomInputError(f"{where}: the slices have {len(uids)} different Frame of Reference UIDs")


# ----------------------------------------------------------------------------- voxels


def _decode(
    files: Sequence[DicomFile], planes: Sequence[Plane], order: Sequence[int], geometry: Geometry, where: str
) -> np.ndarray:
    integral = all(float(p.slope).is_integer() and float(p.intercept).is_integer() for p in planes)
    out = np.empty(geometry.shape_zyx, np.int16 if integral else np.float32)
    slot_of = {(planes[i].file_index, planes[i].frame_index): k for k, i in enumerate(order)}
    for file_index, f in enumerate(files):
        k = slot_of[(file_index, 0)]
        if _read_native_into(f, out[k], planes[order[k]], where):
            continue
        stored = _pixels(f, where)
        if stored.ndim == 2:
            stored = stored[np.newaxis]
        expected = (f.frames, geometry.size_xyz[1], geometry.size_xyz[0])
        if stored.shape != expected:
            raise DicomInputError(
                f"{where}: {f.path.name}: pixel data of shape {stored.shape}, "
                f"expected {expected} (frames, rows, columns)"
            )
        for frame in range(f.frames):
            k = slot_of[(file_index, frame)]
            plane = planes[order[k]]
            _rescale_into(out[k], stored[frame], plane.slope, plane.intercept)
    return out


def _read_native_into(f: DicomFile, out: np.ndarray, plane: Plane, where: str) -> bool:
    """Read an uncompressed little-endian 16-bit slice straight from its file into ``out`` (int16)
    and rescale it there, when that gives exactly what decoding and ``_rescale_into`` would (the
    stored range and the rescaled range fit int16). False: the caller takes the general path."""
    ds = f.dataset
    syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    bits_stored = int(ds.get("BitsStored", 16) or 16)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    if (
        f.pixel_offset is None
        or f.frames != 1
        or out.dtype != np.int16
        or syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
        or int(ds.get("BitsAllocated", 0) or 0) != 16
        or f.pixel_length < out.nbytes
        or (signed and bits_stored != 16)
        or (not signed and bits_stored > 15)
        or not (plane.slope.is_integer() and plane.intercept.is_integer())
    ):
        return False
    low, high = (-(1 << 15), (1 << 15) - 1) if signed else (0, (1 << bits_stored) - 1)
    ends = (low * plane.slope + plane.intercept, high * plane.slope + plane.intercept)
    if min(ends) < INT16_MIN or max(ends) > INT16_MAX:
        return False
    try:
        with open(f.path, "rb") as handle:
            handle.seek(f.pixel_offset)
            got = handle.readinto(out.data.cast("B"))  # out is a contiguous slice of the volume
    except OSError as e:
        raise DicomInputError(
            f"{where}: {f.path.name}: cannot read the pixel data ({e.strerror or e})"
        ) from None
    if got != out.nbytes:
        raise DicomInputError(
            f"{where}: {f.path.name}: cannot read the pixel data (the file ends after {got} of its "
            f"{out.nbytes} pixel bytes)"
        )
    if not signed and bits_stored < 16:
        out &= (1 << bits_stored) - 1  # bits above Bits Stored are not part of the value
    if plane.slope != 1:
        out *= np.int16(plane.slope)
    if plane.intercept:
        out += np.int16(plane.intercept)
    return True


def _pixels(f: DicomFile, where: str) -> np.ndarray:
    try:
        ds = pydicom.dcmread(f.path)
        if "PixelData" not in ds and "FloatPixelData" not in ds:
            raise DicomInputError(f"{where}: {f.path.name}: no pixel data")
        return ds.pixel_array
    except DicomInputError:
        raise
    except Exception as e:  # decoders raise many types for truncated or corrupt data
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DicomInputError(f"{where}: {f.path.name}: cannot read the pixel data ({detail})") from None


def _rescale_into(out: np.ndarray, stored: np.ndarray, slope: float, intercept: float) -> None:
    if out.dtype == np.float32:
        np.multiply(stored, np.float32(slope), out=out, casting="unsafe")
        out += np.float32(intercept)
        return
    if slope == 1 and stored.dtype in (np.int16, np.uint8, np.int8) and INT16_MIN <= intercept <= INT16_MAX:
        wide = stored.astype(np.int32)
    else:
        wide = stored.astype(np.int32) * int(slope)
    wide += int(intercept)
    np.clip(wide, INT16_MIN, INT16_MAX, out=wide)
    out[...] = wide


# ----------------------------------------------------------------------------- the source record


def _source(candidate: SeriesCandidate, planes: Sequence[Plane], order: Sequence[int]) -> DicomSource:
    files = candidate.files
    warnings: list[str] = []
    first = files[0].dataset
    study_uid = str(first.get("StudyInstanceUID", "") or "")
    series_uid = candidate.series_uid
    sop_uids = [sop_instance_uid(f.dataset) for f in files]
    if not study_uid:
        study_uid = generate_uid(entropy_srcs=["study", *sop_uids])
        warnings.append(
            f"the images have no Study Instance UID; the SEG refers to a derived one ({study_uid}), "
            "so a viewer may not place it in the images' study"
        )
    if not series_uid:
        series_uid = generate_uid(entropy_srcs=["series", *sop_uids])
        warnings.append(
            f"the images have no Series Instance UID; the SEG refers to a derived one ({series_uid}), "
            "so a viewer may not link it to the images"
        )
    datasets = [_referencable(f.dataset, study_uid, series_uid) for f in files]
    multi = len(files) == 1 and files[0].frames > 1
    if multi:
        frame_order: tuple[int, ...] | None = tuple(planes[i].frame_index for i in order)
        ordered = tuple(datasets)
    else:
        frame_order = None
        ordered = tuple(datasets[planes[i].file_index] for i in order)
    return DicomSource(
        ordered,
        frame_order,
        study_uid,
        series_uid,
        str(first.get("FrameOfReferenceUID", "") or ""),
        candidate.description,
        candidate.series_number,
        tuple(warnings),
    )


def _referencable(ds: Dataset, study_uid: str, series_uid: str) -> Dataset:
    """``ds``, or a copy with the UIDs a reference needs filled in (some anonymizers empty them
    in the dataset but leave them in the file meta information)."""
    needs = (
        not ds.get("SOPInstanceUID")
        or not ds.get("SOPClassUID")
        or str(ds.get("StudyInstanceUID", "") or "") != study_uid
        or str(ds.get("SeriesInstanceUID", "") or "") != series_uid
    )
    if not needs:
        return ds
    fixed = copy.deepcopy(ds)
    fixed.SOPInstanceUID = sop_instance_uid(ds)
    fixed.SOPClassUID = sop_class_uid(ds)
    fixed.StudyInstanceUID = study_uid
    fixed.SeriesInstanceUID = series_uid
    return fixed

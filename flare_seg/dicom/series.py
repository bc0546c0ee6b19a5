"""Finding the DICOM series in a folder and choosing the one to segment.

Every file's header is read (not its pixels); files are grouped by Series Instance UID and, inside
a series, by image orientation. A group can be segmented when it is a stack of CT images (CT Image
Storage, Enhanced or Legacy Converted Enhanced CT), not localizers or scouts, not secondary
captures, dose reports or other non-image objects. Of those, ``choose_series`` takes the axial one
with the most slices and says why, naming what it left out.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from flare_seg.service.io import InputError

logger = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.2"
CT_SOP_CLASSES = frozenset(
    {CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE, LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE}
)
_IOP_DECIMALS = 3  # orientations equal to 1e-3 belong to one stack
_AXIAL_MIN_COS = 0.5  # a stack is "axial" when its normal is nearer the patient's z axis than not


class DicomInputError(InputError):
    """A DICOM input that cannot be segmented; the message says which files and why."""


@dataclass(frozen=True)
class DicomFile:
    """One DICOM object's header (no pixel data) and the file it came from."""

    path: Path
    dataset: Dataset = field(repr=False)
    # Where the (uncompressed) pixel data lies in the file: byte offset and length; None when it
    # is encapsulated (compressed) or unknown. Lets a reader fetch the voxels without parsing again.
    pixel_offset: int | None = None
    pixel_length: int = 0

    @property
    def sop_class_uid(self) -> str:
        return sop_class_uid(self.dataset)

    @property
    def frames(self) -> int:
        return int(self.dataset.get("NumberOfFrames", 1) or 1)


@dataclass(frozen=True)
class SeriesCandidate:
    """A stack of images of one series and one orientation, or a series that cannot be segmented
    (``rejected`` says why)."""

    key: str  # Series Instance UID, with an orientation suffix when the series holds several stacks
    series_uid: str
    description: str
    series_number: int | None
    modality: str
    files: tuple[DicomFile, ...] = field(repr=False)
    orientation: str  # "axial", "coronal", "sagittal" (the patient plane nearest to the slices) or ""
    slices: int
    rejected: str | None = None
    left_out: tuple[str, ...] = ()  # objects of the series that are not part of the stack, and why

    @property
    def label(self) -> str:
        number = f"{self.series_number} " if self.series_number is not None else ""
        description = f"'{self.description}' " if self.description else ""
        return f"series {number}{description}({self.series_uid or 'no Series Instance UID'})"


@dataclass(frozen=True)
class SeriesChoice:
    """The series chosen for segmentation and why, in one sentence fit for a log line."""

    chosen: SeriesCandidate
    reason: str
    others: tuple[SeriesCandidate, ...] = ()


def sop_class_uid(ds: Dataset) -> str:
    """The SOP Class UID of ``ds``, from the file meta information when the dataset's own is empty."""
    uid = str(ds.get("SOPClassUID", "") or "")
    if not uid and hasattr(ds, "file_meta"):
        uid = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
    return uid


def sop_instance_uid(ds: Dataset) -> str:
    """The SOP Instance UID of ``ds``, from the file meta information when the dataset's own is empty."""
    uid = str(ds.get("SOPInstanceUID", "") or "")
    if not uid and hasattr(ds, "file_meta"):
        uid = str(ds.file_meta.get("MediaStorageSOPInstanceUID", "") or "")
    return uid


def _sop_class_name(uid: str) -> str:
    name = UID(uid).name if uid else ""
    return name if name and name != uid else (uid or "no SOP Class UID")


def image_orientation(ds: Dataset) -> tuple[float, ...] | None:
    """Image Orientation (Patient) of a single-frame image, or of the first frame of a multi-frame one."""
    iop = ds.get("ImageOrientationPatient")
    if iop is None:
        for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
            seq = ds.get(groups)
            if seq and "PlaneOrientationSequence" in seq[0]:
                iop = seq[0].PlaneOrientationSequence[0].get("ImageOrientationPatient")
                break
    if iop is None or len(iop) != 6:
        return None
    return tuple(float(v) for v in iop)


def orientation_name(iop: Sequence[float]) -> str:
    """The patient plane nearest to slices of orientation ``iop``: axial, coronal or sagittal."""
    normal = np.cross(np.asarray(iop[:3]), np.asarray(iop[3:]))
    axis = int(np.argmax(np.abs(normal)))
    if axis == 2 and abs(normal[2]) >= _AXIAL_MIN_COS * np.linalg.norm(normal):
        return "axial"
    return ("sagittal", "coronal", "axial")[axis]


def why_not_ct_image(ds: Dataset) -> str | None:
    """None when ``ds`` is a CT image that can be part of a volume, else the reason it is not."""
    sop_class = sop_class_uid(ds)
    modality = str(ds.get("Modality", "") or "")
    if sop_class not in CT_SOP_CLASSES:
        kind = "not an image" if "Rows" not in ds else "not a CT image"
        return f"{kind} ({_sop_class_name(sop_class)}, modality {modality or 'none'})"
    if modality and modality != "CT":
        return f"modality {modality}, not CT"
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type:
        return "a localizer (scout) image"
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return "a colour image, not a grayscale CT"
    if "Rows" not in ds or "Columns" not in ds:
        return "no image size (Rows, Columns)"
    if image_orientation(ds) is None:
        return "no Image Orientation (Patient)"
    return None


def dicom_files_in(folder: Path, *, recursive: bool = False) -> list[Path]:
    """The files of ``folder`` (and below, when ``recursive``) that carry the DICOM file preamble."""
    paths = sorted(folder.rglob("*") if recursive else folder.iterdir())
    return [p for p in paths if p.is_file() and not p.name.startswith(".") and has_dicom_preamble(p)]


def has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def read_headers(paths: Iterable[Path]) -> tuple[list[DicomFile], list[str]]:
    """The headers of ``paths`` (pixel data left out), and a one-line note per file that cannot be
    read: not parseable, or an image whose file ends before its pixel data (cut short)."""
    headers: list[DicomFile] = []
    unreadable: list[str] = []
    for path in paths:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                # values over 4 KiB (the pixel data) are skipped, not read: only their presence is seen
                ds = pydicom.dcmread(path, defer_size=4096)
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as e:
            unreadable.append(
                f"{path.name}: unreadable DICOM header ({str(e).splitlines()[0] if str(e) else e})"
            )
            continue
        has_pixels = False
        offset, length = None, 0
        for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            if tag in ds:
                has_pixels = True
                raw = ds.get_item(tag, keep_deferred=True)
                if isinstance(raw, RawDataElement) and raw.value is None and raw.length != 0xFFFFFFFF:
                    offset, length = int(raw.value_tell), int(raw.length)
                del ds[tag]
        _load_deferred(ds)
        truncated = any("end of file" in str(w.message).lower() for w in caught)
        if truncated or (not has_pixels and (sop_class_uid(ds) in CT_SOP_CLASSES or "Rows" in ds)):
            unreadable.append(f"{path.name}: truncated DICOM file (it ends before its pixel data)")
            continue
        headers.append(DicomFile(path, ds, offset, length))
    return headers, unreadable


def _load_deferred(ds: Dataset) -> None:
    """Read now the (rare, non-pixel) values over 4 KiB that ``dcmread`` deferred, so that the
    header never goes back to its file (which may be a temporary one)."""
    for tag in list(ds.keys()):
        raw = ds.get_item(tag, keep_deferred=True)
        if isinstance(raw, RawDataElement) and raw.value is None and raw.length:
            _ = ds[tag]  # the access reads the deferred value


def discover_series(folder: Path, *, recursive: bool = False) -> tuple[list[SeriesCandidate], list[str]]:
    """The series of the DICOM files in ``folder``, and a note per file that could not be read."""
    headers, unreadable = read_headers(dicom_files_in(folder, recursive=recursive))
    for note in unreadable:
        logger.warning("%s", note)
    return group_series(headers), unreadable


def _series_key(ds: Dataset) -> str:
    uid = str(ds.get("SeriesInstanceUID", "") or "")
    if uid:
        return uid
    # Anonymizers sometimes empty the UIDs: keep such files together by what they still share.
    shared = (ds.get("FrameOfReferenceUID", ""), ds.get("SeriesNumber", ""), ds.get("Modality", ""))
    return "no-series-uid:" + ":".join(str(v) for v in shared)


def group_series(headers: Sequence[DicomFile]) -> list[SeriesCandidate]:
    """Group headers into series, and each series' CT images into stacks of one orientation."""
    by_series: dict[str, list[DicomFile]] = defaultdict(list)
    for h in headers:
        by_series[_series_key(h.dataset)].append(h)
    candidates: list[SeriesCandidate] = []
    for key, files in by_series.items():
        candidates.extend(_series_candidates(key, files))
    return candidates


def _series_candidates(key: str, files: list[DicomFile]) -> list[SeriesCandidate]:
    first = files[0].dataset
    base = SeriesCandidate(
        key,
        series_uid=str(first.get("SeriesInstanceUID", "") or ""),
        description=str(first.get("SeriesDescription", "") or "").strip(),
        series_number=int(first.SeriesNumber) if first.get("SeriesNumber") not in (None, "") else None,
        modality=str(first.get("Modality", "") or ""),
        files=tuple(files),
        orientation="",
        slices=0,
    )
    stacks: dict[tuple[float, ...], list[DicomFile]] = defaultdict(list)
    left_out: Counter[str] = Counter()
    for f in files:
        why = why_not_ct_image(f.dataset)
        if why is not None:
            left_out[why] += 1
            continue
        iop = image_orientation(f.dataset)
        assert iop is not None
        stacks[tuple(float(v) for v in np.round(iop, _IOP_DECIMALS))].append(f)
    notes = tuple(f"{n} object(s): {why}" for why, n in left_out.items())
    if not stacks:
        reason = "; ".join(why for why, _ in left_out.most_common()) or "no images"
        return [replace(base, rejected=reason)]
    out = []
    for i, (iop, members) in enumerate(sorted(stacks.items(), key=lambda kv: -len(kv[1]))):
        slices = sum(m.frames for m in members)
        multi = [m for m in members if m.frames > 1 or m.sop_class_uid != CT_IMAGE_STORAGE]
        rejected = None
        if multi and len(members) > 1:
            rejected = (
                f"{len(members)} objects, of which {len(multi)} multi-frame: "
                "expected one multi-frame object or single-frame slices"
            )
        elif slices < 2:
            rejected = "a single slice, not a volume"
        out.append(
            replace(
                base,
                key=key if len(stacks) == 1 else f"{key}#{i + 1}",
                files=tuple(members),
                orientation=orientation_name(iop),
                slices=slices,
                rejected=rejected,
                left_out=notes
                + ((f"{len(stacks) - 1} stack(s) of other orientations",) if len(stacks) > 1 else ()),
            )
        )
    return out


def choose_series(candidates: Sequence[SeriesCandidate], where: str) -> SeriesChoice:
    """The axial CT stack with the most slices (then the lowest series number), and why.

    Raises:
        DicomInputError: no candidate can be segmented; the message lists each series and why not.
    """
    usable = [c for c in candidates if c.rejected is None]
    if not usable:
        if not candidates:
            raise DicomInputError(f"{where}: no DICOM files found")
        details = "; ".join(f"{c.label}: {c.rejected}" for c in candidates)
        raise DicomInputError(f"{where}: no CT image series to segment ({details})")
    usable.sort(
        key=lambda c: (
            c.orientation != "axial",
            -c.slices,
            c.series_number if c.series_number is not None else 1 << 30,
            c.key,
        )
    )
    chosen = usable[0]
    others = tuple(c for c in candidates if c is not chosen)
    reason = f"{chosen.label}: CT, {chosen.orientation}, {chosen.slices} slices"
    if len(usable) > 1:
        axial = "axial " if chosen.orientation == "axial" else ""
        reason += f" (the {axial}CT stack with the most slices of {len(usable)})"
    if chosen.left_out:
        reason += "; left out of it: " + ", ".join(chosen.left_out)
    if others:
        reason += "; not chosen: " + "; ".join(
            f"{c.label}: {c.rejected or f'{c.orientation} CT, {c.slices} slices'}" for c in others
        )
    return SeriesChoice(chosen, reason, others)


def folders_with_dicom(root: Path) -> list[Path]:
    """Every folder, ``root`` included, that directly holds DICOM files (one case per folder), in
    sorted order."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        if dicom_files_in(here):
            found.append(here)
    return sorted(found)

"""Writing a CT volume as a DICOM CT series (single-frame CT Image Storage), for benchmarks and
tests: any grid (flips, permutations, oblique, anisotropic), any slice or instance order, and the
transfer syntaxes pydicom can encode (uncompressed, RLE, JPEG-LS and JPEG 2000 lossless).

Stored values are unsigned, HU + 1024 with Rescale Intercept -1024 and 12 bits stored as most
scanners write them; a volume reaching below -1024 HU gets its minimum as intercept, one spanning
more than 4096 HU 16 bits stored (so every int16 HU value of a CT is kept exactly).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from flare_seg.dicom.series import CT_IMAGE_STORAGE
from flare_seg.geometry import Geometry

_INTERCEPT = -1024
_BITS_STORED = 12


@dataclass(frozen=True)
class SeriesOptions:
    """How to write the series: UIDs, names, the transfer syntax, the order of files and numbers."""

    study_uid: str = ""
    series_uid: str = ""
    frame_of_reference_uid: str = ""
    series_number: int = 1
    description: str = "CT phantom"
    patient_id: str = "PHANTOM"
    patient_name: str = "Phantom^Test"
    transfer_syntax: str = ExplicitVRLittleEndian
    reverse_instance_numbers: bool = False  # instance 1 is the last slice along z
    reverse_slice_files: bool = False  # file 0 holds the last slice along z (file order != z order)


def write_ct_series(
    array_zyx: np.ndarray, geometry: Geometry, out_dir: Path, options: SeriesOptions | None = None
) -> list[Path]:
    """Write ``array_zyx`` (HU, indexed (z, y, x) on ``geometry``) as one file per z slice.

    Slice k lies at origin + k * spacing_z * (direction's z column); its rows run along the y
    column and its columns along the x column of ``direction``, so a reader that sorts by position
    along the normal rebuilds the grid (reversed along z when ``direction`` is left-handed).
    """
    options = options or SeriesOptions()
    if tuple(array_zyx.shape) != geometry.shape_zyx:
        raise ValueError(f"array shape {array_zyx.shape} does not match the geometry {geometry.shape_zyx}")
    out_dir.mkdir(parents=True, exist_ok=True)
    study = options.study_uid or generate_uid()
    series = options.series_uid or generate_uid()
    frame_of_reference = options.frame_of_reference_uid or generate_uid()
    d = geometry.direction_matrix
    nz = geometry.size_xyz[2]
    low, high = (int(v) for v in (np.min(array_zyx), np.max(array_zyx))) if array_zyx.size else (0, 0)
    intercept = min(_INTERCEPT, low)
    encoding = (intercept, _BITS_STORED if high - intercept < 2**_BITS_STORED else 16)
    paths = []
    for k in range(nz):
        position = np.asarray(geometry.origin_mm_xyz) + k * geometry.spacing_mm_xyz[2] * d[:, 2]
        number = nz - k if options.reverse_instance_numbers else k + 1
        ds = _slice_dataset(
            array_zyx[k], geometry, position, number, (study, series, frame_of_reference), encoding, options
        )
        file_number = nz - k if options.reverse_slice_files else k + 1
        path = out_dir / f"IM{file_number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _slice_dataset(
    hu_yx: np.ndarray,
    geometry: Geometry,
    position: np.ndarray,
    instance_number: int,
    uids: tuple[str, str, str],
    encoding: tuple[int, int],
    options: SeriesOptions,
) -> Dataset:
    """One slice: ``uids`` are the study, series and frame of reference UIDs, ``encoding`` the
    rescale intercept and the bits stored."""
    study, series, frame_of_reference = uids
    intercept, bits_stored = encoding
    d = geometry.direction_matrix
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
        options.patient_name,
        options.patient_id,
        "",
        "O",
    )
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", ""
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = (
        options.series_number,
        instance_number,
        options.description,
    )
    ds.Manufacturer = "flare-seg phantom"
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.ImageOrientationPatient = [_ds(v) for v in (*d[:, 0], *d[:, 1])]
    ds.PixelSpacing = [_ds(geometry.spacing_mm_xyz[1]), _ds(geometry.spacing_mm_xyz[0])]
    ds.SliceThickness = _ds(geometry.spacing_mm_xyz[2])
    ds.KVP = "120"
    ds.AcquisitionNumber = 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = hu_yx.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (
        16,
        bits_stored,
        bits_stored - 1,
        0,
    )
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = str(intercept), "1", "HU"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    stored = np.clip(np.asarray(hu_yx, np.int32) - intercept, 0, 2**bits_stored - 1).astype(np.uint16)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    syntax = UID(options.transfer_syntax)
    if syntax.is_compressed:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = stored.tobytes()
        ds.compress(syntax, stored, encoding_plugin=_encoder_for(syntax))
    else:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = stored.tobytes()
        if syntax == ImplicitVRLittleEndian:
            ds["PixelData"].VR = "OW"
    return ds


def _encoder_for(syntax: UID) -> str:
    return {"1.2.840.10008.1.2.5": "pydicom"}.get(str(syntax), "")


def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters that keeps as many digits as fit."""
    for digits in range(12, 3, -1):
        text = f"{float(value):.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{float(value):.4g}"

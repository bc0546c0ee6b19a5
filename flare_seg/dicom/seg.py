"""DICOM SEG output with highdicom: one segment per organ, coded in SNOMED CT, with the algorithm's
identification, referencing the source study, series, instances and frame of reference.

The frames come straight from the uint8 label mask (a label map: highdicom splits it into one
binary frame per segment and source slice, leaving out empty frames); no float volume per label is
ever made. The mask's z index k is the source's slice k (``DicomSource`` keeps that order), so
highdicom takes each frame's position from the source image it derives from: the SEG lies on the
images whatever their orientation, flips or slice order.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from flare_seg import __version__
from flare_seg.dicom.volume import DicomSource
from flare_seg.labels import ORGANS

logger = logging.getLogger(__name__)

# SNOMED CT codes of the organs (segmented property type) and CIELab display colours.
_ORGAN_CODES = {
    "liver": codes.SCT.Liver,
    "kidney": codes.SCT.Kidney,
    "spleen": codes.SCT.Spleen,
    "pancreas": codes.SCT.Pancreas,
}
_ORGAN_COLOURS_RGB = {
    "liver": (221, 130, 101),
    "kidney": (185, 102, 83),
    "spleen": (157, 108, 162),
    "pancreas": (249, 180, 111),
}
SEG_SERIES_DESCRIPTION = "flare-seg organs"
SEG_SERIES_NUMBER_OFFSET = 1000  # the SEG's series number: the source's plus this


def segment_descriptions(model_version: str) -> list[hd.seg.SegmentDescription]:
    """One segment per organ label (segment number = label value)."""
    algorithm = hd.AlgorithmIdentificationSequence(
        name="flare-seg", family=codes.cid7162.ArtificialIntelligence, version=model_version or __version__
    )
    out = []
    for label, organ in ORGANS.items():
        out.append(
            hd.seg.SegmentDescription(
                segment_number=label,
                segment_label=organ,
                segmented_property_category=codes.SCT.Organ,
                segmented_property_type=_ORGAN_CODES[organ],
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=generate_uid(),
                tracking_id=f"flare-seg {organ}",
                display_color=hd.color.CIELabColor.from_rgb(*_ORGAN_COLOURS_RGB[organ]),
            )
        )
    return out


def build_seg(labels_zyx: np.ndarray, source: DicomSource, *, model_version: str) -> Dataset:
    """The DICOM SEG of a uint8 label mask on the grid of the volume ``source`` was read into."""
    if labels_zyx.dtype != np.uint8 or labels_zyx.ndim != 3:
        raise ValueError(f"expected a 3D uint8 label mask, got {labels_zyx.ndim}D {labels_zyx.dtype}")
    if int(labels_zyx.max(initial=0)) > max(ORGANS):
        raise ValueError(f"label {int(labels_zyx.max())} has no organ; known labels {sorted(ORGANS)}")
    if source.frame_order is not None:
        frames = np.empty_like(labels_zyx)
        frames[list(source.frame_order)] = labels_zyx  # back to the source's frame order
    else:
        frames = labels_zyx
        if len(source.datasets) != labels_zyx.shape[0]:
            raise ValueError(f"{labels_zyx.shape[0]} mask slices for {len(source.datasets)} source images")
    number = SEG_SERIES_NUMBER_OFFSET + (source.series_number or 0)
    seg = hd.seg.Segmentation(
        source_images=list(source.datasets),
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(model_version),
        series_instance_uid=generate_uid(),
        series_number=number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="flare-seg",
        manufacturer_model_name="flare-seg two-stage abdominal CT organ segmentation",
        software_versions=f"flare-seg {__version__}, models {model_version or 'unknown'}"[:64],
        device_serial_number="0",
        content_description="Abdominal organs: liver, kidney, spleen, pancreas",
        content_label="FLARESEG",
        series_description=SEG_SERIES_DESCRIPTION,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        omit_empty_frames=True,
    )
    return seg


def write_seg_atomic(seg: Dataset, path: Path) -> None:
    """Write ``seg`` to ``path`` through a temporary file in the same folder, renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        seg.save_as(tmp, enforce_file_format=True)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def seg_bytes(seg: Dataset) -> bytes:
    """The Part 10 file of ``seg`` (e.g. for an HTTP response)."""
    from io import BytesIO

    buffer = BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()

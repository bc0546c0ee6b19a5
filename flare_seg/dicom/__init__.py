"""DICOM input and output: series discovery and choice, volume building, safe zip extraction,
DICOM SEG writing and a DICOMweb (QIDO/WADO/STOW) client.

The volume a DICOM series yields is the same ``CtVolume`` the NIfTI reader returns (voxels indexed
(z, y, x) in HU, SimpleITK's x, y, z geometry in LPS), so the pipeline does not know where it came
from; the ``DicomSource`` kept beside it is what the SEG writer needs to reference the images.
"""

from flare_seg.dicom.series import (
    DicomInputError,
    SeriesCandidate,
    SeriesChoice,
    choose_series,
    discover_series,
)
from flare_seg.dicom.volume import DicomSource, DicomVolume, read_dicom_volume, read_series

__all__ = [
    "DicomInputError",
    "DicomSource",
    "DicomVolume",
    "SeriesCandidate",
    "SeriesChoice",
    "choose_series",
    "discover_series",
    "read_dicom_volume",
    "read_series",
]

"""The PACS round trip against a real Orthanc (DICOMweb plugin): store a series, segment the study
through QIDO/WADO, STOW the SEG, fetch it back and compare it with the case's NIfTI mask."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from flare_seg.dicom.dicomweb import DicomWebError, make_client, segment_study
from flare_seg.dicom.synth import SeriesOptions, write_ct_series
from flare_seg.dicom.volume import DicomVolume
from flare_seg.geometry import Geometry
from tests.dicom.conftest import (
    GEOMETRIES,
    Orthanc,
    assert_seg_matches_mask,
    phantom_arrays,
    sample_nifti,
    upload_to_orthanc,
    write_case,
)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, JPEG2000Lossless], ids=["plain", "jpeg2000"])
def test_orthanc_round_trip(orthanc: Orthanc, tmp_path: Path, syntax: str) -> None:
    study = generate_uid()
    options = SeriesOptions(study_uid=study, series_number=7, transfer_syntax=syntax)
    case = write_case(tmp_path / "case", GEOMETRIES["flipped-rows"], options, size_xyz=(64, 48, 10))
    # a second CT series with fewer slices in the same study: not chosen
    small = Geometry((30, 26, 5), (0.9, 1.3, 5.0), (-40.25, 31.5, -120.0), GEOMETRIES["axial"])
    image, _ = phantom_arrays(small.size_xyz)
    thick = write_ct_series(
        image, small, tmp_path / "thick", SeriesOptions(study_uid=study, series_number=8, description="thick")
    )
    upload_to_orthanc(orthanc, sorted(case.dicom_dir.iterdir()) + thick)
    mask = sitk.ReadImage(str(case.mask_nifti))

    def segment(volume: DicomVolume) -> np.ndarray:
        return sample_nifti(mask, volume.volume.geometry)  # the known truth, on the grid read

    client = make_client(orthanc.dicomweb_url)
    result = segment_study(client, study, segment, "test-1", max_voxels=10**9)
    assert "series 7" in result.reason and "'thick'" in result.reason
    # the SEG is in Orthanc now, in the same study: fetch it by DICOMweb and check it voxel for voxel
    segs = client.search_for_series(study_instance_uid=study, search_filters={"Modality": "SEG"})
    assert [pydicom.Dataset.from_json(s).SeriesInstanceUID for s in segs] == [result.seg_series_uid]
    seg = client.retrieve_instance(study, result.seg_series_uid, result.seg_sop_instance_uid)
    seg_path = tmp_path / "fetched_seg.dcm"
    seg.save_as(seg_path, enforce_file_format=True)
    assert_seg_matches_mask(seg_path, mask)
    assert (
        seg.ReferencedSeriesSequence[0].SeriesInstanceUID
        == pydicom.dcmread(next(case.dicom_dir.iterdir()), stop_before_pixels=True).SeriesInstanceUID
    )


def test_unknown_study_is_a_clear_error(orthanc: Orthanc) -> None:
    client = make_client(orthanc.dicomweb_url)
    with pytest.raises(Exception) as e:
        segment_study(client, "1.2.3.4.5.6.7", lambda v: np.zeros(1), "t", max_voxels=10**9)
    assert "study 1.2.3.4.5.6.7" in str(e.value)
    assert "\n" not in str(e.value)


def test_unreachable_server_is_a_clear_error() -> None:
    client = make_client("http://127.0.0.1:9/dicom-web", timeout_s=2, attempts=1)
    with pytest.raises(DicomWebError, match=r"study 1\.2\.3: cannot search its series"):
        segment_study(client, "1.2.3", lambda v: np.zeros(1), "t", max_voxels=10**9)


def test_orthanc_is_really_there(orthanc: Orthanc) -> None:
    with urllib.request.urlopen(f"{orthanc.url}/plugins", timeout=5) as r:
        assert b"dicom-web" in r.read()

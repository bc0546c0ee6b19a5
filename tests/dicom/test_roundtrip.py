"""DICOM in and SEG out on every supported geometry, compared with the NIfTI files of the same case
voxel for voxel in patient coordinates; the real series against SimpleITK's (GDCM's) reading."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from flare_seg.dicom import read_dicom_volume
from flare_seg.dicom.seg import build_seg, write_seg_atomic
from flare_seg.geometry import Geometry
from tests.dicom.conftest import (
    REAL_DICOM,
    PhantomCase,
    assert_dciodvfy_clean,
    assert_seg_matches_mask,
    sample_nifti,
)

MAX_VOXELS = 10**9


def test_volume_matches_nifti_in_patient_space(geometry_case: PhantomCase) -> None:
    """Every voxel the DICOM reader returns has the NIfTI's value at the same patient position."""
    dicom = read_dicom_volume(geometry_case.dicom_dir, MAX_VOXELS)
    nifti = sitk.ReadImage(str(geometry_case.image_nifti))
    volume = dicom.volume
    assert volume.array_zyx.dtype == np.int16
    assert np.array_equal(volume.array_zyx, sample_nifti(nifti, volume.geometry))
    # same grid up to the z axis' sense (DICOM's normal is row x column; a left-handed NIfTI is reversed)
    assert np.allclose(volume.geometry.spacing_mm_xyz, geometry_case.geometry.spacing_mm_xyz)
    d_dicom, d_nifti = volume.geometry.direction_matrix, geometry_case.geometry.direction_matrix
    assert np.allclose(d_dicom[:, :2], d_nifti[:, :2], atol=1e-6)
    assert np.allclose(np.abs(d_dicom[:, 2]), np.abs(d_nifti[:, 2]), atol=1e-6)


def test_seg_round_trip_matches_nifti_mask(geometry_case: PhantomCase, tmp_path: Path) -> None:
    """The mask taken onto the DICOM grid, written as SEG, read back frame by frame and mapped to
    patient coordinates, marks exactly the NIfTI mask's voxels of each organ."""
    dicom = read_dicom_volume(geometry_case.dicom_dir, MAX_VOXELS)
    mask_nifti = sitk.ReadImage(str(geometry_case.mask_nifti))
    labels = sample_nifti(mask_nifti, dicom.volume.geometry)
    seg_path = tmp_path / "seg.dcm"
    write_seg_atomic(build_seg(labels, dicom.source, model_version="test-1"), seg_path)
    assert_seg_matches_mask(seg_path, mask_nifti)


def test_seg_references_and_codes(geometry_case: PhantomCase, tmp_path: Path) -> None:
    dicom = read_dicom_volume(geometry_case.dicom_dir, MAX_VOXELS)
    labels = sample_nifti(sitk.ReadImage(str(geometry_case.mask_nifti)), dicom.volume.geometry)
    seg_path = tmp_path / "seg.dcm"
    write_seg_atomic(build_seg(labels, dicom.source, model_version="test-1"), seg_path)
    seg = hd.seg.segread(seg_path)
    source = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(geometry_case.dicom_dir.iterdir())]
    assert seg.StudyInstanceUID == source[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    assert seg.SeriesInstanceUID != source[0].SeriesInstanceUID
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in seg.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert {ds.SOPInstanceUID for ds in source} == referenced
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source[0].SeriesInstanceUID
    # every frame derives from the source image at its own position
    by_uid = {ds.SOPInstanceUID: ds for ds in source}
    for item in seg.PerFrameFunctionalGroupsSequence:
        ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert np.allclose(
            item.PlanePositionSequence[0].ImagePositionPatient, by_uid[ref].ImagePositionPatient, atol=1e-4
        )
    segments = {d.segment_number: d for d in seg.SegmentSequence}
    assert sorted(segments) == [1, 2, 3, 4]
    assert [segments[k].segment_label for k in (1, 2, 3, 4)] == ["liver", "kidney", "spleen", "pancreas"]
    assert [segments[k].segmented_property_type.value for k in (1, 2, 3, 4)] == [
        "10200004",
        "64033007",
        "78961009",
        "15776009",
    ]
    assert all(segments[k].segmented_property_type.scheme_designator == "SCT" for k in segments)
    algorithm = segments[1].algorithm_identification
    assert algorithm is not None and algorithm[0].AlgorithmName == "flare-seg"
    assert algorithm[0].AlgorithmVersion == "test-1"


def test_real_series_matches_gdcm_and_its_seg_round_trips(tmp_path: Path) -> None:
    """The real series as read here equals SimpleITK's (GDCM) reading voxel for voxel and grid for
    grid; a mask on that grid survives the SEG round trip (the series' anonymized, empty UIDs are
    replaced by derived ones, with a warning)."""
    if not REAL_DICOM.is_dir():
        pytest.skip(f"the real DICOM series is not here ({REAL_DICOM})")
    dicom = read_dicom_volume(REAL_DICOM, MAX_VOXELS)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(REAL_DICOM)))
    reference = reader.Execute()
    assert dicom.volume.geometry.size_xyz == reference.GetSize()
    assert np.allclose(dicom.volume.geometry.origin_mm_xyz, reference.GetOrigin())
    assert np.allclose(dicom.volume.geometry.spacing_mm_xyz, reference.GetSpacing())
    assert np.allclose(dicom.volume.geometry.direction, reference.GetDirection())
    assert np.array_equal(dicom.volume.array_zyx, sitk.GetArrayFromImage(reference))
    assert any("Series Instance UID" in w for w in dicom.warnings)
    hu = sitk.GetArrayFromImage(reference)
    mask = np.zeros(hu.shape, np.uint8)
    mask[(hu > 40) & (hu < 80)] = 1  # soft tissue
    mask[hu > 300] = 2  # bone
    mask[3:9, 200:260, 150:240] = 3
    mask_image = sitk.GetImageFromArray(mask)
    Geometry.of(reference).apply_to(mask_image)
    labels = sample_nifti(mask_image, dicom.volume.geometry)
    seg_path = tmp_path / "real_seg.dcm"
    write_seg_atomic(build_seg(labels, dicom.source, model_version="test-1"), seg_path)
    assert_seg_matches_mask(seg_path, mask_image)
    assert_dciodvfy_clean(seg_path)


def test_seg_passes_dciodvfy(geometry_case: PhantomCase, tmp_path: Path) -> None:
    """David Clunie's validator finds no error in the SEG (warnings are allowed)."""
    dicom = read_dicom_volume(geometry_case.dicom_dir, MAX_VOXELS)
    labels = sample_nifti(sitk.ReadImage(str(geometry_case.mask_nifti)), dicom.volume.geometry)
    seg_path = tmp_path / "seg.dcm"
    write_seg_atomic(build_seg(labels, dicom.source, model_version="test-1"), seg_path)
    assert_dciodvfy_clean(seg_path)


def test_empty_mask_still_makes_a_valid_seg(geometry_case: PhantomCase, tmp_path: Path) -> None:
    dicom = read_dicom_volume(geometry_case.dicom_dir, MAX_VOXELS)
    labels = np.zeros(dicom.volume.geometry.shape_zyx, np.uint8)
    seg_path = tmp_path / "seg.dcm"
    write_seg_atomic(build_seg(labels, dicom.source, model_version="test-1"), seg_path)
    seg = pydicom.dcmread(seg_path)
    assert int(seg.NumberOfFrames) >= 1
    assert not seg.pixel_array.any()

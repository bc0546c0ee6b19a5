"""Series choice, compressed and multi-frame input, and every bad input with its one-line reason."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from flare_seg.dicom import DicomInputError, read_dicom_volume
from flare_seg.dicom.archive import extracted_zip, is_zip
from flare_seg.dicom.seg import build_seg, write_seg_atomic
from flare_seg.dicom.series import discover_series, folders_with_dicom
from flare_seg.dicom.synth import SeriesOptions, write_ct_series
from flare_seg.geometry import Geometry
from flare_seg.service.io import InputError
from tests.dicom.conftest import (
    GEOMETRIES,
    assert_dciodvfy_clean,
    assert_seg_matches_mask,
    phantom_arrays,
    sample_nifti,
    write_case,
)

MAX_VOXELS = 10**9


def _geometry(direction=GEOMETRIES["flipped-both"], size_xyz=(24, 20, 10)) -> Geometry:
    return Geometry(size_xyz, (0.8, 0.8, 3.0), (10.0, -20.0, -300.0), direction)


def _series(folder: Path, geometry: Geometry | None = None, **options) -> list[Path]:
    geometry = geometry or _geometry()
    image, _ = phantom_arrays(geometry.size_xyz)
    return write_ct_series(image, geometry, folder, SeriesOptions(**options))


def _sr_document(folder: Path, study_uid: str) -> Path:
    """A non-image object (a Basic Text SR, e.g. a dose report) in the study."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.Modality, ds.SeriesDescription, ds.SeriesNumber = "SR", "Dose Report", 900
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = (
        ds.SOPClassUID,
        ds.SOPInstanceUID,
    )
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    path = folder / "dose_report.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


# ----------------------------------------------------------------------------- choice


def test_two_series_in_one_folder_choose_the_axial_one_with_most_slices(tmp_path: Path, caplog) -> None:
    folder = tmp_path / "mixed"
    study = generate_uid()
    _series(
        folder / "a", _geometry(size_xyz=(24, 20, 8)), study_uid=study, series_number=2, description="thick"
    )
    _series(
        folder / "b", _geometry(size_xyz=(24, 20, 12)), study_uid=study, series_number=3, description="thin"
    )
    sagittal = _geometry(GEOMETRIES["sagittal"], size_xyz=(24, 20, 16))
    _series(folder / "c", sagittal, study_uid=study, series_number=4, description="sag MPR")
    _sr_document(folder, study)
    for sub in ("a", "b", "c"):  # all files mixed in one folder
        for p in (folder / sub).iterdir():
            p.rename(folder / f"{sub}_{p.name}")
        (folder / sub).rmdir()
    with caplog.at_level("INFO"):
        dicom = read_dicom_volume(folder, MAX_VOXELS)
    assert dicom.volume.geometry.size_xyz == (24, 20, 12)
    assert dicom.choice is not None
    reason = dicom.choice.reason
    assert "'thin'" in reason and "axial, 12 slices" in reason and "most slices" in reason
    assert "'thick'" in reason and "'sag MPR'" in reason and "Dose Report" in reason
    assert "chose series 3 'thin'" in caplog.text


def test_localizer_and_dose_report_in_the_series_are_left_out(tmp_path: Path) -> None:
    folder = tmp_path / "study"
    paths = _series(folder)
    scout = pydicom.dcmread(paths[0])
    scout.SOPInstanceUID = scout.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    scout.save_as(folder / "scout.dcm")
    dicom = read_dicom_volume(folder, MAX_VOXELS)
    assert dicom.volume.geometry.size_xyz[2] == len(paths)
    assert dicom.choice is not None and "localizer" in dicom.choice.reason


def test_folder_with_no_ct_series_says_what_it_found(tmp_path: Path) -> None:
    folder = tmp_path / "nothing"
    folder.mkdir()
    _sr_document(folder, generate_uid())
    (folder / "notes.txt").write_text("not DICOM")
    with pytest.raises(DicomInputError) as e:
        read_dicom_volume(folder, MAX_VOXELS)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("nothing: no CT image series to segment")
    assert "Dose Report" in message and "not an image" in message


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DicomInputError, match="empty: no DICOM files found"):
        read_dicom_volume(tmp_path / "empty", MAX_VOXELS)


def test_secondary_capture_is_not_a_ct(tmp_path: Path) -> None:
    paths = _series(tmp_path / "sc")
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        ds.save_as(p)
    with pytest.raises(DicomInputError, match="not a CT image \\(Secondary Capture Image Storage"):
        read_dicom_volume(tmp_path / "sc", MAX_VOXELS)


def test_cases_are_the_folders_that_hold_dicom(tmp_path: Path) -> None:
    _series(tmp_path / "study" / "s1")
    _series(tmp_path / "study" / "s2" / "deeper")
    (tmp_path / "study" / "readme.txt").write_text("x")
    assert folders_with_dicom(tmp_path / "study") == [
        tmp_path / "study" / "s1",
        tmp_path / "study" / "s2" / "deeper",
    ]
    assert folders_with_dicom(tmp_path / "study" / "s1") == [tmp_path / "study" / "s1"]


# ----------------------------------------------------------------------------- bad stacks


def test_missing_slice(tmp_path: Path) -> None:
    paths = _series(tmp_path / "gap")
    paths[4].unlink()
    with pytest.raises(DicomInputError, match=r"gap: 1 slice\(s\) missing .* 3\.00 mm apart"):
        read_dicom_volume(tmp_path / "gap", MAX_VOXELS)


def test_non_uniform_spacing(tmp_path: Path) -> None:
    paths = _series(tmp_path / "uneven")
    ds = pydicom.dcmread(paths[4])
    ds.ImagePositionPatient = [
        ds.ImagePositionPatient[0],
        ds.ImagePositionPatient[1],
        ds.ImagePositionPatient[2] + 1.1,
    ]
    ds.save_as(paths[4])
    with pytest.raises(DicomInputError, match="non-uniform slice spacing"):
        read_dicom_volume(tmp_path / "uneven", MAX_VOXELS)


def test_gantry_tilt_is_refused_not_skewed(tmp_path: Path) -> None:
    paths = _series(tmp_path / "tilt", _geometry(GEOMETRIES["axial"]))
    for k, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [ipp[0], ipp[1] + k * 3.0 * np.tan(np.radians(15)), ipp[2]]
        ds.GantryDetectorTilt = "15"
        ds.save_as(p)
    with pytest.raises(DicomInputError, match=r"gantry tilt of about 15\.0 degrees"):
        read_dicom_volume(tmp_path / "tilt", MAX_VOXELS)


def test_duplicate_positions(tmp_path: Path) -> None:
    paths = _series(tmp_path / "dup")
    ds = pydicom.dcmread(paths[3])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "dup" / "again.dcm")
    with pytest.raises(DicomInputError, match="two slices at the same position"):
        read_dicom_volume(tmp_path / "dup", MAX_VOXELS)


def test_truncated_slice(tmp_path: Path) -> None:
    paths = _series(tmp_path / "cut")
    data = paths[5].read_bytes()
    paths[5].write_bytes(data[: len(data) - 300])
    with pytest.raises(DicomInputError) as e:
        read_dicom_volume(tmp_path / "cut", MAX_VOXELS)
    assert str(e.value).startswith(f"cut: {paths[5].name}: cannot read the pixel data")
    assert "\n" not in str(e.value)


def test_corrupted_header_slice_becomes_a_missing_slice(tmp_path: Path) -> None:
    paths = _series(tmp_path / "bad")
    paths[5].write_bytes(paths[5].read_bytes()[:700])  # cut inside the header
    _, unreadable = discover_series(tmp_path / "bad")
    assert len(unreadable) == 1 and unreadable[0].startswith(paths[5].name)
    with pytest.raises(DicomInputError) as e:
        read_dicom_volume(tmp_path / "bad", MAX_VOXELS)
    assert "1 slice(s) missing" in str(e.value)
    assert f"unreadable files: {paths[5].name}: truncated DICOM file" in str(e.value)


def test_corrupt_compressed_slice(tmp_path: Path) -> None:
    paths = _series(tmp_path / "j2k", _geometry(size_xyz=(64, 64, 6)), transfer_syntax=JPEG2000Lossless)
    ds = pydicom.dcmread(paths[2])
    frame = bytearray(ds.PixelData)
    frame[-200:] = b"\x00" * 200
    ds.PixelData = bytes(frame[: len(frame) // 2]) + b"\x00" * (len(frame) % 2)
    ds.save_as(paths[2])
    with pytest.raises(DicomInputError, match="cannot read the pixel data"):
        read_dicom_volume(tmp_path / "j2k", MAX_VOXELS)


def test_too_many_voxels(tmp_path: Path) -> None:
    _series(tmp_path / "big")
    with pytest.raises(InputError, match="over the limit of 1000"):
        read_dicom_volume(tmp_path / "big", 1000)


# ----------------------------------------------------------------------------- encodings


@pytest.mark.parametrize(
    "syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=["rle", "jpeg-ls", "jpeg2000"]
)
def test_lossless_compressed_series_read_exactly(tmp_path: Path, syntax: str) -> None:
    geometry = _geometry(GEOMETRIES["oblique"], size_xyz=(64, 48, 6))
    plain = (
        read_dicom_volume(tmp_path / "plain", MAX_VOXELS) if _series(tmp_path / "plain", geometry) else None
    )
    _series(tmp_path / "packed", geometry, transfer_syntax=syntax)
    assert pydicom.dcmread(next((tmp_path / "packed").iterdir())).file_meta.TransferSyntaxUID == syntax
    packed = read_dicom_volume(tmp_path / "packed", MAX_VOXELS)
    assert plain is not None
    assert packed.volume.geometry == plain.volume.geometry
    assert np.array_equal(packed.volume.array_zyx, plain.volume.array_zyx)


def test_jpeg_baseline_series_is_decoded(tmp_path: Path) -> None:
    """8-bit lossy JPEG (as some archives store CT): decoded close to the original values."""
    from PIL import Image

    paths = _series(tmp_path / "jpeg")
    originals = []
    for p in paths:
        ds = pydicom.dcmread(p)
        hu = ds.pixel_array.astype(np.int32) - 1024
        stored = np.clip((hu + 1024) // 16, 0, 255).astype(np.uint8)
        smooth = np.full_like(stored, 64)
        smooth[4:-4, 4:-4] = 128  # smooth content so that lossy JPEG stays close
        originals.append(smooth.astype(np.int32) * 16 - 1024)
        buffer = io.BytesIO()
        Image.fromarray(smooth).save(buffer, format="JPEG", quality=95)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.RescaleSlope, ds.RescaleIntercept = "16", "-1024"
        ds.PixelData = pydicom.encaps.encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.save_as(p)
    dicom = read_dicom_volume(tmp_path / "jpeg", MAX_VOXELS)
    # files are written in slice order along the (right-handed) normal
    expected = np.stack(originals)
    assert np.max(np.abs(dicom.volume.array_zyx.astype(np.int32) - expected)) <= 3 * 16


def test_float_rescale_gives_float32(tmp_path: Path) -> None:
    paths = _series(tmp_path / "float")
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-1024"
        ds.save_as(p)
    dicom = read_dicom_volume(tmp_path / "float", MAX_VOXELS)
    raw = pydicom.dcmread(paths[0]).pixel_array
    assert dicom.volume.array_zyx.dtype == np.float32
    assert np.allclose(dicom.volume.array_zyx[0], raw * 0.5 - 1024)


def test_multi_frame_enhanced_ct_and_its_seg(tmp_path: Path) -> None:
    """A (legacy converted) enhanced multi-frame CT reads as the same volume as its single-frame
    slices, and its SEG round-trips against the NIfTI mask."""
    case = write_case(tmp_path / "case", GEOMETRIES["flipped-rows"])
    single = read_dicom_volume(case.dicom_dir, MAX_VOXELS)
    legacy = [pydicom.dcmread(p) for p in sorted(case.dicom_dir.iterdir())]
    legacy = legacy[::-1]  # frames in reverse slice order
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(legacy, generate_uid(), 5, generate_uid(), 1)
    folder = tmp_path / "enhanced"
    folder.mkdir()
    enhanced.save_as(folder / "ct.dcm", enforce_file_format=True)
    multi = read_dicom_volume(folder, MAX_VOXELS)
    assert multi.source.multi_frame
    assert np.allclose(multi.volume.geometry.direction, single.volume.geometry.direction)
    assert np.allclose(multi.volume.geometry.origin_mm_xyz, single.volume.geometry.origin_mm_xyz)
    assert np.array_equal(multi.volume.array_zyx, single.volume.array_zyx)
    mask = sitk.ReadImage(str(case.mask_nifti))
    labels = sample_nifti(mask, multi.volume.geometry)
    write_seg_atomic(build_seg(labels, multi.source, model_version="t"), tmp_path / "seg.dcm")
    assert_seg_matches_mask(tmp_path / "seg.dcm", mask)
    assert_dciodvfy_clean(tmp_path / "seg.dcm")


# ----------------------------------------------------------------------------- zip archives


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_zip_of_a_series_reads_like_the_folder(tmp_path: Path) -> None:
    paths = _series(tmp_path / "series")
    archive = _zip(tmp_path / "upload.bin", {f"export/CT/{p.name}": p.read_bytes() for p in paths})
    assert is_zip(archive)
    with extracted_zip(archive, 10**8) as root:
        assert oct(root.stat().st_mode & 0o777) == "0o700"
        dicom = read_dicom_volume(root, MAX_VOXELS)
        extracted = root
    assert not extracted.exists()
    assert np.array_equal(
        dicom.volume.array_zyx, read_dicom_volume(tmp_path / "series", MAX_VOXELS).volume.array_zyx
    )


@pytest.mark.parametrize(
    "member", ["../evil.dcm", "a/../../evil.dcm", "/etc/evil.dcm", "C:/evil.dcm", "..\\evil.dcm"]
)
def test_zip_path_traversal_is_refused_before_writing_anything(tmp_path: Path, member: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive = _zip(work / "upload.zip", {"ok.dcm": b"x", member: b"evil"})
    with pytest.raises(InputError) as e, extracted_zip(archive, 10**8):
        pass
    assert "refusing the archive" in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["upload.zip", "work"]


def test_zip_symlink_member_is_refused(tmp_path: Path) -> None:
    info = zipfile.ZipInfo("link.dcm")
    info.external_attr = 0o120777 << 16
    with zipfile.ZipFile(tmp_path / "l.zip", "w") as z:
        z.writestr(info, "/etc/passwd")
    with pytest.raises(InputError, match="symbolic link"), extracted_zip(tmp_path / "l.zip", 10**8):
        pass


def test_zip_bomb_is_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.dcm", b"\0" * (5 << 20))
    with (
        pytest.raises(InputError, match="more than 1000000 bytes"),
        extracted_zip(tmp_path / "bomb.zip", 10**6),
    ):
        pass


def test_not_a_zip(tmp_path: Path) -> None:
    (tmp_path / "x.zip").write_bytes(b"PK\x03\x04 broken")
    with (
        pytest.raises(InputError, match="not a readable zip archive"),
        extracted_zip(tmp_path / "x.zip", 10**6),
    ):
        pass


def _variant(paths: list[Path], variant: str) -> None:
    for p in paths:
        ds = pydicom.dcmread(p)
        stored = ds.pixel_array.astype(np.int32)
        if variant == "overlay-bits":  # bits above Bits Stored are not part of the value
            stored = stored | 0x9000
        elif variant == "signed":
            ds.PixelRepresentation, ds.BitsStored, ds.HighBit, ds.RescaleIntercept = 1, 16, 15, "0"
            stored = stored - 1024
        elif variant == "slope":
            ds.RescaleSlope = "2"
        elif variant == "wide":  # 16 bits stored: the rescaled range does not fit int16
            ds.BitsStored, ds.HighBit = 16, 15
        ds.PixelData = stored.astype(np.int16 if variant == "signed" else np.uint16).tobytes()
        ds.save_as(p)


@pytest.mark.parametrize("variant", ["overlay-bits", "signed", "slope", "wide"])
def test_direct_pixel_reading_equals_decoding(tmp_path: Path, monkeypatch, variant: str) -> None:
    """Uncompressed slices read straight into the volume give what pydicom's decoding and the
    general rescale give."""
    from flare_seg.dicom import volume as volume_module

    _variant(_series(tmp_path / "s"), variant)
    fast = read_dicom_volume(tmp_path / "s", MAX_VOXELS).volume.array_zyx
    monkeypatch.setattr(volume_module, "_read_native_into", lambda *args: False)
    general = read_dicom_volume(tmp_path / "s", MAX_VOXELS).volume.array_zyx
    assert fast.dtype == general.dtype == np.int16
    assert np.array_equal(fast, general)
    if variant == "slope":
        assert fast.max() > 3000  # 2 * stored - 1024, stored up to 2524


def test_a_folder_with_series_of_its_own_and_below_gives_one_case_each(tmp_path: Path) -> None:
    root = tmp_path / "export"
    _series(root, _geometry(size_xyz=(24, 20, 8)))
    _series(root / "inner", _geometry(size_xyz=(24, 20, 12)))
    assert folders_with_dicom(root) == [root, root / "inner"]
    # read as its own case, the folder's series is the one chosen, not the bigger one below it
    assert read_dicom_volume(root, MAX_VOXELS, recursive=False).volume.geometry.size_xyz[2] == 8
    assert read_dicom_volume(root, MAX_VOXELS).volume.geometry.size_xyz[2] == 12

"""Tests for the reading limits of flare_seg.service.io: bytes (not only voxels), int16 while
decompressing, implausible grids, SimpleITK's view of the geometry, where a gzip error is."""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from flare_seg.service.inflate import int16_volume
from flare_seg.service.io import (
    InputError,
    InputTooLargeError,
    check_nifti_data,
    read_ct,
    read_ct_volume,
    read_nifti_header,
    validate_nifti,
)
from tests.service.conftest import make_ct, nifti1_header, write_bytes

MAX_VOXELS = 1_500_000_000
MiB = 1 << 20


def test_the_byte_limit_counts_the_voxel_type(tmp_path: Path) -> None:
    """The crafted uploads of the memory report: a few MB on the wire, GBs decompressed."""
    int16_zeros = write_bytes(tmp_path / "a.nii.gz", nifti1_header((4096, 4096, 89)), True)
    float64 = write_bytes(tmp_path / "b.nii.gz", nifti1_header((4096, 4096, 20), 64, 64), True)
    with pytest.raises(InputTooLargeError, match=r"2848 MiB of voxel data, over the limit of 2048 MiB"):
        read_nifti_header(int16_zeros, MAX_VOXELS, max_image_bytes=2048 * MiB)
    with pytest.raises(InputTooLargeError, match=r"float64 voxels is 2560 MiB"):
        validate_nifti(float64, MAX_VOXELS, max_image_bytes=2048 * MiB)
    assert read_nifti_header(float64, MAX_VOXELS, max_image_bytes=2560 * MiB).datatype == "float64"
    uint8 = write_bytes(tmp_path / "c.nii.gz", nifti1_header((64, 64, 64), 2, 8), True)
    with pytest.raises(InputTooLargeError):  # 1-byte voxels count as 2: they are held as int16
        read_nifti_header(uint8, MAX_VOXELS, max_image_bytes=64**3 * 2 - 1)
    assert InputTooLargeError.status_code == 413


def _with_array(like: sitk.Image, array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(like)
    return image


@pytest.mark.parametrize(
    "pixel_type", [sitk.sitkFloat64, sitk.sitkFloat32, sitk.sitkUInt16, sitk.sitkInt32, sitk.sitkUInt8]
)
@pytest.mark.parametrize("compress", [True, False])
def test_int16_while_decompressing_equals_converting_after(
    tmp_path: Path, pixel_type: int, compress: bool
) -> None:
    image = make_ct(pixel_type=pixel_type)
    if pixel_type == sitk.sitkFloat64:
        array = sitk.GetArrayFromImage(image) + 0.4  # rounding shows
        array[0, 0, :2] = (1e9, -1e9)  # clamped
        image = _with_array(image, array)
    path = tmp_path / ("ct.nii.gz" if compress else "ct.nii")
    sitk.WriteImage(image, str(path), useCompression=compress)
    volume = read_ct_volume(path, MAX_VOXELS, as_int16=True)
    assert volume.array_zyx.dtype == np.int16
    expected = int16_volume(sitk.GetArrayFromImage(read_ct(path, MAX_VOXELS)))
    np.testing.assert_array_equal(volume.array_zyx, expected)
    if pixel_type == sitk.sitkFloat64:
        assert volume.array_zyx[0, 0, :2].tolist() == [32767, -32768]


@pytest.mark.parametrize(
    ("dims", "pixdim", "words"),
    [
        ((1, 40, 30), (1.0, 1.0, 1.0), "fewer than 4 voxels along x;"),
        ((40, 1, 30), (1.0, 1.0, 1.0), "fewer than 4 voxels along y;"),
        ((1, 1, 2), (1.0, 1.0, 1.0), "fewer than 4 voxels along x, y, z;"),
        ((16, 16, 16), (1e30, 1.0, 1.0), "implausible voxel spacing (x 1e+30 mm)"),
        ((16, 16, 16), (0.8, 1e6, 1.0), "implausible voxel spacing (y 1e+06 mm)"),
    ],
)
def test_absurd_grids_are_422(
    tmp_path: Path, dims: tuple[int, int, int], pixdim: tuple[float, ...], words: str
) -> None:
    n = int(np.prod(dims))
    path = write_bytes(tmp_path / "g.nii.gz", nifti1_header(dims, pixdim=pixdim) + bytes(2 * n), True)
    for read in (validate_nifti, read_ct_volume, read_ct):
        with pytest.raises(InputError, match=re.escape(words)) as caught:
            read(path, MAX_VOXELS)
        assert caught.value.status_code == 422 and str(caught.value).startswith("g.nii.gz: ")


def singular_sform_file(tmp_path: Path) -> Path:
    """A NIfTI whose only orientation is a singular sform (all-zero rows)."""
    header = bytearray(nifti1_header((16, 16, 16), pixdim=(1.0, 1.0, 1.0)))
    struct.pack_into("<hh", header, 252, 0, 1)  # qform_code 0, sform_code 1 (scanner)
    struct.pack_into("<12f", header, 280, *([0.0] * 12))
    return write_bytes(tmp_path / "singular.nii.gz", bytes(header) + bytes(2 * 16**3), compress=True)


def test_a_geometry_simpleitk_refuses_fails_validation_too(tmp_path: Path) -> None:
    """What the read would refuse, the check before queueing refuses (the /jobs 202 relies on it)."""
    path = singular_sform_file(tmp_path)
    with pytest.raises(InputError) as at_read:
        read_ct_volume(path, MAX_VOXELS)
    with pytest.raises(InputError) as at_validation:
        validate_nifti(path, MAX_VOXELS, scan_data=False)
    assert at_validation.value.status_code == at_read.value.status_code == 422
    assert "singular.nii.gz" in str(at_validation.value)


def test_a_gzip_error_in_the_first_mib_says_where(tmp_path: Path) -> None:
    """Not 'after 0 bytes': the damaged compressed bytes are located in the file."""
    noise = np.random.default_rng(0).integers(-1000, 1000, 64 * 64 * 16, np.int16)
    data = bytearray(gzip.compress(nifti1_header((64, 64, 16)) + noise.tobytes()))
    for i in range(3000, 3016):
        data[i] ^= 0x5A
    path = tmp_path / "bad.nii.gz"
    path.write_bytes(bytes(data))
    header = read_nifti_header(path, MAX_VOXELS)
    where = r"corrupt gzip data within compressed bytes \d+-\d+ of the file"
    for check in (lambda: check_nifti_data(path, header), lambda: read_ct_volume(path, MAX_VOXELS)):
        with pytest.raises(InputError, match=where) as caught:
            check()
        assert "after 0 bytes" not in str(caught.value)

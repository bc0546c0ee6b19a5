"""Masks written ``like`` the input's NIfTI header carry its geometry byte for byte, so any reader
sees exactly the input's grid (SimpleITK's own writer re-encodes it as float32 and drifts)."""

from __future__ import annotations

import gzip
import math
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from flare_seg.service.io import (
    image_to_nifti_bytes,
    mask_nifti_header,
    read_ct_volume,
    read_nifti_header,
    sitk_reads_nifti2,
    write_mask_atomic,
)
from tests.conftest import ct_image, oblique_direction
from tests.service.conftest import nifti1_header, nifti2_header, write_bytes

MAX_VOXELS = 10_000_000
DIMS = (7, 6, 5)

# (offset, length) of every NIfTI field that places the grid in space.
GEOMETRY_FIELDS = {
    1: {"dim[1:4]": (42, 6), "pixdim": (76, 32), "xyzt_units": (123, 1), "q/sform": (252, 76)},
    2: {"dim[1:4]": (24, 24), "pixdim": (104, 64), "q/sform": (344, 152), "xyzt_units": (500, 4)},
}


def _sitk_written(direction: tuple[float, ...]) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        path = tmp / "ct_0000.nii.gz"
        sitk.WriteImage(ct_image(direction=direction), str(path))
        return path

    return build


def _rotation(degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    return np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])


def _sform_only(endian: str) -> Callable[[Path], Path]:
    """A hand-made header with an oblique, anisotropic sform and no qform, in either byte order."""

    def build(tmp: Path) -> Path:
        header = bytearray(nifti1_header(DIMS, pixdim=(0.7, 0.8, 2.5), endian=endian))
        affine = _rotation(17.0) @ np.diag([-0.7, 0.8, 2.5])
        rows = np.concatenate([affine, np.array([[12.5], [-40.25], [101.0]])], axis=1)
        struct.pack_into(endian + "hh", header, 252, 0, 1)  # qform_code 0, sform_code 1
        struct.pack_into(endian + "12f", header, 280, *rows.reshape(-1))
        data = np.arange(np.prod(DIMS), dtype=endian + "i2").tobytes()
        return write_bytes(tmp / "sform_0000.nii.gz", bytes(header) + data, compress=True)

    return build


def _qform_flipped(tmp: Path) -> Path:
    """qform only, qfac -1 (a flipped z axis), millimetre units, 4D with one time point."""
    header = bytearray(nifti1_header((*DIMS, 1), pixdim=(0.9, 0.9, 3.0)))
    struct.pack_into("<f", header, 76, -1.0)  # qfac
    header[123] = 2 | 8  # mm, seconds
    struct.pack_into("<hh", header, 252, 1, 0)
    struct.pack_into("<6f", header, 256, 0.1, -0.2, 0.05, -30.0, 15.5, -200.0)
    data = np.arange(np.prod(DIMS), dtype="<i2").tobytes()
    return write_bytes(tmp / "qform_0000.nii", bytes(header) + data, compress=False)


def _nifti2_sform(tmp: Path) -> Path:
    header = bytearray(nifti2_header(DIMS, pixdim=(0.6, 0.6, 1.25)))
    affine = _rotation(-9.0) @ np.diag([0.6, -0.6, 1.25])
    rows = np.concatenate([affine, np.array([[1.0], [2.0], [3.0]])], axis=1)
    struct.pack_into("<ii", header, 344, 0, 2)  # qform_code 0, sform_code aligned
    struct.pack_into("<12d", header, 400, *rows.reshape(-1))
    data = np.arange(np.prod(DIMS), dtype="<i2").tobytes()
    return write_bytes(tmp / "n2_0000.nii.gz", bytes(header) + data, compress=True)


INPUTS: dict[str, Callable[[Path], Path]] = {
    "oblique (SimpleITK-written)": _sitk_written(oblique_direction(12.0)),
    "flipped x and y": _sitk_written((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)),
    "oblique sform, little-endian": _sform_only("<"),
    "oblique sform, big-endian": _sform_only(">"),
    "qform only, qfac -1, 4D with one volume": _qform_flipped,
    "NIfTI-2 oblique sform": _nifti2_sform,
}


def _labels(size_xyz: tuple[int, int, int]) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 5, size_xyz[::-1], dtype=np.uint8)


@pytest.mark.parametrize("form", ["image", "array"])
@pytest.mark.parametrize("out_name", ["mask.nii.gz", "mask.nii"])
@pytest.mark.parametrize("case", sorted(INPUTS))
def test_mask_has_exactly_the_inputs_geometry(tmp_path: Path, case: str, out_name: str, form: str) -> None:
    path = INPUTS[case](tmp_path)
    header = read_nifti_header(path, MAX_VOXELS)
    if header.version == 2 and not sitk_reads_nifti2():
        pytest.skip("this SimpleITK does not read NIfTI-2")
    volume = read_ct_volume(path, MAX_VOXELS)
    assert volume.header == header
    labels = _labels(volume.geometry.size_xyz)
    mask = volume.geometry.apply_to(sitk.GetImageFromArray(labels))

    out = tmp_path / "out" / out_name
    write_mask_atomic(mask if form == "image" else labels, out, like=volume.header)

    ct, back = sitk.ReadImage(str(path)), sitk.ReadImage(str(out))
    assert back.GetPixelID() == sitk.sitkUInt8
    assert (back.GetSize(), back.GetSpacing()) == (ct.GetSize(), ct.GetSpacing())
    assert (back.GetOrigin(), back.GetDirection()) == (ct.GetOrigin(), ct.GetDirection())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), labels)

    written = read_nifti_header(out, MAX_VOXELS)
    assert (written.datatype, written.version, written.byteorder) == (
        "uint8",
        header.version,
        header.byteorder,
    )
    assert written.compressed == out_name.endswith(".gz")
    for field, (offset, length) in GEOMETRY_FIELDS[header.version].items():
        assert written.raw[offset : offset + length] == header.raw[offset : offset + length], field


def test_mask_header_describes_labels_not_the_ct(tmp_path: Path) -> None:
    """Scaling, intent and extensions of the CT are not carried over to the mask."""
    raw = bytearray(nifti1_header(DIMS))
    struct.pack_into("<ff", raw, 112, 2.0, -1024.0)  # scl_slope, scl_inter
    struct.pack_into("<h", raw, 68, 1002)  # intent_code
    raw[348] = 1  # an extension follows...
    extension = struct.pack("<ii", 16, 6) + b'{"a":1}\x00'  # esize 16, ecode JSON
    struct.pack_into("<f", raw, 108, 352.0 + len(extension))
    data = np.arange(np.prod(DIMS), dtype="<i2").tobytes()
    path = write_bytes(tmp_path / "ct_0000.nii.gz", bytes(raw) + extension + data, compress=True)
    like = read_nifti_header(path, MAX_VOXELS)

    mask_header = mask_nifti_header(like)
    assert len(mask_header) == 352 and mask_header[348:] == bytes(4)
    slope, inter = struct.unpack_from("<ff", mask_header, 112)
    assert (slope, inter) == (1.0, 0.0)
    assert struct.unpack_from("<hhh", mask_header, 68) == (0, 2, 8)  # intent, uint8, 8 bits
    assert struct.unpack_from("<f", mask_header, 108) == (352.0,)

    image = sitk.ReadImage(str(path))
    labels = _labels(DIMS)
    mask = sitk.GetImageFromArray(labels)
    mask.CopyInformation(image)
    back_path = tmp_path / "mask.nii.gz"
    back_path.write_bytes(image_to_nifti_bytes(mask, like=like))
    back = sitk.ReadImage(str(back_path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), labels)  # no scaling applied
    with gzip.open(back_path) as f:
        assert f.read(352 + labels.size)[352:] == labels.tobytes()


def test_mask_must_fit_the_template(tmp_path: Path) -> None:
    path = _sitk_written(oblique_direction())(tmp_path)
    like = read_nifti_header(path, MAX_VOXELS)
    wrong_size = sitk.Image(3, 3, 3, sitk.sitkUInt8)
    out = tmp_path / "mask.nii.gz"
    with pytest.raises(ValueError, match="does not match"):
        write_mask_atomic(wrong_size, out, like=like)
    not_labels = sitk.Image(like.dims_xyz, sitk.sitkFloat32)
    with pytest.raises(ValueError, match="uint8"):
        write_mask_atomic(not_labels, out, like=like)
    labels = _labels(like.dims_xyz)
    with pytest.raises(ValueError, match="does not match"):
        write_mask_atomic(labels.transpose(2, 1, 0).copy(), out, like=like)  # (x, y, z): wrong order
    with pytest.raises(ValueError, match="uint8"):
        write_mask_atomic(labels.astype(np.int16), out, like=like)
    with pytest.raises(ValueError, match="like="):
        write_mask_atomic(labels, out)  # an array has no geometry of its own
    with pytest.raises(ValueError, match="like="):
        image_to_nifti_bytes(labels)
    assert not list(tmp_path.glob("*mask*")) and not out.exists()  # nothing partial left behind

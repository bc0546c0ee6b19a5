"""Tests for flare_seg.service.io: header validation, reading, atomic writing."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from flare_seg.service.io import (
    InputError,
    InputTooLargeError,
    UnsupportedFormatError,
    check_nifti_data,
    image_to_nifti_bytes,
    read_ct,
    read_ct_volume,
    read_nifti_header,
    sitk_reads_nifti2,
    validate_nifti,
    write_mask_atomic,
)
from tests.service.conftest import make_ct, nifti1_header, nifti2_header, write_bytes

MAX_VOXELS = 10_000_000


@pytest.mark.parametrize(
    ("pixel_type", "dtype"),
    [
        (sitk.sitkInt16, "int16"),
        (sitk.sitkUInt16, "uint16"),
        (sitk.sitkInt32, "int32"),
        (sitk.sitkFloat32, "float32"),
        (sitk.sitkUInt8, "uint8"),
        (sitk.sitkFloat64, "float64"),
    ],
)
def test_read_ct_valid_types_unchanged(tmp_path: Path, pixel_type: int, dtype: str) -> None:
    source = make_ct(pixel_type=pixel_type)
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(source, str(path), useCompression=True)

    header = read_nifti_header(path, MAX_VOXELS)
    assert header.datatype == dtype
    assert header.dims_xyz == source.GetSize()
    assert header.voxel_count == int(np.prod(source.GetSize()))
    assert header.nbytes == header.voxel_count * np.dtype(dtype).itemsize
    assert header.version == 1 and header.compressed

    image = read_ct(path, MAX_VOXELS)
    assert image.GetPixelID() == pixel_type
    assert image.GetSize() == source.GetSize()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(source))


def test_read_ct_uncompressed_nii(tmp_path: Path) -> None:
    path = tmp_path / "ct.nii"
    sitk.WriteImage(make_ct(), str(path), useCompression=False)
    assert not read_nifti_header(path, MAX_VOXELS).compressed
    image = read_ct(path, MAX_VOXELS)
    assert image.GetSize() == make_ct().GetSize()


@pytest.mark.parametrize(
    ("name", "compress"), [("upload.tmp", True), ("upload", False), ("mislabelled.nii", True)]
)
def test_read_ct_any_file_name(tmp_path: Path, name: str, compress: bool) -> None:
    """Upload temp names, and a gzip file named .nii, read by content, not by name."""
    source = tmp_path / ("src.nii.gz" if compress else "src.nii")
    sitk.WriteImage(make_ct(), str(source), useCompression=compress)
    path = tmp_path / name
    path.write_bytes(source.read_bytes())
    image = read_ct(path, MAX_VOXELS)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(make_ct()))


def test_read_ct_wide_integers_cast_to_float32(tmp_path: Path) -> None:
    path = tmp_path / "ct64.nii.gz"
    sitk.WriteImage(make_ct(pixel_type=sitk.sitkInt64), str(path))
    image = read_ct(path, MAX_VOXELS)
    assert image.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(make_ct()))


def test_truncated_gzip_is_input_error(tmp_path: Path) -> None:
    full = tmp_path / "full.nii.gz"
    rng = np.random.default_rng(0)
    noisy = sitk.GetImageFromArray(rng.integers(-1000, 1000, (12, 16, 20), dtype=np.int16))
    sitk.WriteImage(noisy, str(full))
    data = full.read_bytes()
    path = write_bytes(tmp_path / "cut.nii.gz", data[: len(data) // 2], compress=False)
    with pytest.raises(InputError, match=r"cut\.nii\.gz: truncated"):
        read_ct(path, MAX_VOXELS)


@pytest.mark.parametrize("reader", [read_ct, read_ct_volume])
def test_truncated_uncompressed_is_input_error(tmp_path: Path, reader) -> None:
    full = tmp_path / "full.nii"
    sitk.WriteImage(make_ct(), str(full), useCompression=False)
    data = full.read_bytes()
    path = write_bytes(tmp_path / "cut.nii", data[: len(data) - 100], compress=False)
    with pytest.raises(InputError, match="truncated"):
        reader(path, MAX_VOXELS)


def test_truncated_header_is_input_error(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "h.nii.gz", nifti1_header((4, 4, 4))[:200], compress=True)
    with pytest.raises(InputError, match="truncated NIfTI header"):
        read_nifti_header(path, MAX_VOXELS)


def test_corrupt_gzip_data_is_input_error(tmp_path: Path) -> None:
    full = tmp_path / "full.nii.gz"
    sitk.WriteImage(make_ct(), str(full))
    data = bytearray(full.read_bytes())
    data[-8] ^= 0xFF  # break the CRC
    path = write_bytes(tmp_path / "crc.nii.gz", bytes(data), compress=False)
    header = read_nifti_header(path, MAX_VOXELS)
    with pytest.raises(InputError, match="corrupt gzip"):
        check_nifti_data(path, header)


def noisy_ct_bytes(tmp_path: Path) -> bytes:
    """A .nii.gz whose deflate stream is long (noise compresses poorly): its middle is voxel data."""
    rng = np.random.default_rng(5)
    image = sitk.GetImageFromArray(rng.integers(-1000, 1000, (24, 64, 64), dtype=np.int16))
    image.SetSpacing((0.8, 0.8, 2.5))
    path = tmp_path / "noisy.nii.gz"
    sitk.WriteImage(image, str(path), useCompression=True)
    return path.read_bytes()


def corrupt_inside(data: bytes) -> bytes:
    """The same .nii.gz with 16 bytes in the middle of the deflate stream flipped; trailer intact."""
    broken = bytearray(data)
    for i in range(len(broken) // 2, len(broken) // 2 + 16):
        broken[i] ^= 0x5A
    return bytes(broken)


def test_validate_without_scan_reads_the_trailer_instead_of_decompressing(
    tmp_path: Path, monkeypatch
) -> None:
    from flare_seg.service import io

    data = noisy_ct_bytes(tmp_path)
    full = write_bytes(tmp_path / "full.nii.gz", data, compress=False)
    cut = write_bytes(tmp_path / "cut.nii.gz", data[: len(data) // 2], compress=False)
    broken = write_bytes(tmp_path / "broken.nii.gz", corrupt_inside(data), compress=False)

    scans: list[Path] = []
    real_check = io.check_nifti_data
    monkeypatch.setattr(
        io, "check_nifti_data", lambda path, *a, **k: (scans.append(path), real_check(path, *a, **k))
    )
    assert validate_nifti(full, MAX_VOXELS, scan_data=False).dims_xyz == (64, 64, 24)
    assert scans == []  # the trailer's length matched: nothing was decompressed
    # a file cut short does not end in its trailer: the full check runs and says why
    with pytest.raises(InputError, match="truncated"):
        validate_nifti(cut, MAX_VOXELS, scan_data=False)
    assert scans == [cut]
    # corruption inside the stream that SimpleITK's header read trips over is named as such, even
    # without the scan; the full check and the read find it too
    with pytest.raises(InputError, match=r"corrupt gzip data within compressed bytes"):
        validate_nifti(broken, MAX_VOXELS, scan_data=False)
    with pytest.raises(InputError, match=r"corrupt gzip|truncated"):
        validate_nifti(broken, MAX_VOXELS)
    with pytest.raises(InputError, match=r"corrupt gzip|truncated"):
        read_ct_volume(broken, MAX_VOXELS)


def test_random_bytes_unsupported(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "x.nii.gz", np.random.default_rng(1).bytes(2000), compress=False)
    with pytest.raises(UnsupportedFormatError, match="not a NIfTI"):
        read_ct(path, MAX_VOXELS)


def test_gzip_of_text_unsupported(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "notes.nii.gz", b"hello, this is not an image\n" * 50, compress=True)
    with pytest.raises(UnsupportedFormatError) as info:
        read_ct(path, MAX_VOXELS)
    assert info.value.status_code == 415


def test_empty_file_input_error(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "empty.nii.gz", b"", compress=False)
    with pytest.raises(InputError, match="empty"):
        read_ct(path, MAX_VOXELS)


def test_hdr_img_pair_unsupported(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "a.hdr", nifti1_header((4, 4, 4), magic=b"ni1\x00"), compress=False)
    with pytest.raises(UnsupportedFormatError, match="single-file"):
        read_nifti_header(path, MAX_VOXELS)


def test_2d_image_input_error(tmp_path: Path) -> None:
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkInt16), str(path))
    with pytest.raises(InputError, match="expected a 3D image, got a 2D"):
        read_ct(path, MAX_VOXELS)


def test_single_slice_3d_is_2d(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "s.nii", nifti1_header((8, 8, 1)) + bytes(128), compress=False)
    with pytest.raises(InputError, match="single 2D slice"):
        read_nifti_header(path, MAX_VOXELS)


def test_4d_with_three_volumes_input_error(tmp_path: Path) -> None:
    volume = make_ct()
    path = tmp_path / "series.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([volume, volume, volume]), str(path))
    with pytest.raises(InputError, match="expected a 3D image, got a 4D"):
        read_ct(path, MAX_VOXELS)


def test_4d_with_one_volume_reads_as_3d(tmp_path: Path) -> None:
    path = tmp_path / "one.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([make_ct()]), str(path))
    image = read_ct(path, MAX_VOXELS)
    assert image.GetDimension() == 3 and image.GetSize() == make_ct().GetSize()


def test_vector_image_input_error(tmp_path: Path) -> None:
    volume = make_ct()
    path = tmp_path / "vec.nii.gz"
    sitk.WriteImage(sitk.Compose([volume, volume, volume]), str(path))
    with pytest.raises(InputError, match="expected a 3D image"):
        read_ct(path, MAX_VOXELS)


def test_absurd_header_rejected_without_allocating(tmp_path: Path) -> None:
    """100000^3 voxels (NIfTI-2, int64 dims): rejected from the header, instantly."""
    path = write_bytes(
        tmp_path / "huge.nii.gz", nifti2_header((100_000, 100_000, 100_000)) + b"\x00" * 64, compress=True
    )
    start = time.perf_counter()
    with pytest.raises(InputTooLargeError) as info:
        read_ct(path, MAX_VOXELS)
    assert time.perf_counter() - start < 1.0
    assert info.value.status_code == 413
    assert "4096" in str(info.value)


def test_over_voxel_limit(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "big.nii.gz", nifti1_header((4000, 4000, 4000)) + bytes(64), compress=True)
    with pytest.raises(InputTooLargeError, match="over the limit of 1000"):
        read_nifti_header(path, max_voxels=1000)


def test_zero_size_dim_input_error(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "z.nii.gz", nifti1_header((16, 0, 16)), compress=True)
    with pytest.raises(InputError, match="empty image"):
        read_ct(path, MAX_VOXELS)


@pytest.mark.parametrize(("code", "name"), [(32, "complex64"), (128, "RGB24"), (1, "binary")])
def test_unsupported_datatype(tmp_path: Path, code: int, name: str) -> None:
    path = write_bytes(
        tmp_path / "t.nii.gz", nifti1_header((4, 4, 4), datatype=code, bitpix=8), compress=True
    )
    with pytest.raises(InputError, match=name):
        read_nifti_header(path, MAX_VOXELS)


@pytest.mark.parametrize("pixdim", [(1.0, 0.0, 1.0), (1.0, 1.0, -2.0), (float("nan"), 1.0, 1.0)])
def test_bad_spacing(tmp_path: Path, pixdim: tuple[float, float, float]) -> None:
    path = write_bytes(tmp_path / "p.nii.gz", nifti1_header((4, 4, 4), pixdim=pixdim), compress=True)
    with pytest.raises(InputError, match="invalid voxel spacing"):
        read_nifti_header(path, MAX_VOXELS)


def test_big_endian_header(tmp_path: Path) -> None:
    data = np.arange(4 * 5 * 6, dtype=">i2").tobytes()
    path = write_bytes(tmp_path / "be.nii", nifti1_header((4, 5, 6), endian=">") + data, compress=False)
    header = read_nifti_header(path, MAX_VOXELS)
    assert header.dims_xyz == (4, 5, 6) and header.datatype == "int16"
    image = read_ct(path, MAX_VOXELS)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image).ravel(), np.arange(120))


def test_nifti2_header_and_read(tmp_path: Path) -> None:
    data = np.arange(4 * 5 * 6, dtype="<i2").tobytes()
    header_bytes = nifti2_header((4, 5, 6), pixdim=(0.5, 0.5, 3.0))
    path = write_bytes(tmp_path / "v2.nii.gz", header_bytes + data, compress=True)
    header = read_nifti_header(path, MAX_VOXELS)
    assert header.version == 2 and header.dims_xyz == (4, 5, 6) and header.spacing_mm_xyz == (0.5, 0.5, 3.0)
    if not sitk_reads_nifti2():  # ITK's bundled NIfTI library may be NIfTI-1 only: a clear 415
        with pytest.raises(UnsupportedFormatError, match="NIfTI-2"):
            read_ct(path, MAX_VOXELS)
        return
    image = read_ct(path, MAX_VOXELS)
    assert image.GetSpacing() == (0.5, 0.5, 3.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image).ravel(), np.arange(120))


def test_message_uses_display_name(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "0a1b2c.nii.gz", b"junk" * 100, compress=True)
    with pytest.raises(UnsupportedFormatError, match=r"^patient7\.nii\.gz: "):
        read_ct(path, MAX_VOXELS, display_name="patient7.nii.gz")


@pytest.mark.parametrize(
    "direction",
    [
        (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0),
        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
        (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
    ],
)
def test_write_mask_atomic_round_trips_geometry(tmp_path: Path, direction: tuple[float, ...]) -> None:
    """A mask on a CT's grid, as read from its NIfTI file, is written with bit-identical geometry."""
    ct_path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(make_ct(direction=direction), str(ct_path))
    ct = read_ct(ct_path, MAX_VOXELS)  # NIfTI stores float32: compare against what a reader sees
    mask = sitk.Cast(ct > 100, sitk.sitkUInt8)
    mask.CopyInformation(ct)
    out = tmp_path / "out" / "case01.nii.gz"
    write_mask_atomic(mask, out)

    assert sorted(p.name for p in out.parent.iterdir()) == ["case01.nii.gz"]
    assert out.stat().st_mode & 0o777 == 0o644  # readable by other users (e.g. outside a container)
    with gzip.open(out) as f:
        assert f.read(4)  # really gzip-compressed
    back = sitk.ReadImage(str(out))
    assert back.GetPixelID() == sitk.sitkUInt8
    assert back.GetSize() == ct.GetSize()
    assert back.GetSpacing() == ct.GetSpacing()
    assert back.GetOrigin() == ct.GetOrigin()
    assert back.GetDirection() == ct.GetDirection()
    np.testing.assert_allclose(ct.GetSpacing(), (0.8, 0.7, 2.5), rtol=1e-6)
    np.testing.assert_allclose(ct.GetDirection(), direction, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(mask))


def test_write_mask_atomic_replaces_and_cleans_up_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "m.nii.gz"
    out.write_bytes(b"old")

    def broken_write(*args: object, **kwargs: object) -> None:
        Path(str(args[1])).write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", broken_write)
    with pytest.raises(RuntimeError, match="disk full"):
        write_mask_atomic(sitk.Image(4, 4, 4, sitk.sitkUInt8), out)
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.nii.gz"]


def test_write_mask_atomic_requires_nifti_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.nii\.gz or \.nii"):
        write_mask_atomic(sitk.Image(4, 4, 4, sitk.sitkUInt8), tmp_path / "mask.png")


def test_image_to_nifti_bytes_round_trip(tmp_path: Path) -> None:
    ct = make_ct()
    data = image_to_nifti_bytes(ct)
    assert data[:2] == b"\x1f\x8b"
    path = write_bytes(tmp_path / "b.nii.gz", data, compress=False)
    back = read_ct(path, MAX_VOXELS)
    assert back.GetOrigin() == ct.GetOrigin()
    np.testing.assert_allclose(back.GetSpacing(), ct.GetSpacing(), rtol=1e-6)  # NIfTI stores float32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(ct))


def test_array_mask_is_written_on_its_geometry(tmp_path: Path) -> None:
    """A (z, y, x) label array with no source header is written (and encoded) on the given grid,
    flipped and permuted axes included; without a grid it is refused before anything is written."""
    from flare_seg.geometry import Geometry

    ct = read_ct(
        write_bytes(
            tmp_path / "ct.nii.gz",
            image_to_nifti_bytes(make_ct(direction=(0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0))),
            compress=False,
        ),
        MAX_VOXELS,
    )
    geometry = Geometry.of(ct)
    labels = (sitk.GetArrayFromImage(ct) > 100).astype(np.uint8) * 3
    out = tmp_path / "mask.nii.gz"
    write_mask_atomic(labels, out, geometry=geometry)
    encoded = read_ct(
        write_bytes(tmp_path / "enc.nii.gz", image_to_nifti_bytes(labels, geometry=geometry), compress=False),
        MAX_VOXELS,
    )
    for back in (sitk.ReadImage(str(out)), encoded):
        assert Geometry.of(back) == geometry
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), labels)
    assert labels.any() and not labels.all()

    with pytest.raises(ValueError, match="needs its grid"):
        write_mask_atomic(labels, tmp_path / "none.nii.gz")
    with pytest.raises(ValueError, match="needs its grid"):
        image_to_nifti_bytes(labels)
    assert not (tmp_path / "none.nii.gz").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_truncated_gzip_reports_the_bytes_it_holds_like_the_reader(tmp_path) -> None:
    """The server's check (``validate_nifti``) and the batch reader give the same, true count."""
    import re

    from flare_seg.service.io import InputError, read_ct_volume, validate_nifti

    rng = np.random.default_rng(0)
    full_path = tmp_path / "full.nii.gz"
    voxels = rng.integers(-1000, 1000, (40, 96, 96)).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(voxels), str(full_path))
    full = full_path.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(full[: len(full) // 2])
    messages = []
    for check in (
        lambda: validate_nifti(cut, 10**9, scan_data=True),
        lambda: validate_nifti(cut, 10**9, scan_data=False),
        lambda: read_ct_volume(cut, 10**9),
    ):
        with pytest.raises(InputError) as info:
            check()
        messages.append(str(info.value))
    counts = [re.search(r"ends after (\d+) of (\d+) bytes", m).groups() for m in messages]
    assert len(set(counts)) == 1, messages
    got, needed = (int(v) for v in counts[0])
    assert 0.3 * needed < got < needed

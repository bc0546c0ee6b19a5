"""``read_ct_volume`` (single-pass reading) returns what SimpleITK's full reader returns, and rejects
the same broken files."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from flare_seg.geometry import Geometry
from flare_seg.service.io import InputError, read_ct, read_ct_volume
from tests.service.conftest import make_ct, nifti1_header, write_bytes

MAX_VOXELS = 10_000_000


def _sitk_file(pixel_type: int = sitk.sitkInt16, name: str = "ct.nii.gz", compress: bool = True):
    def build(tmp: Path) -> Path:
        source = tmp / ("src.nii.gz" if compress else "src.nii")
        sitk.WriteImage(make_ct(pixel_type=pixel_type), str(source), useCompression=compress)
        path = tmp / name
        if path != source:
            path.write_bytes(source.read_bytes())
        return path

    return build


def _big_endian(compress: bool):
    def build(tmp: Path) -> Path:
        data = np.arange(4 * 5 * 6, dtype=">i2").tobytes()
        return write_bytes(tmp / "be.nii.gz", nifti1_header((4, 5, 6), endian=">") + data, compress=compress)

    return build


def _scaled(tmp: Path) -> Path:
    header = bytearray(nifti1_header((4, 5, 6)))
    struct.pack_into("<ff", header, 112, 2.0, -1024.0)  # scl_slope, scl_inter
    data = np.arange(4 * 5 * 6, dtype="<i2").tobytes()
    return write_bytes(tmp / "scaled.nii.gz", bytes(header) + data, compress=True)


def _one_volume_4d(tmp: Path) -> Path:
    data = np.arange(4 * 5 * 6, dtype="<i2").tobytes()
    return write_bytes(tmp / "t1.nii.gz", nifti1_header((4, 5, 6, 1)) + data, compress=True)


def _two_gzip_members(tmp: Path) -> Path:
    raw = nifti1_header((4, 5, 6)) + np.arange(4 * 5 * 6, dtype="<i2").tobytes()
    path = tmp / "members.nii.gz"
    path.write_bytes(gzip.compress(raw[:300]) + gzip.compress(raw[300:]))
    return path


CASES: dict[str, Callable[[Path], Path]] = {
    "int16": _sitk_file(sitk.sitkInt16),
    "uint16": _sitk_file(sitk.sitkUInt16),
    "int32": _sitk_file(sitk.sitkInt32),
    "uint8": _sitk_file(sitk.sitkUInt8),
    "float32": _sitk_file(sitk.sitkFloat32),
    "float64": _sitk_file(sitk.sitkFloat64),
    "int64 (cast)": _sitk_file(sitk.sitkInt64),
    "uncompressed": _sitk_file(name="ct.nii", compress=False),
    "gzip named .tmp": _sitk_file(name="upload.tmp"),
    "raw without suffix": _sitk_file(name="upload", compress=False),
    "big-endian raw": _big_endian(False),
    "big-endian gzip": _big_endian(True),
    "scaled intensities": _scaled,
    "4D with one volume": _one_volume_4d,
    "two gzip members": _two_gzip_members,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_volume_equals_full_reader(tmp_path: Path, case: str) -> None:
    path = CASES[case](tmp_path)
    image = read_ct(path, MAX_VOXELS)
    volume = read_ct_volume(path, MAX_VOXELS)
    assert volume.geometry == Geometry.of(image)
    expected = sitk.GetArrayFromImage(image)
    assert volume.array_zyx.dtype == expected.dtype
    assert volume.array_zyx.dtype.isnative
    np.testing.assert_array_equal(volume.array_zyx, expected)


def _noisy_gz(tmp: Path) -> bytes:
    full = tmp / "full.nii.gz"
    rng = np.random.default_rng(0)
    sitk.WriteImage(
        sitk.GetImageFromArray(rng.integers(-1000, 1000, (12, 16, 20), dtype=np.int16)), str(full)
    )
    return full.read_bytes()


def test_truncated_gzip(tmp_path: Path) -> None:
    data = _noisy_gz(tmp_path)
    path = write_bytes(tmp_path / "cut.nii.gz", data[: len(data) // 2], compress=False)
    with pytest.raises(InputError, match=r"cut\.nii\.gz: truncated"):
        read_ct_volume(path, MAX_VOXELS)


@pytest.mark.parametrize("where", ["crc", "middle"])
def test_corrupt_gzip(tmp_path: Path, where: str) -> None:
    """SimpleITK reads both of these without complaint; the volume reader must not."""
    data = bytearray(_noisy_gz(tmp_path))
    if where == "crc":
        data[-8] ^= 0xFF
    else:
        mid = len(data) // 2
        data[mid : mid + 32] = bytes(255 - b for b in data[mid : mid + 32])
    path = write_bytes(tmp_path / "bad.nii.gz", bytes(data), compress=False)
    with pytest.raises(InputError, match=r"bad\.nii\.gz"):
        read_ct_volume(path, MAX_VOXELS)


@pytest.mark.parametrize("dims", [(5, 6), (4, 5, 6, 3)])
def test_not_3d(tmp_path: Path, dims: tuple[int, ...]) -> None:
    data = np.zeros(int(np.prod(dims)), "<i2").tobytes()
    path = write_bytes(tmp_path / "nd.nii.gz", nifti1_header(dims) + data, compress=True)
    with pytest.raises(InputError, match=r"nd\.nii\.gz"):
        read_ct_volume(path, MAX_VOXELS)


class _RecordingSink:
    """Checks, at every call, that the slices announced as filled already hold their final values."""

    def __init__(self, expected: np.ndarray) -> None:
        self.expected, self.calls, self.array = expected, [], None

    def begin(self, geometry: Geometry, array_zyx: np.ndarray) -> None:
        self.geometry, self.array = geometry, array_zyx

    def filled(self, slices: int) -> None:
        assert self.array is not None
        np.testing.assert_array_equal(self.array[:slices], self.expected[:slices])
        self.calls.append(slices)


def test_sink_sees_slices_as_they_are_decompressed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import flare_seg.service.inflate as inflate

    monkeypatch.setattr(inflate, "READ_BYTES", 512)  # many small reads: many progress calls
    rng = np.random.default_rng(1)
    expected = rng.integers(-1000, 1000, (30, 16, 20), dtype=np.int16)
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(expected), str(path), useCompression=True)
    sink = _RecordingSink(expected)
    volume = read_ct_volume(path, MAX_VOXELS, sink=sink)
    assert sink.geometry == volume.geometry
    assert np.shares_memory(sink.array, volume.array_zyx)
    assert len(sink.calls) > 3 and sink.calls == sorted(set(sink.calls)) and sink.calls[-1] == 30


@pytest.mark.parametrize("case", ["uncompressed", "scaled intensities"])
def test_sink_is_not_told_about_other_layouts(tmp_path: Path, case: str) -> None:
    """Only gzip voxels read by the single-pass reader are streamed; for the rest the sink is never
    called."""
    sink = _RecordingSink(np.zeros(0))
    read_ct_volume(CASES[case](tmp_path), MAX_VOXELS, sink=sink)
    assert sink.array is None and sink.calls == []

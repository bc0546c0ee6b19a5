"""Tests for flare_seg.service.inflate: bounded gzip pieces and int16 conversion while reading."""

from __future__ import annotations

import gzip
import io
import zlib

import numpy as np
import pytest

from flare_seg.service.inflate import GzipStreamError, VoxelFiller, gzip_pieces, hu_int16, int16_volume


def test_pieces_are_bounded_and_complete() -> None:
    raw = bytes(30_000_000)  # deflate packs this ~1000:1: one read would be ~1 GB unbounded
    compressed = gzip.compress(raw)
    pieces = [len(p) for p in gzip_pieces(io.BytesIO(compressed), piece_bytes=1 << 20)]
    assert sum(pieces) == len(raw)
    assert max(pieces) <= 1 << 20 and min(pieces) > 0


def test_every_member_is_read() -> None:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 255, 100_000, dtype=np.uint8).tobytes()
    compressed = gzip.compress(raw[:123]) + gzip.compress(raw[123:5000]) + gzip.compress(raw[5000:])
    assert b"".join(gzip_pieces(io.BytesIO(compressed), piece_bytes=4096)) == raw


def test_truncated_stream() -> None:
    rng = np.random.default_rng(1)
    compressed = gzip.compress(rng.integers(0, 255, 200_000, dtype=np.uint8).tobytes())
    with pytest.raises(GzipStreamError, match="truncated gzip file") as caught:
        for _ in gzip_pieces(io.BytesIO(compressed[:-100])):
            pass
    assert caught.value.truncated


def test_corrupt_stream_names_the_compressed_bytes() -> None:
    """The error locates the damage in the file even when it comes in the first read."""
    rng = np.random.default_rng(2)
    compressed = bytearray(gzip.compress(rng.integers(0, 255, 200_000, dtype=np.uint8).tobytes()))
    compressed[-6] ^= 0xFF  # inside the CRC32: the whole stream decompresses, then fails the check
    with pytest.raises(GzipStreamError, match=r"within compressed bytes \d+-\d+") as caught:
        for _ in gzip_pieces(io.BytesIO(bytes(compressed))):
            pass
    assert not caught.value.truncated
    assert "after 0 decompressed bytes" not in str(caught.value)
    compressed = bytearray(gzip.compress(bytes(1000)))
    compressed[12] ^= 0xFF  # a broken first deflate block
    with pytest.raises(GzipStreamError, match=r"within compressed bytes 0-\d+"):
        for _ in gzip_pieces(io.BytesIO(bytes(compressed))):
            pass


def test_not_gzip() -> None:
    with pytest.raises(GzipStreamError):
        for _ in gzip_pieces(io.BytesIO(b"plain text, not gzip" * 10)):
            pass


def test_hu_int16_rules() -> None:
    out = np.empty(6, np.int16)
    hu_int16(np.array([np.nan, np.inf, -np.inf, 1.5, -2.5, 40000.0]), out)
    assert out.tolist() == [-1024, 32767, -32768, 2, -2, 32767]
    hu_int16(np.array([0, 70000, 32767, 5, 1, 2], np.uint32), out)
    assert out.tolist() == [0, 32767, 32767, 5, 1, 2]
    hu_int16(np.array([-(2**40), 2**40, -1, 0, 1, 2], np.int64), out)
    assert out.tolist() == [-32768, 32767, -1, 0, 1, 2]
    hu_int16(np.array([-128, 127, 0, 1, 2, 3], np.int8), out)
    assert out.tolist() == [-128, 127, 0, 1, 2, 3]


@pytest.mark.parametrize("dtype", ["<i2", ">i2", "<f8", ">f4", "<u2", "|u1", "<i4", ">u8"])
def test_filler_matches_a_whole_array_conversion(dtype: str) -> None:
    rng = np.random.default_rng(3)
    values = (rng.normal(0, 800, 5000)).astype(dtype) if dtype[1] == "f" else None
    if values is None:
        info = np.iinfo(np.dtype(dtype))
        values = rng.integers(max(info.min, -(2**20)), min(info.max, 2**20), 5000).astype(dtype)
    expected = np.empty(values.size, np.int16)
    hu_int16(values.astype(values.dtype.newbyteorder("=")), expected)
    data = values.tobytes()
    out = np.full(values.size, 7, np.int16)
    filler = VoxelFiller(out, np.dtype(dtype))
    cuts = sorted(rng.integers(0, len(data), 40).tolist())  # pieces that split voxels
    for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
        assert filler.write(data[a:b]) == b - a
    assert filler.full and filler.voxels == values.size
    np.testing.assert_array_equal(out, expected)
    assert filler.write(b"\1\2\3") == 0, "bytes past the array are not taken"


def test_filler_keeps_the_type_of_another_output() -> None:
    values = np.arange(-5, 5, dtype=">f8")
    out = np.empty(values.size, np.float64)
    filler = VoxelFiller(out, values.dtype)
    filler.write(values.tobytes()[:13])
    filler.write(values.tobytes()[13:])
    np.testing.assert_array_equal(out, values)
    with pytest.raises(ValueError, match="native byte order"):
        VoxelFiller(np.empty(4, ">f4"), np.dtype("<f4"))


def test_int16_volume_converts_in_slabs() -> None:
    array = np.linspace(-2000.4, 40000.6, 40 * 3 * 2).reshape(40, 3, 2)
    expected = np.clip(np.rint(array), -32768, 32767).astype(np.int16)
    np.testing.assert_array_equal(int16_volume(array, slab=7), expected)
    same = np.zeros((2, 2, 2), np.int16)
    assert int16_volume(same) is same


def test_zlib_module_errors_are_covered() -> None:
    """gzip_pieces catches its inflate library's error type, which is zlib's or ISA-L's."""
    with pytest.raises(GzipStreamError):
        for _ in gzip_pieces(io.BytesIO(b"\x1f\x8b\x08\x00" + b"\xff" * 50)):
            pass
    assert issubclass(zlib.error, Exception)

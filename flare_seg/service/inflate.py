"""Bounded-memory gzip decompression, and voxels converted to int16 HU on the way in.

``gzip_pieces`` decompresses a .nii.gz (every member, CRC and length checked) in pieces of at most
``PIECE_BYTES``: deflate expands up to ~1000 times, so one 1 MiB read of an all-zero image would
otherwise become a 1 GB buffer. Its errors say where in the *compressed* file the stream broke.

``VoxelFiller`` writes voxel bytes of any supported type, in pieces of any length, into an array;
into an int16 one it converts as the pipeline does (``hu_int16``): a float64 volume is never held,
only one piece of it at a time. Equal types (e.g. int16 in native byte order) are copied as is.
"""

from __future__ import annotations

import importlib
import types
import zlib
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np


def _inflate_module() -> types.ModuleType:
    """ISA-L's inflate (faster than zlib's; same stream format and checks), else zlib's."""
    try:
        return importlib.import_module("isal.isal_zlib")
    except ImportError:  # pragma: no cover - isal is a dependency, zlib the fallback
        return zlib


_inflate_lib = _inflate_module()
_INFLATE_ERROR: type[Exception] = _inflate_lib.error

INT16_MIN, INT16_MAX = -32768, 32767
NAN_HU = -1024.0  # NaN voxels become air
READ_BYTES = 64 << 10  # compressed bytes fed at a time: also how closely an error is located
PIECE_BYTES = 8 << 20  # most decompressed bytes produced at a time
_GZIP_WBITS = 31  # a gzip wrapper: header, CRC32 and ISIZE checked


class GzipStreamError(ValueError):
    """A broken gzip stream: ``truncated`` (it ends early) or corrupt; the message says where, in
    compressed bytes of the file and decompressed bytes of the image."""

    def __init__(self, message: str, *, truncated: bool, produced: int = 0, consumed: int = 0) -> None:
        super().__init__(message)
        self.truncated = truncated
        self.produced = produced  # decompressed bytes before the failure
        self.consumed = consumed  # compressed bytes read before the failure


def gzip_pieces(f: BinaryIO, *, piece_bytes: int = PIECE_BYTES) -> Iterator[memoryview]:
    """The decompressed content of the gzip file ``f`` (from its current position), every member
    in turn, in pieces of at most ``piece_bytes`` bytes (never empty).

    Raises:
        GzipStreamError: the stream is corrupt (bad header, data or CRC) or ends before its last
            member's trailer.
    """
    inflater = _inflate_lib.decompressobj(_GZIP_WBITS)
    consumed = 0  # compressed bytes fed to the current inflater before the pending input
    member_start = 0
    produced = 0
    pending = b""
    while True:
        if not pending:
            pending = f.read(READ_BYTES)
        try:
            data = inflater.decompress(pending, piece_bytes)
        except _INFLATE_ERROR as e:
            end = member_start + consumed + len(pending)
            raise GzipStreamError(
                f"corrupt gzip data within compressed bytes {member_start + consumed}-{end} of the file, "
                f"after {produced} decompressed bytes ({e})",
                truncated=False,
            ) from None
        tail = inflater.unconsumed_tail
        consumed += len(pending) - len(tail) - (len(inflater.unused_data) if inflater.eof else 0)
        if data:
            produced += len(data)
            yield memoryview(data)
        if inflater.eof:
            rest = inflater.unused_data + f.read(READ_BYTES)
            if not rest.strip(b"\0"):  # end of file (NUL padding after the last member is allowed)
                return
            member_start += consumed
            consumed, pending = 0, rest
            inflater = _inflate_lib.decompressobj(_GZIP_WBITS)
            continue
        if not pending and not data:
            raise GzipStreamError(
                f"truncated gzip file: the stream ends after {member_start + consumed} compressed bytes "
                f"({produced} decompressed bytes)",
                truncated=True,
                produced=produced,
                consumed=member_start + consumed,
            )
        pending = tail


def hu_int16(values: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = values`` as int16 HU: integers clamped to int16's range (unsigned ones to
    0..32767), floats rounded to the nearest integer and clamped, NaN as -1024 (air)."""
    if (values.dtype.kind in "iu" and values.dtype.itemsize == 1) or values.dtype == np.int16:
        out[...] = values
        return
    if values.dtype.kind == "f":
        values = np.rint(np.nan_to_num(values, nan=NAN_HU, posinf=INT16_MAX, neginf=INT16_MIN))
    lo = 0 if values.dtype.kind == "u" else INT16_MIN
    np.clip(values, lo, INT16_MAX, out=out, casting="unsafe")


def int16_volume(array: np.ndarray, slab: int = 16) -> np.ndarray:
    """``array`` (any shape, slowest axis first) as int16 HU by ``hu_int16``, converted ``slab``
    entries of its first axis at a time (no whole-volume float temporary); int16 is returned as is."""
    if array.dtype == np.int16:
        return array
    out = np.empty(array.shape, np.int16)
    for a in range(0, array.shape[0], slab):
        hu_int16(array[a : a + slab], out[a : a + slab])
    return out


class VoxelFiller:
    """Fills a flat array from the bytes of voxels of ``source`` dtype (its byte order included),
    given in pieces of any length; ``voxels`` counts the voxels written so far.

    An int16 output gets ``hu_int16`` of the values (a float64 file is never held whole); another
    output the values as they are (e.g. in native byte order). Equal dtypes are copied as bytes.
    """

    def __init__(self, out: np.ndarray, source: np.dtype) -> None:
        if out.ndim != 1 or not out.flags.c_contiguous or not out.dtype.isnative:
            raise ValueError("the output must be a flat, contiguous array in native byte order")
        self.out = out
        self.source = np.dtype(source)
        self.voxels = 0
        self._carry = bytearray()
        self._copy = self.source == out.dtype  # the same type: bytes as they come
        self._out_bytes = out.view(np.uint8).data

    @property
    def full(self) -> bool:
        return self.voxels >= self.out.size

    def write(self, data: memoryview | bytes) -> int:
        """Take bytes from ``data`` until the array is full; returns how many were taken."""
        data = memoryview(data).cast("B")
        itemsize = self.source.itemsize
        room = (self.out.size - self.voxels) * itemsize - len(self._carry)
        data = data[: max(0, room)]
        taken = len(data)
        if self._carry:
            need = itemsize - len(self._carry)
            self._carry.extend(data[:need])
            data = data[need:]
            if len(self._carry) < itemsize:
                return taken
            self._convert(memoryview(bytes(self._carry)))
            self._carry.clear()
        whole = len(data) - len(data) % itemsize
        if whole:
            self._convert(data[:whole])
        self._carry.extend(data[whole:])
        return taken

    def _convert(self, data: memoryview) -> None:
        count = len(data) // self.source.itemsize
        if self._copy:
            start = self.voxels * self.source.itemsize
            self._out_bytes[start : start + len(data)] = data
        elif self.out.dtype == np.int16:
            hu_int16(np.frombuffer(data, dtype=self.source), self.out[self.voxels : self.voxels + count])
        else:
            self.out[self.voxels : self.voxels + count] = np.frombuffer(data, dtype=self.source)
        self.voxels += count

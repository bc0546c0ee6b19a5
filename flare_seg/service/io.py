"""Input validation, reading and atomic writing of NIfTI images (shared by the server and batch CLI).

Reading is done in two steps so that hostile or broken files fail fast and cheaply:

1. ``read_nifti_header`` parses only the first 540 bytes (decompressing just those for .nii.gz) and
   rejects non-NIfTI files, non-3D images, unsupported data types and absurd sizes before a single
   voxel is decompressed or allocated.
2. ``check_nifti_data`` streams through the file (1 MiB at a time, never holding the volume) to make
   sure the voxel data the header promises is really there: SimpleITK/ITK silently zero-fills
   truncated files instead of failing.

``read_ct`` does both, then reads the image with SimpleITK. ``read_ct_volume`` (the batch and Python
path) takes the geometry from SimpleITK's header reader and decompresses the voxels once, straight
into a numpy array, checking the gzip CRC on the way: one pass instead of two, and no second copy.
Sizes, spacings and origins are in SimpleITK's (x, y, z) order; physical coordinates are LPS mm.

Masks are written with the input file's own NIfTI geometry fields (``write_mask_atomic(..., like=)``):
re-encoding a direction from float64 to NIfTI's float32 would move an oblique grid by ~1e-8.

Every user-facing failure is an ``InputError`` (or a subclass) whose message names the file and says
what is wrong; ``status_code`` is the HTTP status the server answers with.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import itertools
import logging
import math
import os
import struct
import tempfile
import types
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import SimpleITK as sitk

from flare_seg.geometry import Geometry, image_from_array_zyx
from flare_seg.labels import ORGANS
from flare_seg.service.inflate import GzipStreamError, VoxelFiller, gzip_pieces, int16_volume
from flare_seg.service.plausibility import implausible_grid_reason

# The gzip, inflate and deflate implementations: modules with gzip's and zlib's interfaces.
_gzip_lib: types.ModuleType
_inflate_lib: types.ModuleType
_deflate_lib: types.ModuleType
try:  # ISA-L's inflate and deflate are faster than zlib's; same stream format and checks
    from isal import igzip as _gzip_lib
    from isal import isal_zlib as _inflate_lib

    _deflate_lib, _DEFLATE_LEVEL = _inflate_lib, 2  # ISA-L levels are 0..3
except ImportError:  # pragma: no cover - isal is a dependency, zlib the fallback
    _gzip_lib = gzip
    _inflate_lib = _deflate_lib = zlib
    _DEFLATE_LEVEL = 6

logger = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
MAX_DIM_PER_AXIS = 4096  # voxels; larger axes are rejected as absurd (a CT is at most ~2000 slices)
_NIFTI1_HEADER_BYTES = 348
_NIFTI2_HEADER_BYTES = 540
_READ_CHUNK_BYTES = 1 << 20
_RAW_PIECE_BYTES = 8 << 20
# Decompressed bytes tolerated after the voxel data before we stop checking (bounds a gzip bomb).
_TRAILING_SLACK_BYTES = 1 << 20
_GZIP_MIN_BYTES = 18  # a 10-byte header and an 8-byte trailer

# NIfTI datatype code -> numpy dtype name, for the scalar types we read.
_SUPPORTED_DATATYPES: dict[int, str] = {
    2: "uint8",
    4: "int16",
    8: "int32",
    16: "float32",
    64: "float64",
    256: "int8",
    512: "uint16",
    768: "uint32",
    1024: "int64",
    1280: "uint64",
}
_UNSUPPORTED_DATATYPES: dict[int, str] = {
    1: "binary (1 bit)",
    32: "complex64",
    128: "RGB24",
    1536: "float128",
    1792: "complex128",
    2048: "complex256",
    2304: "RGBA32",
}
_ITEMSIZE: dict[str, int] = {
    "uint8": 1,
    "int8": 1,
    "int16": 2,
    "uint16": 2,
    "int32": 4,
    "uint32": 4,
    "float32": 4,
    "int64": 8,
    "uint64": 8,
    "float64": 8,
}

# SimpleITK pixel types returned unchanged by read_ct; the wider integer types are cast to float32.
_ACCEPTED_PIXEL_IDS = frozenset(
    {
        sitk.sitkInt16,
        sitk.sitkUInt16,
        sitk.sitkInt32,
        sitk.sitkUInt8,
        sitk.sitkInt8,
        sitk.sitkFloat32,
        sitk.sitkFloat64,
    }
)
_CAST_TO_FLOAT32_PIXEL_IDS = frozenset({sitk.sitkUInt32, sitk.sitkInt64, sitk.sitkUInt64})


ByteOrder = Literal["<", ">"]  # little-endian, big-endian (struct and numpy notation)


class InputError(ValueError):
    """A problem with a user's input file; the message says what is wrong and with which file.

    Maps to an HTTP 4xx answer in the server and to a failed case in the batch CLI.
    """

    status_code: int = 422


class UnsupportedFormatError(InputError):
    """Not a (single-file) NIfTI image, or not a valid gzip stream."""

    status_code = 415


class InputTooLargeError(InputError):
    """The header describes an image over the configured voxel limit or with absurd dimensions."""

    status_code = 413


@dataclass(frozen=True)
class NiftiHeader:
    """What ``read_nifti_header`` learned from a NIfTI header, before reading any voxel.

    ``dims_xyz`` and ``spacing_mm_xyz`` are in (x, y, z) order. ``nbytes`` is the size of the voxel
    data in bytes, ``data_offset`` the byte offset of the voxel data in the (decompressed) file.
    """

    dims_xyz: tuple[int, int, int]
    datatype: str  # numpy dtype name, e.g. "int16"
    voxel_count: int
    nbytes: int
    version: int  # 1 or 2
    spacing_mm_xyz: tuple[float, float, float]
    data_offset: int
    compressed: bool
    byteorder: ByteOrder = "<"  # "<" little-endian, ">" big-endian
    raw: bytes = field(default=b"", repr=False, compare=False)  # the header's own bytes (348 or 540)


def _name(path: Path, display_name: str | None) -> str:
    return display_name if display_name else path.name


def is_gzip(path: Path) -> bool:
    """True when the file starts with the gzip magic bytes (1f 8b), whatever its name."""
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def read_nifti_header(
    path: Path, max_voxels: int, *, display_name: str | None = None, max_image_bytes: int | None = None
) -> NiftiHeader:
    """Parse and validate the NIfTI-1 or NIfTI-2 header of a .nii or .nii.gz file.

    Only the first 540 (decompressed) bytes are read; gzip is detected by its magic bytes, not by the
    file name; both byte orders are accepted (``sizeof_hdr`` tells which).

    Args:
        path: the file to inspect.
        max_voxels: the largest accepted x*y*z voxel count.
        display_name: the name used in error messages (e.g. an upload's original file name);
            defaults to ``path.name``.
        max_image_bytes: the largest accepted voxel data, counted at max(2, bytes per voxel) (what
            decompressing it writes, and what it takes as int16); None: no limit.

    Raises:
        UnsupportedFormatError: not a single-file NIfTI (no ``n+1``/``n+2`` magic) or a broken gzip stream.
        InputTooLargeError: more than ``max_voxels`` voxels, more than 4096 voxels along an axis, or
            more than ``max_image_bytes``.
        InputError: not a 3D scalar image (2D, 4D with several volumes, vectors), an empty axis,
            an unsupported data type, a zero, negative or non-finite voxel spacing, a truncated
            header, or a grid that is no CT (an axis under 4 voxels, a spacing outside 0.01-50 mm).
    """
    name = _name(path, display_name)
    raw, compressed = _read_header_bytes(path, name)
    endian, sizeof_hdr = _header_byte_order(raw, name)
    if sizeof_hdr == _NIFTI1_HEADER_BYTES:
        fields = _nifti1_fields(raw, endian, name)
    else:
        fields = _nifti2_fields(raw, endian, name)
    dims_xyz = _check_dimensions(fields.dim, name)
    voxel_count = _check_size_limits(dims_xyz, max_voxels, name)
    datatype = _check_datatype(fields.datatype_code, name)
    _check_image_bytes(dims_xyz, voxel_count, datatype, max_image_bytes, name)
    spacing_mm_xyz = _check_spacing(fields.pixdim, name)
    _check_plausible(dims_xyz, spacing_mm_xyz, name)
    return NiftiHeader(
        dims_xyz=dims_xyz,
        datatype=datatype,
        voxel_count=voxel_count,
        nbytes=voxel_count * _ITEMSIZE[datatype],
        version=fields.version,
        spacing_mm_xyz=spacing_mm_xyz,
        data_offset=fields.data_offset,
        compressed=compressed,
        byteorder=endian,
        raw=bytes(raw[:sizeof_hdr]),
    )


@dataclass(frozen=True)
class _HeaderFields:
    """The raw header fields ``read_nifti_header`` checks, as stored (NIfTI-1 and -2 alike)."""

    version: int  # 1 or 2
    dim: tuple[int, ...]  # dim[0] = number of dimensions, dim[1:] = sizes
    datatype_code: int
    pixdim: tuple[float, ...]  # pixdim[1:4] = voxel spacing (x, y, z)
    data_offset: int  # byte offset of the voxel data


def _read_header_bytes(path: Path, name: str) -> tuple[bytes, bool]:
    """The first 540 (decompressed) bytes of the file, and whether it is gzip-compressed."""
    try:
        compressed = is_gzip(path)
        if compressed:
            with gzip.open(path, "rb") as f:
                raw = f.read(_NIFTI2_HEADER_BYTES)
        else:
            with open(path, "rb") as f:
                raw = f.read(_NIFTI2_HEADER_BYTES)
    except gzip.BadGzipFile as e:
        raise UnsupportedFormatError(f"{name}: not a valid gzip file ({e})") from None
    except EOFError:
        raise InputError(f"{name}: the gzip stream ends inside the NIfTI header (truncated file)") from None
    except zlib.error as e:
        raise InputError(f"{name}: corrupt gzip data in the NIfTI header ({e})") from None
    except OSError as e:
        raise InputError(f"{name}: cannot read the file ({e.strerror or e})") from None
    if not raw:
        raise InputError(f"{name}: the file is empty")
    if len(raw) < 4:
        raise UnsupportedFormatError(f"{name}: not a NIfTI file ({len(raw)} bytes only)")
    return raw, compressed


def _header_byte_order(raw: bytes, name: str) -> tuple[ByteOrder, int]:
    """The byte order ("<" or ">") in which ``sizeof_hdr`` reads 348 or 540, and that size."""
    candidates: tuple[ByteOrder, ...] = ("<", ">")
    for candidate in candidates:
        (sizeof_hdr,) = struct.unpack(candidate + "i", raw[:4])
        if sizeof_hdr in (_NIFTI1_HEADER_BYTES, _NIFTI2_HEADER_BYTES):
            if len(raw) < sizeof_hdr:
                raise InputError(f"{name}: truncated NIfTI header ({len(raw)} of {sizeof_hdr} bytes)")
            return candidate, int(sizeof_hdr)
    raise UnsupportedFormatError(
        f"{name}: not a NIfTI file (unknown header size); expected a .nii or .nii.gz image"
    )


def _nifti1_fields(raw: bytes, endian: str, name: str) -> _HeaderFields:
    magic = raw[344:348]
    if magic == b"ni1\x00":
        raise UnsupportedFormatError(
            f"{name}: a NIfTI .hdr/.img pair header; upload a single-file .nii or .nii.gz instead"
        )
    if magic != b"n+1\x00":
        raise UnsupportedFormatError(f"{name}: not a NIfTI file (no 'n+1' magic; ANALYZE is not supported)")
    dim = struct.unpack(endian + "8h", raw[40:56])
    (datatype_code,) = struct.unpack(endian + "h", raw[70:72])
    pixdim = struct.unpack(endian + "8f", raw[76:108])
    (vox_offset_f,) = struct.unpack(endian + "f", raw[108:112])
    if not math.isfinite(vox_offset_f) or vox_offset_f < 0:
        raise InputError(f"{name}: invalid vox_offset {vox_offset_f} in the NIfTI header")
    data_offset = max(int(vox_offset_f), _NIFTI1_HEADER_BYTES + 4)
    return _HeaderFields(1, dim, datatype_code, pixdim, data_offset)


def _nifti2_fields(raw: bytes, endian: str, name: str) -> _HeaderFields:
    magic = raw[4:12]
    if magic[:4] == b"ni2\x00":
        raise UnsupportedFormatError(
            f"{name}: a NIfTI-2 .hdr/.img pair header; upload a single-file .nii or .nii.gz instead"
        )
    if magic[:4] != b"n+2\x00":
        raise UnsupportedFormatError(f"{name}: not a NIfTI file (no 'n+2' magic)")
    (datatype_code,) = struct.unpack(endian + "h", raw[12:14])
    dim = struct.unpack(endian + "8q", raw[16:80])
    pixdim = struct.unpack(endian + "8d", raw[104:168])
    (vox_offset,) = struct.unpack(endian + "q", raw[168:176])
    if vox_offset < 0:
        raise InputError(f"{name}: invalid vox_offset {vox_offset} in the NIfTI header")
    data_offset = max(int(vox_offset), _NIFTI2_HEADER_BYTES + 4)
    return _HeaderFields(2, dim, datatype_code, pixdim, data_offset)


def _check_dimensions(dim: tuple[int, ...], name: str) -> tuple[int, int, int]:
    """A 3D scalar image: 3 to 7 dimensions of which only the first three exceed 1, none empty."""
    ndim = dim[0]
    if not 1 <= ndim <= 7:
        raise InputError(f"{name}: invalid number of dimensions dim[0]={ndim} in the NIfTI header")
    extra = dim[4 : ndim + 1]
    if ndim < 3:
        raise InputError(
            f"{name}: expected a 3D image, got a {ndim}D image of size {tuple(dim[1 : ndim + 1])}"
        )
    if any(d != 1 for d in extra):
        raise InputError(
            f"{name}: expected a 3D image, got a {ndim}D image of size {tuple(dim[1 : ndim + 1])} "
            f"(several volumes, time points or vector components)"
        )
    dims_xyz = (int(dim[1]), int(dim[2]), int(dim[3]))
    if any(d < 1 for d in dims_xyz):
        raise InputError(f"{name}: empty image, size {dims_xyz} (x, y, z) has an axis with no voxels")
    if dims_xyz[2] == 1:
        raise InputError(f"{name}: expected a 3D image, got a single 2D slice of size {dims_xyz[:2]}")
    return dims_xyz


def _check_size_limits(dims_xyz: tuple[int, int, int], max_voxels: int, name: str) -> int:
    """At most ``MAX_DIM_PER_AXIS`` voxels per axis and ``max_voxels`` in all; returns the count."""
    if any(d > MAX_DIM_PER_AXIS for d in dims_xyz):
        raise InputTooLargeError(
            f"{name}: image size {dims_xyz} (x, y, z) is over the limit of {MAX_DIM_PER_AXIS} voxels per axis"
        )
    voxel_count = dims_xyz[0] * dims_xyz[1] * dims_xyz[2]
    if voxel_count > max_voxels:
        raise InputTooLargeError(
            f"{name}: image size {dims_xyz} (x, y, z) has {voxel_count} voxels, "
            f"over the limit of {max_voxels}"
        )
    return voxel_count


def image_bytes(voxel_count: int, datatype: str) -> int:
    """The bytes an image is counted at against ``max_image_bytes``: max(2, bytes per voxel) per
    voxel, i.e. the larger of what decompressing it writes and what holding it as int16 takes."""
    return voxel_count * max(2, _ITEMSIZE[datatype])


def _check_image_bytes(
    dims_xyz: tuple[int, int, int], voxel_count: int, datatype: str, max_image_bytes: int | None, name: str
) -> None:
    if max_image_bytes is None:
        return
    counted = image_bytes(voxel_count, datatype)
    if counted > max_image_bytes:
        raise InputTooLargeError(
            f"{name}: image size {dims_xyz} (x, y, z) of {datatype} voxels is {counted / 2**20:.0f} MiB "
            f"of voxel data, over the limit of {max_image_bytes / 2**20:.0f} MiB"
        )


def _check_plausible(
    dims_xyz: tuple[int, int, int], spacing_mm_xyz: tuple[float, float, float], name: str
) -> None:
    reason = implausible_grid_reason(dims_xyz, spacing_mm_xyz)
    if reason is not None:
        raise InputError(f"{name}: {reason}")


def _check_datatype(datatype_code: int, name: str) -> str:
    """The numpy dtype name of a supported scalar NIfTI datatype."""
    if datatype_code in _UNSUPPORTED_DATATYPES:
        raise InputError(
            f"{name}: unsupported voxel type {_UNSUPPORTED_DATATYPES[datatype_code]}; expected a scalar "
            f"integer or float CT image (e.g. int16)"
        )
    if datatype_code not in _SUPPORTED_DATATYPES:
        raise InputError(f"{name}: unknown NIfTI datatype code {datatype_code}")
    return _SUPPORTED_DATATYPES[datatype_code]


def _check_spacing(pixdim: tuple[float, ...], name: str) -> tuple[float, float, float]:
    """The voxel spacing (x, y, z) in mm: finite and positive."""
    spacing_mm_xyz = (float(pixdim[1]), float(pixdim[2]), float(pixdim[3]))
    if not all(math.isfinite(s) and s > 0 for s in spacing_mm_xyz):
        raise InputError(f"{name}: invalid voxel spacing {spacing_mm_xyz} (x, y, z); must be positive")
    return spacing_mm_xyz


def check_nifti_data(path: Path, header: NiftiHeader, *, display_name: str | None = None) -> None:
    """Make sure the file holds all the voxel data its header promises.

    ITK silently zero-fills a truncated NIfTI, so this check is what turns a cut-off upload into an
    error. Uncompressed files are checked by size; gzip files are decompressed as a stream, 1 MiB at
    a time with ISA-L (memory stays bounded; costs one decompression pass). Reading stops 1 MiB
    past the end of the voxel data so that a gzip bomb cannot keep it busy.

    Raises:
        InputError: truncated or corrupt data.
    """
    name = _name(path, display_name)
    needed = header.data_offset + header.nbytes
    if not header.compressed:
        size = path.stat().st_size
        if size < needed:
            raise InputError(
                f"{name}: truncated file: {size} bytes, but its header describes {needed} bytes "
                f"({header.dims_xyz} {header.datatype} voxels)"
            )
        return
    total = 0
    try:
        with open(path, "rb") as f:
            for piece in gzip_pieces(f):
                total += len(piece)
                if total > needed + _TRAILING_SLACK_BYTES:
                    logger.warning(
                        "%s: more decompressed data than the header describes; ignoring the rest", name
                    )
                    return
    except GzipStreamError as e:
        raise _gzip_input_error(name, e, needed) from None
    except OSError as e:
        raise InputError(f"{name}: cannot read the file ({e.strerror or e})") from None
    if total < needed:
        raise InputError(
            f"{name}: truncated file: {total} decompressed bytes, but its header describes {needed} bytes "
            f"({header.dims_xyz} {header.datatype} voxels)"
        )


def _gzip_input_error(name: str, error: GzipStreamError, needed: int) -> InputError:
    """The InputError of a broken gzip stream that should hold ``needed`` decompressed bytes."""
    if error.truncated:
        return InputError(
            f"{name}: truncated gzip file (the stream ends after {error.produced} of {needed} bytes, "
            f"{error.consumed} bytes into the file; was the upload or copy interrupted?)"
        )
    return InputError(f"{name}: {error}")


def validate_nifti(
    path: Path,
    max_voxels: int,
    *,
    display_name: str | None = None,
    scan_data: bool = True,
    max_image_bytes: int | None = None,
) -> NiftiHeader:
    """All the checks ``read_ct`` makes before reading voxels: header, readability, complete data.

    Costs one streaming decompression pass for .nii.gz (bounded memory); the server runs it before
    queueing an upload so that broken files are answered at once.

    ``scan_data=False`` skips that pass for a .nii.gz whose gzip trailer records exactly the
    length the header promises: a file cut short ends in compressed bytes, not in its trailer, so
    it still fails here (with the full check's message). Corruption inside the stream is then
    found by the read that follows (``read_ct_volume`` checks the CRC), not here.

    The geometry is also read as SimpleITK reads it (header only): a singular or non-orthonormal
    orientation, or a spacing outside the plausible range once the header's affine is applied,
    fails here as it would when the image is read.

    Raises:
        InputError (or a subclass): see ``read_nifti_header`` and ``check_nifti_data``;
            UnsupportedFormatError for NIfTI-2 when this SimpleITK cannot read it.
    """
    name = _name(path, display_name)
    header = read_nifti_header(path, max_voxels, display_name=display_name, max_image_bytes=max_image_bytes)
    _check_readable(header, name)
    _check_sitk_geometry(path, header, name)
    if scan_data or not header.compressed or not _gzip_trailer_matches(path, header):
        check_nifti_data(path, header, display_name=display_name)
    return header


def _check_sitk_geometry(path: Path, header: NiftiHeader, name: str) -> None:
    """The header's grid as SimpleITK reads it (header only): readable, and plausible."""
    reader, detail = _sitk_header_reader(path, header, name)
    if detail is not None:
        if header.compressed:
            check_nifti_data(path, header, display_name=name)  # a broken stream: say where
        raise InputError(f"{name}: cannot read the NIfTI image ({detail})")
    if reader.GetDimension() == 3:
        _check_plausible(header.dims_xyz, reader.GetSpacing(), name)


def _sitk_header_reader(
    path: Path, header: NiftiHeader, name: str
) -> tuple[sitk.ImageFileReader, str | None]:
    """SimpleITK's NIfTI reader after reading the header alone, and the ITK error's detail (server
    paths replaced by ``name``) if it could not; None when it read."""
    with _readable_name(path, header) as read_path:
        reader = sitk.ImageFileReader()
        reader.SetImageIO("NiftiImageIO")
        reader.SetFileName(str(read_path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as e:
            return reader, _itk_error_detail(e, (read_path, path), name)
    return reader, None


def _itk_error_detail(error: RuntimeError, paths: tuple[Path, ...], name: str) -> str:
    """The last line of an ITK error, with server paths replaced by the file's display name."""
    lines = str(error).strip().splitlines()
    detail = lines[-1].removeprefix("ITK ERROR: ") if lines else "unknown error"
    for internal in paths:  # do not show server paths to clients
        detail = detail.replace(str(internal), name)
    return detail


def _gzip_trailer_matches(path: Path, header: NiftiHeader) -> bool:
    """Whether the file ends in a gzip trailer whose ISIZE (the uncompressed length modulo 2**32)
    is the header's offset plus voxel bytes. Reads the last four bytes only."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size < _GZIP_MIN_BYTES:
            return False
        f.seek(size - 4)
        isize = int.from_bytes(f.read(4), "little")
    return isize == (header.data_offset + header.nbytes) % 2**32


def _check_readable(header: NiftiHeader, name: str) -> None:
    if header.version == 2 and not sitk_reads_nifti2():
        raise UnsupportedFormatError(
            f"{name}: NIfTI-2 files cannot be read by this server's SimpleITK; save the image as NIfTI-1"
        )


@functools.cache
def sitk_reads_nifti2() -> bool:
    """Whether the installed SimpleITK/ITK reads NIfTI-2 files (probed once with a 2x2x2 file)."""
    data = struct.pack("<8h", *range(8))
    header = bytearray(_NIFTI2_HEADER_BYTES)
    struct.pack_into("<i", header, 0, _NIFTI2_HEADER_BYTES)
    header[4:12] = b"n+2\x00\r\n\x1a\n"
    struct.pack_into("<hh", header, 12, 4, 16)  # int16
    struct.pack_into("<8q", header, 16, 3, 2, 2, 2, 1, 1, 1, 1)
    struct.pack_into("<8d", header, 104, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into("<qd", header, 168, _NIFTI2_HEADER_BYTES + 4, 1.0)  # vox_offset, scl_slope
    with tempfile.TemporaryDirectory(prefix="flare-seg-probe-") as tmp:
        probe = Path(tmp) / "probe.nii"
        probe.write_bytes(bytes(header) + bytes(4) + data)
        try:
            image = sitk.ReadImage(str(probe), imageIO="NiftiImageIO")
        except RuntimeError:
            logger.info("this SimpleITK cannot read NIfTI-2 files (the NIfTI error above is the probe)")
            return False
    return image.GetSize() == (2, 2, 2)


def read_ct(
    path: Path,
    max_voxels: int,
    *,
    display_name: str | None = None,
    verify_data: bool = True,
    max_image_bytes: int | None = None,
) -> sitk.Image:
    """Read a 3D CT image from a .nii or .nii.gz file, validating it first.

    The header is checked before anything is decompressed (``read_nifti_header``), then the data
    is checked to be complete (``check_nifti_data``; pass ``verify_data=False`` when the caller
    already ran ``validate_nifti``), then SimpleITK reads it. Pixel types int16, uint16, int32,
    uint8, int8, float32 and float64 are returned unchanged; uint32, int64 and uint64 are cast to
    float32.

    The file name does not matter: a gzip file is read as .nii.gz and anything else as .nii
    (through a symbolic link with the right suffix when the name disagrees).

    Returns:
        a 3D single-component ``sitk.Image`` with the file's geometry (LPS, x/y/z order).

    Raises:
        InputError (or a subclass): the file is not a readable 3D scalar NIfTI image.
    """
    name = _name(path, display_name)
    if verify_data:
        header = validate_nifti(path, max_voxels, display_name=display_name, max_image_bytes=max_image_bytes)
    else:
        header = read_nifti_header(
            path, max_voxels, display_name=display_name, max_image_bytes=max_image_bytes
        )
        _check_readable(header, name)

    with _readable_name(path, header) as read_path:
        try:
            image = sitk.ReadImage(str(read_path), imageIO="NiftiImageIO")
        except RuntimeError as e:
            detail = _itk_error_detail(e, (read_path, path), name)
            raise InputError(f"{name}: cannot read the NIfTI image ({detail})") from None
    if image.GetDimension() == 3:
        _check_plausible(header.dims_xyz, image.GetSpacing(), name)

    if image.GetDimension() != 3:
        raise InputError(
            f"{name}: expected a 3D image, got {image.GetDimension()}D of size {image.GetSize()}"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{name}: expected a scalar image, "
            f"got {image.GetNumberOfComponentsPerPixel()} components per voxel"
        )
    pixel_id = image.GetPixelID()
    if pixel_id in _ACCEPTED_PIXEL_IDS:
        return image
    if pixel_id in _CAST_TO_FLOAT32_PIXEL_IDS:
        logger.info("%s: casting %s voxels to float32", name, image.GetPixelIDTypeAsString())
        return sitk.Cast(image, sitk.sitkFloat32)
    raise InputError(f"{name}: unsupported voxel type {image.GetPixelIDTypeAsString()}")


@contextlib.contextmanager
def _readable_name(path: Path, header: NiftiHeader) -> Iterator[Path]:
    """``path``, or a temporary symbolic link to it whose name ends as SimpleITK expects: it picks
    the reader and the decompression from the file name, and uploads have arbitrary names."""
    suffix = ".nii.gz" if header.compressed else ".nii"
    if path.name.endswith(suffix) and not (suffix == ".nii" and path.name.endswith(".nii.gz")):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="flare-seg-read-") as link_dir:
        link = Path(link_dir) / f"image{suffix}"
        link.symlink_to(path.resolve())
        yield link


def _nifti_suffix(path: Path) -> str:
    if path.name.endswith(".nii.gz"):
        return ".nii.gz"
    if path.name.endswith(".nii"):
        return ".nii"
    raise ValueError(f"{path}: output file name must end in .nii.gz or .nii")


def write_mask_atomic(
    mask: sitk.Image | np.ndarray,
    path: Path,
    like: NiftiHeader | None = None,
    *,
    geometry: Geometry | None = None,
) -> None:
    """Write ``mask`` to ``path`` (.nii.gz compressed, or .nii) atomically.

    ``mask`` is a uint8 ``sitk.Image``, or a uint8 array indexed (z, y, x) on ``like``'s grid, or
    without ``like`` on ``geometry`` (an array carries no geometry of its own: one of the two is
    required; ``like`` wins when both are given).

    With ``like`` (the header of the NIfTI file the mask was computed from), the mask file carries
    that header's geometry fields byte for byte (see ``mask_nifti_header``), so every reader sees
    exactly the input's grid. Without it SimpleITK writes the mask from its in-memory geometry,
    which NIfTI stores as float32 (an oblique direction may then read back ~1e-8 off).

    The image is written to a hidden temporary file in the same folder, flushed to disk, then
    renamed over ``path`` with ``os.replace``: readers see either the old file or the complete new
    one, never a partial file. The temporary file is removed on any failure.
    """
    suffix = _nifti_suffix(path)
    if like is None:
        mask = _as_mask_image(mask, geometry)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if like is None:
            assert isinstance(mask, sitk.Image)
            sitk.WriteImage(mask, str(tmp), useCompression=suffix == ".nii.gz")
        else:
            with open(tmp, "wb") as f:
                for chunk in _mask_nifti_chunks(mask, like, compress=suffix == ".nii.gz"):
                    f.write(chunk)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are for other users and containers too
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def image_to_nifti_bytes(
    mask: sitk.Image | np.ndarray, like: NiftiHeader | None = None, *, geometry: Geometry | None = None
) -> bytes:
    """The gzip-compressed NIfTI (.nii.gz) encoding of ``mask``, e.g. for an HTTP response body;
    ``mask``, ``like`` and ``geometry`` as in ``write_mask_atomic``."""
    if like is not None:
        return b"".join(_mask_nifti_chunks(mask, like, compress=True))
    mask = _as_mask_image(mask, geometry)
    with tempfile.TemporaryDirectory(prefix="flare-seg-encode-") as tmp:
        out = Path(tmp) / "mask.nii.gz"
        sitk.WriteImage(mask, str(out), useCompression=True)
        return out.read_bytes()


def _as_mask_image(mask: sitk.Image | np.ndarray, geometry: Geometry | None) -> sitk.Image:
    """The image SimpleITK writes when there is no source header: ``mask`` itself, or the (z, y, x)
    array on ``geometry``."""
    if isinstance(mask, sitk.Image):
        return mask
    if geometry is None:
        raise ValueError("a mask given as an array needs its grid: the source header (like=) or geometry=")
    return image_from_array_zyx(mask, geometry)


_MASK_DESCRIP = ("flare-seg labels: " + ", ".join(f"{k} {name}" for k, name in ORGANS.items())).encode()[:80]
_MASK_WRITE_CHUNK_BYTES = 16 << 20


def mask_nifti_header(like: NiftiHeader, max_label: int = max(ORGANS)) -> bytes:
    """A NIfTI header (plus the 4-byte extension flag) for a uint8 label mask on ``like``'s grid.

    Everything that places the grid in space is copied from ``like`` unchanged: the dimensions,
    ``pixdim`` (spacings and qfac), ``xyzt_units``, ``dim_info``, the qform and sform codes,
    quaternion, offsets and affine rows, and the byte order. Only what describes the voxel values
    changes (uint8, no scaling, display range 0..max_label, no intent, no slice timing, no
    extensions), so a mask read back by any NIfTI reader has exactly the input's geometry.
    """
    if not like.raw:
        raise ValueError("the template NiftiHeader carries no header bytes")
    e = like.byteorder
    h = bytearray(like.raw)
    descrip = _MASK_DESCRIP.ljust(80, b"\0")
    if like.version == 1:
        dim = list(struct.unpack_from(e + "8h", h, 40))
        struct.pack_into(e + "8h", h, 40, 3, *dim[1:4], 1, 1, 1, 1)
        struct.pack_into(e + "3fhhhh", h, 56, 0.0, 0.0, 0.0, 0, 2, 8, 0)  # intent, uint8, 8 bits, slice_start
        struct.pack_into(e + "fffhb", h, 108, float(_NIFTI1_HEADER_BYTES + 4), 1.0, 0.0, 0, 0)
        struct.pack_into(e + "ffffii", h, 124, float(max_label), 0.0, 0.0, 0.0, 0, 0)  # cal, timing, gl
        h[148:228] = descrip
        h[228:252] = bytes(24)  # aux_file
        h[328:344] = bytes(16)  # intent_name
    else:
        dim = list(struct.unpack_from(e + "8q", h, 16))
        struct.pack_into(e + "hh", h, 12, 2, 8)  # uint8, 8 bits
        struct.pack_into(e + "8q", h, 16, 3, *dim[1:4], 1, 1, 1, 1)
        struct.pack_into(e + "3d", h, 80, 0.0, 0.0, 0.0)
        struct.pack_into(e + "q", h, 168, _NIFTI2_HEADER_BYTES + 4)
        struct.pack_into(e + "6d2q", h, 176, 1.0, 0.0, float(max_label), 0.0, 0.0, 0.0, 0, 0)
        h[240:320] = descrip
        h[320:344] = bytes(24)  # aux_file
        struct.pack_into(e + "i", h, 496, 0)  # slice_code (xyzt_units at 500 is kept)
        struct.pack_into(e + "i", h, 504, 0)  # intent_code
        h[508:524] = bytes(16)  # intent_name
    return bytes(h) + bytes(4)


def _mask_nifti_chunks(
    mask: sitk.Image | np.ndarray, like: NiftiHeader, *, compress: bool
) -> Iterator[bytes]:
    """The NIfTI file of a uint8 ``mask`` on ``like``'s grid, in pieces (gzip when ``compress``)."""
    if isinstance(mask, sitk.Image):
        if mask.GetPixelID() != sitk.sitkUInt8 or mask.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError(f"expected a uint8 label mask, got {mask.GetPixelIDTypeAsString()}")
        size_xyz = tuple(mask.GetSize())
        array = sitk.GetArrayViewFromImage(mask)
    else:
        if mask.dtype != np.uint8 or mask.ndim != 3:
            raise ValueError(f"expected a 3D uint8 label array, got {mask.ndim}D {mask.dtype}")
        size_xyz, array = tuple(mask.shape[::-1]), mask
    if size_xyz != like.dims_xyz:
        raise ValueError(f"mask size {size_xyz} does not match the template header's {like.dims_xyz}")
    voxels = np.ascontiguousarray(array).reshape(-1)  # (z, y, x) C order = NIfTI's x-fastest order
    pieces = itertools.chain(
        [mask_nifti_header(like)],
        (
            voxels[i : i + _MASK_WRITE_CHUNK_BYTES].tobytes()
            for i in range(0, voxels.size, _MASK_WRITE_CHUNK_BYTES)
        ),
    )
    if not compress:
        yield from pieces
        return
    deflater = _deflate_lib.compressobj(_DEFLATE_LEVEL, zlib.DEFLATED, 31)  # gzip wrapper and CRC
    for piece in pieces:
        out = deflater.compress(piece)
        if out:
            yield out
    yield deflater.flush()


# ----------------------------------------------------------------------------- single-pass volume reading

_SITK_PIXEL_ID_OF: dict[str, int] = {
    "uint8": sitk.sitkUInt8,
    "int8": sitk.sitkInt8,
    "int16": sitk.sitkInt16,
    "uint16": sitk.sitkUInt16,
    "int32": sitk.sitkInt32,
    "float32": sitk.sitkFloat32,
    "float64": sitk.sitkFloat64,
}


@dataclass
class CtVolume:
    """A CT as the pipeline consumes it: voxels indexed (z, y, x) in the file's own layout, and the
    grid's geometry (SimpleITK's x, y, z order, LPS). Either field may be used without the other."""

    array_zyx: np.ndarray
    geometry: Geometry
    header: NiftiHeader | None = None  # the file's NIfTI header: masks written ``like`` it
    # Work done on the voxels while they were being read (see ``VoxelSink``), by name.
    prepared: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_image(cls, image: sitk.Image, header: NiftiHeader | None = None) -> CtVolume:
        return cls(sitk.GetArrayFromImage(image), Geometry.of(image), header)

    def to_image(self) -> sitk.Image:
        """The voxels as a SimpleITK image (a copy) on the volume's grid."""
        return image_from_array_zyx(self.array_zyx, self.geometry)


class VoxelSink(Protocol):
    """Sees a .nii.gz's voxels while ``read_ct_volume`` decompresses them, e.g. to start work on
    the first slices before the last are read. Called on the reading thread: return quickly."""

    def begin(self, geometry: Geometry, array_zyx: np.ndarray) -> None:
        """The array (file layout, native byte order) the voxels are being decompressed into."""

    def filled(self, slices: int) -> None:
        """``array_zyx[:slices]`` now holds its final values."""


def read_ct_volume(
    path: Path,
    max_voxels: int,
    *,
    display_name: str | None = None,
    sink: VoxelSink | None = None,
    max_image_bytes: int | None = None,
    as_int16: bool = False,
) -> CtVolume:
    """Read a 3D CT for segmentation, with the same validation and errors as ``read_ct``.

    The header is checked first (``read_nifti_header``); SimpleITK reads the geometry from the header
    alone; the voxels are then decompressed once into their final array while the stream's CRC and
    length are verified (a truncated or corrupt file is an ``InputError``). Files SimpleITK would
    convert on reading (scaled intensities, wide integer types) or that need its full reader
    (NIfTI-2) go through ``read_ct`` instead.

    ``as_int16=True`` (the pipeline's input): the voxels are converted to int16 HU while they are
    decompressed (``inflate.hu_int16``: floats rounded, values clamped, NaN as air), so that the
    volume takes 2 bytes a voxel whatever the file's type and a wider array (e.g. float64) is
    never held. Otherwise they keep the file's type, in native byte order.

    ``sink`` is told about the slices as they are decompressed (gzip files only; otherwise it is
    never called). Whatever it computes is only valid if this call returns.
    """
    name = _name(path, display_name)
    header = read_nifti_header(path, max_voxels, display_name=display_name, max_image_bytes=max_image_bytes)
    _check_readable(header, name)
    geometry = _header_geometry(path, header, name) if header.version == 1 else None
    if geometry is None or header.datatype not in _SITK_PIXEL_ID_OF:
        image = read_ct(path, max_voxels, display_name=display_name, max_image_bytes=max_image_bytes)
        volume = CtVolume.from_image(image, header)
        del image
        if as_int16:
            volume.array_zyx = int16_volume(volume.array_zyx)
        return volume
    _check_plausible(header.dims_xyz, geometry.spacing_mm_xyz, name)
    source = np.dtype(header.datatype).newbyteorder(header.byteorder)
    target = np.dtype(np.int16) if as_int16 else source.newbyteorder("=")
    nx, ny, nz = header.dims_xyz
    if header.compressed:
        flat = _inflate_voxels(path, header, source, target, name, sink=sink, geometry=geometry)
    else:
        check_nifti_data(path, header, display_name=display_name)
        flat = _read_raw_voxels(path, header, source, target)
    return CtVolume(flat.reshape(nz, ny, nx), geometry, header)


def _header_geometry(path: Path, header: NiftiHeader, name: str) -> Geometry | None:
    """The grid as SimpleITK reads it from the header, or None when SimpleITK would not return the
    file's voxels unchanged (then the caller uses the full reader)."""
    reader, detail = _sitk_header_reader(path, header, name)
    if detail is not None:
        return None  # the full reader reports the problem with its own message
    if (
        reader.GetDimension() != 3
        or reader.GetNumberOfComponents() != 1
        or tuple(reader.GetSize()) != header.dims_xyz
        or reader.GetPixelID() != _SITK_PIXEL_ID_OF.get(header.datatype)
    ):
        return None
    return Geometry(
        tuple(int(v) for v in reader.GetSize()),  # type: ignore[arg-type]
        tuple(float(v) for v in reader.GetSpacing()),  # type: ignore[arg-type]
        tuple(float(v) for v in reader.GetOrigin()),  # type: ignore[arg-type]
        tuple(float(v) for v in reader.GetDirection()),
    )


def _inflate_voxels(
    path: Path,
    header: NiftiHeader,
    source: np.dtype,
    target: np.dtype,
    name: str,
    *,
    sink: VoxelSink | None = None,
    geometry: Geometry | None = None,
) -> np.ndarray:
    """Decompress a .nii.gz's voxel data (of ``source`` dtype) into a new flat array of ``target``
    dtype, piece by piece (``inflate.gzip_pieces``: every member, length and CRC verified)."""
    out = np.empty(header.voxel_count, dtype=target)
    filler = VoxelFiller(out, source)
    nx, ny, nz = header.dims_xyz
    slice_voxels, slices_told = max(1, nx * ny), 0
    if sink is not None and geometry is not None:
        sink.begin(geometry, out.reshape(nz, ny, nx))
    else:
        sink = None
    skip, total, needed = header.data_offset, 0, header.data_offset + header.nbytes
    try:
        with open(path, "rb") as f:
            for piece in gzip_pieces(f):
                total += len(piece)
                if skip:
                    cut = min(skip, len(piece))
                    piece, skip = piece[cut:], skip - cut
                if piece and not filler.full:
                    filler.write(piece)
                    if sink is not None and filler.voxels // slice_voxels > slices_told:
                        slices_told = filler.voxels // slice_voxels
                        sink.filled(slices_told)
                if total > needed + _TRAILING_SLACK_BYTES:
                    logger.warning(
                        "%s: more decompressed data than the header describes; ignoring the rest", name
                    )
                    break
    except GzipStreamError as e:
        raise _gzip_input_error(name, e, needed) from None
    if not filler.full:
        raise InputError(
            f"{name}: truncated data: {filler.voxels * source.itemsize} of the {header.nbytes} voxel bytes "
            f"its header describes ({header.dims_xyz} {header.datatype} voxels)"
        )
    return out


def _read_raw_voxels(path: Path, header: NiftiHeader, source: np.dtype, target: np.dtype) -> np.ndarray:
    """The voxel data of an uncompressed .nii (complete: checked before) as a flat ``target`` array,
    read ``_RAW_PIECE_BYTES`` at a time (a wider ``source`` is never held whole)."""
    out = np.empty(header.voxel_count, dtype=target)
    filler = VoxelFiller(out, source)
    with open(path, "rb") as f:
        f.seek(header.data_offset)
        while not filler.full:
            piece = f.read(_RAW_PIECE_BYTES)
            if not piece:
                break
            filler.write(piece)
    return out

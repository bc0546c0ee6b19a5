"""Safe extraction of a .zip of DICOM files into a private temporary folder.

Every member name is checked before anything is written: absolute paths, drive letters, ``..``
components, symbolic links and encrypted members refuse the whole archive, and so does an archive
that would unpack to more than the given number of bytes (a zip bomb). Each file is written below
the private folder only (checked again on the resolved path), and the folder is removed when the
``with`` block ends, whatever happens in it.
"""

from __future__ import annotations

import contextlib
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from flare_seg.service.io import InputError, InputTooLargeError, UnsupportedFormatError

_COPY_CHUNK_BYTES = 1 << 20


def is_zip(path: Path) -> bool:
    """True when ``path`` is a file that starts like a zip archive (whatever its name)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) in (b"PK\x03\x04", b"PK\x05\x06")
    except OSError:
        return False


def _unsafe(name: str) -> str | None:
    """Why member ``name`` may not be extracted, or None."""
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        return "an absolute path"
    if any(part == ".." for part in PurePosixPath(unified).parts):
        return "a '..' path component"
    if "\0" in unified:
        return "a NUL character"
    return None


def check_members(archive: zipfile.ZipFile, max_bytes: int, name: str) -> list[zipfile.ZipInfo]:
    """The file members to extract, after checking every member; raises ``InputError`` otherwise."""
    files = []
    total = 0
    for info in archive.infolist():
        why = _unsafe(info.filename)
        if why is not None:
            raise InputError(f"{name}: member {info.filename!r} has {why}; refusing the archive")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InputError(f"{name}: member {info.filename!r} is a symbolic link; refusing the archive")
        if info.flag_bits & 0x1:
            raise InputError(f"{name}: member {info.filename!r} is encrypted")
        if info.is_dir():
            continue
        total += info.file_size
        if total > max_bytes:
            raise InputTooLargeError(f"{name}: the archive unpacks to more than {max_bytes} bytes")
        files.append(info)
    if not files:
        raise InputError(f"{name}: the archive holds no files")
    return files


def check_zip(path: Path, max_bytes: int, *, display_name: str | None = None) -> None:
    """All of ``extracted_zip``'s checks on member names and sizes, without extracting anything."""
    name = display_name or path.name
    try:
        with zipfile.ZipFile(path) as archive:
            check_members(archive, max_bytes, name)
    except (zipfile.BadZipFile, OSError) as e:
        raise UnsupportedFormatError(f"{name}: not a readable zip archive ({e})") from None


@contextlib.contextmanager
def extracted_zip(path: Path, max_bytes: int, *, display_name: str | None = None) -> Iterator[Path]:
    """Extract ``path`` into a new private folder (mode 0700) and yield it; removed afterwards."""
    name = display_name or path.name
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise UnsupportedFormatError(f"{name}: not a readable zip archive ({e})") from None
    root = Path(tempfile.mkdtemp(prefix="flare-seg-zip-"))
    try:
        with archive:
            for info in check_members(archive, max_bytes, name):
                _extract(archive, info, root, max_bytes, name)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _extract(archive: zipfile.ZipFile, info: zipfile.ZipInfo, root: Path, max_bytes: int, name: str) -> None:
    target = (root / info.filename.replace("\\", "/")).resolve()
    if not target.is_relative_to(root.resolve()):
        raise InputError(f"{name}: member {info.filename!r} points outside the archive; refusing it")
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with archive.open(info) as src, open(target, "xb") as dst:
            while chunk := src.read(_COPY_CHUNK_BYTES):
                written += len(chunk)
                if written > info.file_size or written > max_bytes:
                    raise InputTooLargeError(
                        f"{name}: member {info.filename!r} unpacks to more than it declares"
                    )
                dst.write(chunk)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        zlib.error,
        EOFError,
        OSError,
        NotImplementedError,
    ) as e:
        raise InputError(f"{name}: cannot extract {info.filename!r} ({e})") from None

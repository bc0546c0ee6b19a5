"""Disk problems of the work folder: recognising them, naming them, and testing for them at start.

A full disk or a read-only folder is not a bug of the server nor a fault of the client's file:
the server answers 507 Insufficient Storage with a message that says which it is, and refuses to
start (one line, exit 2) when its work folder cannot be written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_READ_ONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
_DISK_ERRNOS = _FULL_ERRNOS | _READ_ONLY_ERRNOS | {errno.EIO}
WRITE_TEST_BYTES = 64 * 1024


class StorageError(OSError):
    """The work folder cannot take a write: full, read-only or failing. ``str()`` names the problem
    (never a client's file); the server answers ``status_code``."""

    status_code = 507


def is_disk_problem(error: BaseException) -> bool:
    """Whether ``error`` is an OSError about the disk itself (full, quota, read-only, I/O error)."""
    return isinstance(error, StorageError) or (isinstance(error, OSError) and error.errno in _DISK_ERRNOS)


def describe_disk_problem(error: OSError, what: str = "the work folder") -> str:
    """One sentence naming the disk problem behind ``error``, e.g. 'no space left on the device of
    the work folder'. ``what`` names the place (never a server path shown to clients)."""
    if isinstance(error, StorageError):
        return str(error)
    if error.errno in _FULL_ERRNOS:
        return f"no space left on the device of {what}; free space or retry later"
    if error.errno == errno.EROFS:
        return f"{what} is on a read-only file system"
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"{what} is not writable (permission denied)"
    if error.errno == errno.EIO:
        return f"the disk of {what} reports an I/O error"
    return f"cannot write to {what} ({error.strerror or error})"


def storage_error(error: OSError, what: str = "the work folder") -> StorageError:
    """``error`` as a StorageError with ``describe_disk_problem``'s message (errno kept)."""
    if isinstance(error, StorageError):
        return error
    return StorageError(error.errno or errno.EIO, describe_disk_problem(error, what))


def check_writable(folder: Path, nbytes: int = WRITE_TEST_BYTES) -> None:
    """A real write test: create ``folder`` if needed, write ``nbytes`` into a new file there,
    flush it to the disk (fsync), read it back and delete it.

    ``os.access`` is not enough: it says nothing about a full disk, a read-only mount seen by root,
    or a quota. Raises StorageError (naming ``folder``) when any step fails.
    """
    folder = Path(folder)
    probe = folder / f".write-test-{uuid.uuid4().hex}"
    payload = os.urandom(min(nbytes, 256)) * (nbytes // min(nbytes, 256) or 1)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if probe.read_bytes() != payload:
            raise StorageError(errno.EIO, f"{folder}: a file written there reads back differently")
    except StorageError:
        raise
    except OSError as e:
        raise StorageError(e.errno or errno.EIO, describe_disk_problem(e, str(folder))) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)

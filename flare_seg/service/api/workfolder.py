"""The server's work folder: uploads, results and the job records, kept across restarts.

Layout: ``uploads/`` (uploads being received, and job inputs waiting to run), ``results/`` (job
masks), ``jobs.sqlite3`` (the job records) and ``server.lock``, which one server process holds
while it runs: two processes on one folder would each take the other's running jobs for
interrupted ones and delete the other's uploads as leftovers.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from flare_seg.service.storage import StorageError, check_writable, storage_error

logger = logging.getLogger(__name__)

LOCK_FILE_NAME = "server.lock"


class WorkFolderInUse(RuntimeError):
    """Another server process holds the work folder."""


@dataclass
class WorkFolder:
    """An opened work folder, locked for this process until ``close``."""

    root: Path
    _lock: IO[str] | None = None

    @property
    def uploads_dir(self) -> Path:
        return self.root / "uploads"

    @property
    def results_dir(self) -> Path:
        return self.root / "results"

    @classmethod
    def open(cls, root: Path) -> WorkFolder:
        """Create the folders, take the lock and make a real write test.

        Raises:
            StorageError: the folder cannot be written (full, read-only, not permitted).
            WorkFolderInUse: another server process holds it.
        """
        check_writable(root)
        folder = cls(Path(root))
        try:
            folder.uploads_dir.mkdir(exist_ok=True)
            folder.results_dir.mkdir(exist_ok=True)
            lock = open(folder.root / LOCK_FILE_NAME, "a+")  # noqa: SIM115 - held until close()
        except OSError as e:
            raise storage_error(e, str(root)) from None
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            lock.close()
            raise WorkFolderInUse(
                f"work folder {root} is in use by another flare-seg server (pid {holder}); "
                f"give each server process a folder of its own"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        folder._lock = lock
        return folder

    def remove_leftovers(self, known: set[Path]) -> int:
        """Delete files in ``uploads/`` and ``results/`` that no job record names (uploads cut off
        by a crash, results of deleted records); returns how many."""
        removed = 0
        for folder in (self.uploads_dir, self.results_dir):
            for path in folder.iterdir():
                if path.is_file() and path not in known:
                    with contextlib.suppress(OSError):
                        path.unlink()
                        removed += 1
        if removed:
            logger.info("removed %d leftover file(s) from the work folder", removed)
        return removed

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # releases the lock
            self._lock = None


def check_work_folder(root: Path) -> None:
    """What ``serve`` checks before it binds the port: the folder takes a real write and no other
    server holds it.

    Raises:
        StorageError, WorkFolderInUse: see ``WorkFolder.open``.
    """
    WorkFolder.open(root).close()


__all__ = ["LOCK_FILE_NAME", "StorageError", "WorkFolder", "WorkFolderInUse", "check_work_folder"]

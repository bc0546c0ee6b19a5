"""Small file systems for disk-problem tests: a tiny tmpfs (to fill up) or a read-only one.

Mounting needs root and a kernel that lets this process mount (a container may not); otherwise the
test is skipped and says why. Running as root also means a chmod'ed folder is still writable, so a
read-only *mount* is the only faithful read-only folder here.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _mount(args: list[str]) -> str | None:
    """None on success, else why it failed."""
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return None if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")


@contextmanager
def small_tmpfs(mount_point: Path, size_kib: int, *, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of ``size_kib`` KiB at ``mount_point`` (created), read-only when asked; unmounted
    at the end. Skips the test when it cannot be mounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (a chmod'ed folder is no test of a full disk)")
    mount_point.mkdir(parents=True, exist_ok=True)
    error = _mount(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0777", "tmpfs", str(mount_point)])
    if error is not None:
        pytest.skip(f"cannot mount a tmpfs here: {error}")
    try:
        if read_only:
            error = _mount(["mount", "-o", "remount,ro", str(mount_point)])
            if error is not None:
                pytest.skip(f"cannot remount the tmpfs read-only: {error}")
        yield mount_point
    finally:
        _mount(["umount", "-l", str(mount_point)])


def fill(folder: Path, leave_bytes: int = 0) -> None:
    """Write into ``folder`` until the file system has at most ``leave_bytes`` free."""
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    with open(folder / "filler.bin", "wb") as f:
        try:
            while free > leave_bytes:
                f.write(b"\0" * min(1 << 20, max(4096, free - leave_bytes)))
                f.flush()
                stat = os.statvfs(folder)
                free = stat.f_bavail * stat.f_frsize
        except OSError:
            pass

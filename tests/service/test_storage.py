"""Tests for flare_seg.service.storage: naming disk problems and the start-up write test."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from flare_seg.service.storage import (
    StorageError,
    check_writable,
    describe_disk_problem,
    is_disk_problem,
)
from tests.service.diskfs import fill, small_tmpfs


def test_write_test_passes_and_leaves_nothing(tmp_path: Path) -> None:
    check_writable(tmp_path / "new" / "work")
    assert list((tmp_path / "new" / "work").iterdir()) == []


def test_write_test_on_a_read_only_folder(tmp_path: Path) -> None:
    with (
        small_tmpfs(tmp_path / "ro", 1024, read_only=True) as folder,
        pytest.raises(StorageError, match="read-only file system") as caught,
    ):
        check_writable(folder)
    assert caught.value.errno == errno.EROFS
    assert str(folder) in str(caught.value)


def test_write_test_on_a_full_disk(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "full", 512) as folder:
        fill(folder, leave_bytes=0)
        with pytest.raises(StorageError, match="no space left"):
            check_writable(folder)


def test_write_test_below_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError):
        check_writable(tmp_path / "file" / "work")


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, "no space left"),
        (errno.EDQUOT, "no space left"),
        (errno.EROFS, "read-only"),
        (errno.EACCES, "not writable"),
        (errno.EIO, "I/O error"),
    ],
)
def test_describe(code: int, words: str) -> None:
    error = OSError(code, "x")
    assert is_disk_problem(error)
    assert words in describe_disk_problem(error)


def test_other_errors_are_not_disk_problems() -> None:
    assert not is_disk_problem(OSError(errno.ENOENT, "no such file"))
    assert not is_disk_problem(ValueError("x"))

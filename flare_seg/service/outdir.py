"""The batch output folder: never one that would overwrite an input, and a one-line reason when a
folder cannot be used.

``prepare_output_folder`` runs before any case is read: it refuses an output folder that is the
input folder, or any output file that would be one of the inputs (a ``<case>.nii.gz`` mask named
like another case's CT, a symbolic link into the inputs); it creates the folder and writes a test
file there, so that a path that is a file, a read-only parent or a full disk is one
``OutputFolderError`` (a ValueError: the CLI prints it as one line and exits 2) instead of a
traceback after the first case.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path

from flare_seg.service.storage import StorageError, check_writable, describe_disk_problem


class OutputFolderError(ValueError):
    """The output folder cannot be used; the message says why, in one line."""


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def check_no_input_overwritten(
    input_dirs: Iterable[Path], output_dir: Path, inputs: Iterable[Path], outputs: Iterable[Path]
) -> None:
    """Refuse ``output_dir`` when it is one of ``input_dirs``, or when an output path is one of
    ``inputs``.

    Raises:
        OutputFolderError: naming the folder or the input that would be overwritten.
    """
    for input_dir in input_dirs:
        if _same_file(output_dir, Path(input_dir)):
            raise OutputFolderError(
                f"output folder {output_dir} is the input folder; choose another folder so that no "
                f"input is overwritten"
            )
    input_list = [Path(p) for p in inputs]
    resolved = {p.resolve(): p for p in input_list}
    for output in outputs:
        clash = resolved.get(output.resolve())
        if clash is None and output.exists():
            clash = next((p for p in input_list if _same_file(output, p)), None)
        if clash is not None:
            raise OutputFolderError(
                f"output {output} would overwrite the input {clash}; choose another output folder"
            )


def prepare_output_folder(
    input_dirs: Iterable[Path], output_dir: Path, inputs: Iterable[Path], output_names: Iterable[str]
) -> None:
    """Check that no output overwrites an input, create ``output_dir`` and test that it takes a write.

    ``input_dirs``: the folders the inputs were taken from (none for a single file given as input).

    Raises:
        OutputFolderError: the folder is an input folder, an output would overwrite an input, the
            path is a file (or under one), its parent is read-only or not permitted, or the disk is full.
    """
    output_dir = Path(output_dir)
    check_no_input_overwritten(input_dirs, output_dir, inputs, [output_dir / name for name in output_names])
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputFolderError(f"output path {output_dir} is a file, not a folder")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputFolderError(
            f"cannot create the output folder {output_dir}: a part of its path is a file"
        ) from None
    except OSError as e:
        reason = (
            "permission denied"
            if e.errno in (errno.EACCES, errno.EPERM)
            else describe_disk_problem(e, "its parent")
        )
        raise OutputFolderError(f"cannot create the output folder {output_dir}: {reason}") from None
    try:
        check_writable(output_dir)
    except StorageError as e:
        reason = describe_disk_problem(OSError(e.errno, str(e)), "the folder")
        raise OutputFolderError(f"output folder {output_dir} cannot be written: {reason}") from None

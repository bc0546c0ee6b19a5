"""Tests for flare_seg.service.outdir: the batch never writes over an input; folder errors in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from flare_seg.service.outdir import OutputFolderError, prepare_output_folder
from tests.service.diskfs import fill, small_tmpfs

SUMMARIES = ["summary.json", "summary.csv"]


def _inputs(folder: Path, *names: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in names]
    for path in paths:
        path.write_bytes(b"ct")
    return paths


def test_output_folder_equal_to_the_input_folder_is_refused(tmp_path: Path) -> None:
    """The reproducer: a_0000.nii.gz and a_0000_0000.nii.gz in one folder; the mask of case a_0000
    would be written over the CT a_0000.nii.gz."""
    inputs = _inputs(tmp_path / "in", "a_0000.nii.gz", "a_0000_0000.nii.gz")
    for out in (tmp_path / "in", tmp_path / "in" / ".", tmp_path / "other" / ".." / "in"):
        with pytest.raises(OutputFolderError, match="is the input folder"):
            prepare_output_folder([tmp_path / "in"], out, inputs, ["a_0000.nii.gz", "a.nii.gz", *SUMMARIES])
    assert all(p.read_bytes() == b"ct" for p in inputs)


def test_an_output_that_is_an_input_is_refused(tmp_path: Path) -> None:
    inputs = _inputs(tmp_path / "in", "b_0000.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.nii.gz").symlink_to(inputs[0])  # a link into the inputs
    with pytest.raises(OutputFolderError, match=r"would overwrite the input .*b_0000\.nii\.gz"):
        prepare_output_folder([tmp_path / "in"], out, inputs, ["b.nii.gz", *SUMMARIES])


def test_a_usable_folder_is_created(tmp_path: Path) -> None:
    inputs = _inputs(tmp_path / "in", "c_0000.nii.gz")
    prepare_output_folder([tmp_path / "in"], tmp_path / "new" / "out", inputs, ["c.nii.gz", *SUMMARIES])
    assert (tmp_path / "new" / "out").is_dir() and not list((tmp_path / "new" / "out").iterdir())


def test_an_output_path_that_is_a_file(tmp_path: Path) -> None:
    inputs = _inputs(tmp_path / "in", "c_0000.nii.gz")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputFolderError, match="is a file, not a folder"):
        prepare_output_folder([tmp_path / "in"], tmp_path / "file", inputs, ["c.nii.gz"])
    with pytest.raises(OutputFolderError, match="a part of its path is a file"):
        prepare_output_folder([tmp_path / "in"], tmp_path / "file" / "out", inputs, ["c.nii.gz"])


def test_a_folder_under_a_read_only_parent(tmp_path: Path) -> None:
    inputs = _inputs(tmp_path / "in", "c_0000.nii.gz")
    with small_tmpfs(tmp_path / "ro", 256, read_only=True) as parent:
        with pytest.raises(OutputFolderError, match="its parent is on a read-only file system") as caught:
            prepare_output_folder([tmp_path / "in"], parent / "out", inputs, ["c.nii.gz"])
        with pytest.raises(OutputFolderError, match="cannot be written: the folder is on a read-only"):
            prepare_output_folder([tmp_path / "in"], parent, inputs, ["c.nii.gz"])
    assert "\n" not in str(caught.value)


def test_a_full_disk(tmp_path: Path) -> None:
    inputs = _inputs(tmp_path / "in", "c_0000.nii.gz")
    with small_tmpfs(tmp_path / "full", 256) as out:
        fill(out)
        with pytest.raises(OutputFolderError, match="no space left"):
            prepare_output_folder([tmp_path / "in"], out, inputs, ["c.nii.gz"])

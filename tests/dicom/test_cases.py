"""What an input path holds: cases by content, not by name; output types."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import SimpleITK as sitk

from flare_seg.service.inputs import (
    DICOM_SEG,
    NIFTI,
    find_cases,
    find_challenge_cases,
    outputs_for,
    parse_output_types,
)
from tests.dicom.conftest import GEOMETRIES, write_case


@pytest.fixture
def mixed_inputs(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    case = write_case(tmp_path / "src", GEOMETRIES["axial"])
    root.mkdir()
    (root / "ct.nii.gz").write_bytes(case.image_nifti.read_bytes())
    (root / "patient7_0000.nii.gz").write_bytes(case.image_nifti.read_bytes())
    sitk.WriteImage(sitk.ReadImage(str(case.image_nifti)), str(root / "plain.nii"))
    (root / "notes.txt").write_text("not an image")
    for sub in ("study1/CT", "study2/CT"):
        (root / sub).mkdir(parents=True)
        for p in case.dicom_dir.iterdir():
            (root / sub / p.name).write_bytes(p.read_bytes())
    with zipfile.ZipFile(root / "upload.zip", "w") as z:
        for p in case.dicom_dir.iterdir():
            z.write(p, f"series/{p.name}")
    return root


def test_find_cases_by_content(mixed_inputs: Path) -> None:
    cases = {c.case: (c.kind, c.display) for c in find_cases(mixed_inputs)}
    assert cases == {
        "ct": ("nifti", "ct.nii.gz"),
        "patient7": ("nifti", "patient7_0000.nii.gz"),
        "plain": ("nifti", "plain.nii"),
        "study1_CT": ("dicom", "study1/CT"),
        "study2_CT": ("dicom", "study2/CT"),
        "upload": ("zip", "upload.zip"),
    }


def test_single_inputs(mixed_inputs: Path) -> None:
    [nifti] = find_cases(mixed_inputs / "ct.nii.gz")
    assert (nifti.case, nifti.kind) == ("ct", "nifti")
    [series] = find_cases(mixed_inputs / "study1" / "CT")
    assert (series.case, series.kind) == ("CT", "dicom")
    [archive] = find_cases(mixed_inputs / "upload.zip")
    assert archive.kind == "zip"


def test_true_error_messages(mixed_inputs: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"input .*missing\.nii\.gz does not exist"):
        find_cases(mixed_inputs / "missing.nii.gz")
    with pytest.raises(ValueError, match=r"notes\.txt is not a NIfTI image, a DICOM series folder"):
        find_cases(mixed_inputs / "notes.txt")
    one_slice = next((mixed_inputs / "study1" / "CT").iterdir())
    with pytest.raises(ValueError, match="is a single DICOM file; give the folder that holds its series"):
        find_cases(one_slice)
    (mixed_inputs / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no NIfTI image, DICOM series or \.zip of DICOM files in"):
        find_cases(mixed_inputs / "empty")


def test_challenge_convention_takes_only_0000_files(mixed_inputs: Path) -> None:
    assert [c.case for c in find_challenge_cases(mixed_inputs)] == ["patient7"]
    with pytest.raises(NotADirectoryError, match="is a file"):
        find_challenge_cases(mixed_inputs / "ct.nii.gz")


def test_output_types(mixed_inputs: Path) -> None:
    assert parse_output_types(None) is None
    assert parse_output_types(["dicom-seg"]) == (DICOM_SEG,)
    assert parse_output_types(["both"]) == (NIFTI, DICOM_SEG)
    assert parse_output_types(["dicom-seg,nifti"]) == (NIFTI, DICOM_SEG)
    assert parse_output_types(["nifti", "dicom-seg"]) == (NIFTI, DICOM_SEG)
    with pytest.raises(ValueError, match="unknown output type 'png'"):
        parse_output_types(["png"])
    cases = {c.case: c for c in find_cases(mixed_inputs)}
    assert outputs_for(cases["ct"], None) == (NIFTI,)
    assert outputs_for(cases["study1_CT"], None) == (DICOM_SEG,)
    assert outputs_for(cases["upload"], (NIFTI, DICOM_SEG)) == (NIFTI, DICOM_SEG)

"""The batch CLI with DICOM input: cases by folder and zip, the series choice reported, one-line
reasons for bad cases while the others finish, no partial output, the SEG equal to the NIfTI mask
of the same case; the dicomweb command against Orthanc; true error messages before model loading."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from flare_seg.cli import main
from flare_seg.dicom.synth import SeriesOptions, write_ct_series
from flare_seg.geometry import Geometry
from tests.conftest import SHIPPED_MODELS
from tests.dicom.conftest import (
    GEOMETRIES,
    Orthanc,
    PhantomCase,
    assert_seg_matches_mask,
    upload_to_orthanc,
    write_case,
)


def _copy_series(case: PhantomCase, dest: Path) -> list[Path]:
    dest.mkdir(parents=True)
    return [Path(shutil.copy(p, dest / p.name)) for p in sorted(case.dicom_dir.iterdir())]


@pytest.fixture
def workspace(tmp_path: Path) -> tuple[Path, PhantomCase]:
    """Good cases (two series folders, a zip, a NIfTI of any name) and bad ones."""
    inputs = tmp_path / "in"
    case = write_case(tmp_path / "a", GEOMETRIES["flipped-rows"])
    sagittal = write_case(tmp_path / "b", GEOMETRIES["sagittal"])
    _copy_series(case, inputs / "seriesA")
    _copy_series(sagittal, inputs / "sag")
    with zipfile.ZipFile(inputs / "zipped.zip", "w") as z:
        for p in sorted(case.dicom_dir.iterdir()):
            z.write(p, f"DICOM/{p.name}")
    shutil.copy(case.image_nifti, inputs / "scan.nii.gz")
    _copy_series(case, inputs / "gap")[5].unlink()
    cut = _copy_series(case, inputs / "cut")[3]
    cut.write_bytes(cut.read_bytes()[:-500])
    (inputs / "report").mkdir()
    sr = pydicom.Dataset()
    sr.SOPClassUID, sr.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.67", generate_uid()
    sr.StudyInstanceUID, sr.SeriesInstanceUID, sr.Modality = generate_uid(), generate_uid(), "SR"
    sr.file_meta = pydicom.dataset.FileMetaDataset()
    sr.file_meta.MediaStorageSOPClassUID, sr.file_meta.MediaStorageSOPInstanceUID = (
        sr.SOPClassUID,
        sr.SOPInstanceUID,
    )
    sr.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    sr.save_as(inputs / "report" / "dose.dcm", enforce_file_format=True)
    with zipfile.ZipFile(inputs / "evil.zip", "w") as z:
        z.writestr("../../outside.dcm", b"x")
    return inputs, case


def test_predict_folder_of_mixed_inputs(tiny_models: Path, tmp_path: Path, workspace, capsys) -> None:
    inputs, _ = workspace
    out = tmp_path / "out"
    assert main(["predict", str(inputs), str(out), "--models-dir", str(tiny_models)]) == 1
    summary = {c["case"]: c for c in json.loads((out / "summary.json").read_text())["cases"]}
    assert {k: v["status"] for k, v in summary.items()} == {
        "seriesA": "ok",
        "sag": "ok",
        "zipped": "ok",
        "scan": "ok",
        "gap": "failed",
        "cut": "failed",
        "report": "failed",
        "evil": "failed",
    }
    assert sorted(p.name for p in out.iterdir()) == [
        "sag.seg.dcm",
        "scan.nii.gz",
        "seriesA.seg.dcm",
        "summary.csv",
        "summary.json",
        "zipped.seg.dcm",
    ]  # DICOM input gives a SEG, NIfTI a NIfTI; nothing for the failed cases, no temporary files
    assert "1 slice(s) missing" in summary["gap"]["error"]
    assert "cannot read the pixel data" in summary["cut"]["error"]
    assert "no CT image series" in summary["report"]["error"]
    assert "refusing the archive" in summary["evil"]["error"]
    assert all("\n" not in c["error"] for c in summary.values() if c["error"])
    assert "axial" not in summary["sag"]["series"] and "sagittal, 14 slices" in summary["sag"]["series"]
    printed = capsys.readouterr().out
    assert "seriesA: ok" in printed and "  series: series 1 'CT phantom'" in printed
    assert "gap: FAILED: gap: 1 slice(s) missing" in printed
    assert not (tmp_path / "outside.dcm").exists() and not (inputs.parent / "outside.dcm").exists()


def test_seg_and_nifti_of_a_series_match_the_mask_of_its_nifti(
    tiny_models: Path, tmp_path: Path, workspace
) -> None:
    """The same case as DICOM (SEG and NIfTI outputs) and as NIfTI gives the same labels at the
    same patient positions, voxel for voxel."""
    inputs, case = workspace
    out = tmp_path / "out"
    args = ["--models-dir", str(tiny_models)]
    assert main(["predict", str(inputs / "seriesA"), str(out), "--output-type", "both", *args]) == 0
    assert main(["predict", str(inputs / "scan.nii.gz"), str(out), *args]) == 0
    nifti_mask = sitk.ReadImage(str(out / "scan.nii.gz"))
    assert Geometry.of(nifti_mask) == Geometry.of(sitk.ReadImage(str(case.image_nifti)))
    assert_seg_matches_mask(out / "seriesA.seg.dcm", nifti_mask)
    dicom_nifti = sitk.ReadImage(str(out / "seriesA.nii.gz"))
    resampled = sitk.Resample(dicom_nifti, nifti_mask, sitk.Transform(), sitk.sitkNearestNeighbor, 255)
    assert np.array_equal(sitk.GetArrayViewFromImage(resampled), sitk.GetArrayViewFromImage(nifti_mask))


def test_uid_warnings_come_only_with_a_seg(tiny_models: Path, tmp_path: Path, workspace) -> None:
    """Images without Study and Series Instance UIDs (as some anonymizers leave them) get derived
    UIDs in a SEG, with a warning; a NIfTI mask of the same series needs no UIDs and says nothing."""
    _, case = workspace
    bare = tmp_path / "bare"
    for path in _copy_series(case, bare):
        ds = pydicom.dcmread(path)
        del ds.StudyInstanceUID, ds.SeriesInstanceUID
        ds.save_as(path)
    args = ["--models-dir", str(tiny_models)]
    warned = {}
    for kind in ("nifti", "dicom-seg"):
        out = tmp_path / kind
        assert main(["predict", str(bare), str(out), "--output-type", kind, *args]) == 0
        (report,) = json.loads((out / "summary.json").read_text())["cases"]
        assert report["status"] == "ok"
        warned[kind] = [w for w in report["warnings"] if "Instance UID" in w]
    assert warned["nifti"] == []
    assert len(warned["dicom-seg"]) == 2 and all("derived" in w for w in warned["dicom-seg"])


def test_input_errors_come_before_the_models_and_say_what_is_wrong(tmp_path: Path, workspace, capsys) -> None:
    inputs, _ = workspace
    no_models = ["--models-dir", str(tmp_path / "no-models")]
    cases = [
        (
            ["predict", str(inputs / "missing"), str(tmp_path / "o")],
            "input " + str(inputs / "missing") + " does not exist",
        ),
        (["predict", str(inputs / "seriesA" / "IM00001.dcm"), str(tmp_path / "o")], "is a single DICOM file"),
        (
            ["predict", str(inputs / "scan.nii.gz"), str(tmp_path / "o"), "--output-type", "dicom-seg"],
            "--output-type dicom-seg needs DICOM input",
        ),
        (
            ["predict", str(inputs / "scan.nii.gz"), str(tmp_path / "o"), "--output-type", "png"],
            "unknown output type",
        ),
        (["predict", str(inputs / "scan.nii.gz"), str(inputs / "scan.nii.gz")], "is a file, not a folder"),
        (["predict", "--challenge-layout", str(inputs / "scan.nii.gz"), str(tmp_path / "o")], "is a file"),
    ]
    for argv, message in cases:
        assert main([*argv, *no_models]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and err.count("\n") == 0, (argv, err)
        assert "manifest" not in err  # the models were never looked at
    assert main(["demo", "--image", str(inputs), *no_models]) == 2
    err = capsys.readouterr().err
    assert "not found" not in err and "holds 8 cases; demo segments one" in err


def test_dicomweb_command_against_orthanc(
    tiny_models: Path, tmp_path: Path, orthanc: Orthanc, capsys
) -> None:
    study = generate_uid()
    case = write_case(tmp_path / "case", GEOMETRIES["coronal"], SeriesOptions(study_uid=study))
    upload_to_orthanc(orthanc, sorted(case.dicom_dir.iterdir()))
    saved = tmp_path / "seg.dcm"
    argv = [
        "dicomweb",
        study,
        "--url",
        orthanc.dicomweb_url,
        "--save",
        str(saved),
        "--models-dir",
        str(tiny_models),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "series: series 1 'CT phantom'" in printed and f"stored in study {study}" in printed
    from flare_seg.dicom.dicomweb import make_client

    client = make_client(orthanc.dicomweb_url)
    [found] = client.search_for_series(study_instance_uid=study, search_filters={"Modality": "SEG"})
    series_uid = pydicom.Dataset.from_json(found).SeriesInstanceUID
    [instance] = client.search_for_instances(study, series_uid)
    sop = pydicom.Dataset.from_json(instance).SOPInstanceUID
    fetched = tmp_path / "fetched.dcm"
    client.retrieve_instance(study, series_uid, sop).save_as(fetched, enforce_file_format=True)
    # the mask of the same case read as NIfTI
    assert (
        main(["predict", str(case.image_nifti), str(tmp_path / "nifti"), "--models-dir", str(tiny_models)])
        == 0
    )
    mask = sitk.ReadImage(str(tmp_path / "nifti" / "case.nii.gz"))
    assert_seg_matches_mask(fetched, mask)
    assert_seg_matches_mask(saved, mask)
    assert (
        main(["dicomweb", "1.2.3.999", "--url", orthanc.dicomweb_url, "--models-dir", str(tiny_models)]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("flare-seg dicomweb: error: study 1.2.3.999") and err.count("\n") == 0


@pytest.mark.slow
@pytest.mark.parametrize("geometry", ["flipped-rows", "sagittal", "left-handed"])
def test_shipped_models_seg_equals_nifti_mask_on_a_phantom(geometry: str, tmp_path: Path) -> None:
    """With the shipped models on a phantom with organs (a non-empty mask): the SEG of the DICOM
    series equals the mask of the same case given as NIfTI, voxel for voxel in patient space."""
    from flare_seg.training.phantom import PhantomOptions, generate_case

    image, _ = generate_case(5, PhantomOptions(size="small", flip_probability=0.0))
    source = Geometry.of(image)
    d = np.asarray(GEOMETRIES[geometry]).reshape(3, 3)
    spacing = tuple(float(s) for s in np.abs(np.linalg.inv(d) @ np.asarray(source.spacing_mm_xyz)))
    size = tuple(int(n) for n in np.abs(np.linalg.inv(d) @ np.asarray(source.size_xyz)).round())
    centre = source.index_to_physical_xyz((np.asarray(source.size_xyz) - 1) / 2)
    origin = centre - d @ ((np.asarray(size) - 1) / 2 * np.asarray(spacing))
    grid = Geometry(size, spacing, tuple(float(v) for v in origin), GEOMETRIES[geometry])  # type: ignore[arg-type]
    reference = sitk.Image(list(size), sitk.sitkInt16)
    grid.apply_to(reference)
    ct = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, -1000.0, sitk.sitkInt16)
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    write_ct_series(sitk.GetArrayFromImage(ct), grid, tmp_path / "series")
    models = ["--models-dir", str(SHIPPED_MODELS)]
    assert main(["predict", str(tmp_path / "ct.nii.gz"), str(tmp_path / "out"), *models]) == 0
    assert main(["predict", str(tmp_path / "series"), str(tmp_path / "out"), *models]) == 0
    mask = sitk.ReadImage(str(tmp_path / "out" / "ct.nii.gz"))
    counts = np.bincount(sitk.GetArrayViewFromImage(mask).ravel(), minlength=5)
    assert (counts[1:] > 100).all(), counts  # every organ found
    assert_seg_matches_mask(tmp_path / "out" / "series.seg.dcm", mask)


def test_dicomweb_command_with_credentials_from_the_environment(
    tiny_models: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """A PACS that asks for HTTP basic authentication: refused in one line without credentials,
    segmented with them (given by the environment, never on the command line)."""
    from tests.dicom.conftest import running_orthanc

    (tmp_path / "orthanc").mkdir()
    with running_orthanc(tmp_path / "orthanc", users={"flare": "s3cret"}) as server:
        study = generate_uid()
        case = write_case(tmp_path / "case", GEOMETRIES["axial"], SeriesOptions(study_uid=study))
        upload_to_orthanc(server, sorted(case.dicom_dir.iterdir()), basic_auth="flare:s3cret")
        argv = ["dicomweb", study, "--url", server.dicomweb_url, "--models-dir", str(tiny_models)]
        monkeypatch.delenv("FLARE_SEG_DICOMWEB_USER", raising=False)
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "HTTP 401" in err and err.count("\n") == 0
        monkeypatch.setenv("FLARE_SEG_DICOMWEB_USER", "flare")
        monkeypatch.setenv("FLARE_SEG_DICOMWEB_PASSWORD", "s3cret")
        assert main(argv) == 0
        assert f"stored in study {study}" in capsys.readouterr().out

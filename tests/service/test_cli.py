"""Batch prediction: challenge naming, per-case failures, summaries, exit codes, predict.sh."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from flare_seg.cli import main
from flare_seg.geometry import Geometry
from tests.conftest import REPO, ct_image, oblique_direction


def _workspace(tmp_path: Path) -> tuple[Path, Path]:
    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    inputs.mkdir()
    sitk.WriteImage(ct_image(), str(inputs / "good1_0000.nii.gz"))
    sitk.WriteImage(
        ct_image(direction=(0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)), str(inputs / "good2_0000.nii.gz")
    )
    sitk.WriteImage(ct_image(direction=oblique_direction(9.0)), str(inputs / "oblique_0000.nii.gz"))
    (inputs / "text_0000.nii.gz").write_text("not an image")
    data = (inputs / "good1_0000.nii.gz").read_bytes()
    (inputs / "truncated_0000.nii.gz").write_bytes(data[: len(data) // 2])
    sitk.WriteImage(sitk.Image([16, 16], sitk.sitkInt16), str(inputs / "flat_0000.nii.gz"))
    (inputs / "empty_0000.nii.gz").write_bytes(b"")
    (inputs / "notes.txt").write_text("ignored")
    (inputs / "good1_0001.nii.gz").write_bytes(gzip.compress(b"second channel, ignored"))
    return inputs, outputs


def test_predict_writes_good_cases_reports_bad_ones_and_exits_1(tiny_models, tmp_path, capsys):
    inputs, outputs = _workspace(tmp_path)
    code = main(
        ["predict", "--challenge-layout", str(inputs), str(outputs), "--models-dir", str(tiny_models)]
    )
    assert code == 1
    assert sorted(p.name for p in outputs.glob("*.nii.gz")) == [
        "good1.nii.gz",
        "good2.nii.gz",
        "oblique.nii.gz",
    ]
    assert not [p for p in outputs.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    for case in ("good1", "good2", "oblique"):  # exactly equal, also for the oblique direction
        mask = sitk.ReadImage(str(outputs / f"{case}.nii.gz"))
        assert Geometry.of(mask) == Geometry.of(sitk.ReadImage(str(inputs / f"{case}_0000.nii.gz")))
    summary = json.loads((outputs / "summary.json").read_text())
    status = {c["case"]: c for c in summary["cases"]}
    assert set(status) == {"good1", "good2", "oblique", "text", "truncated", "flat", "empty"}
    assert status["good1"]["status"] == "ok" and set(status["good1"]["volumes_ml"]) == {
        "liver",
        "kidney",
        "spleen",
        "pancreas",
    }
    for bad in ("text", "truncated", "flat", "empty"):
        assert status[bad]["status"] == "failed" and status[bad]["error"]
    assert "3D" in status["flat"]["error"]
    assert summary["failed"] == 4 and summary["succeeded"] == 3
    assert (outputs / "summary.csv").read_text().count("\n") == 8
    out = capsys.readouterr().out
    assert "good1: ok" in out and "text: FAILED" in out


def test_predict_with_no_inputs_or_bad_models_fails_with_one_line(tiny_models, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    for layout, message in ((["--challenge-layout"], "no <case>_0000.nii.gz"), ([], "no NIfTI image, DICOM")):
        args = [
            "predict",
            *layout,
            str(tmp_path / "in"),
            str(tmp_path / "out"),
            "--models-dir",
            str(tiny_models),
        ]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err
    sitk.WriteImage(ct_image(), str(tmp_path / "in" / "a_0000.nii.gz"))
    assert main(["predict", str(tmp_path / "in"), str(tmp_path / "out"), "--models-dir", str(tmp_path)]) == 2
    assert "manifest.json" in capsys.readouterr().err


def test_predict_sh_runs_on_a_workspace_laid_out_like_the_container(tiny_models, tmp_path):
    inputs, outputs = tmp_path / "workspace" / "inputs", tmp_path / "workspace" / "outputs"
    inputs.mkdir(parents=True)
    image = ct_image(direction=(-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
    sitk.WriteImage(image, str(inputs / "case7_0000.nii.gz"))
    data = (inputs / "case7_0000.nii.gz").read_bytes()
    (inputs / "cut_0000.nii.gz").write_bytes(data[: len(data) // 2])
    env = {
        **os.environ,
        "FLARE_SEG_MODELS_DIR": str(tiny_models),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    proc = subprocess.run(
        [str(REPO / "predict.sh"), str(inputs), str(outputs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # the quick exit after the work (no interpreter teardown) keeps the status and every output
    assert proc.returncode == 1, proc.stderr  # one case failed
    assert proc.stdout.rstrip().endswith("summary in " + str(outputs / "summary.json"))
    assert "1 succeeded, 1 failed" in proc.stdout
    summary = json.loads((outputs / "summary.json").read_text())
    assert [c["status"] for c in summary["cases"]] == ["ok", "failed"]
    assert not (outputs / "cut.nii.gz").exists()
    mask = sitk.ReadImage(str(outputs / "case7.nii.gz"))
    assert Geometry.of(mask) == Geometry.of(sitk.ReadImage(str(inputs / "case7_0000.nii.gz")))
    assert np.asarray(sitk.GetArrayViewFromImage(mask)).dtype == np.uint8


def test_service_code_never_imports_training_code():
    code = (
        "import sys, flare_seg.service.pipeline, flare_seg.service.cli, flare_seg.service.api, flare_seg.cli;"
        "bad = [m for m in sys.modules if m.startswith('flare_seg.training')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_predict_dir_warms_up_and_survives_a_failed_warm_up(tiny_models, tmp_path, monkeypatch):
    from flare_seg.service.cli import predict_dir
    from flare_seg.service.pipeline import Segmenter

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    sitk.WriteImage(ct_image(), str(inputs / "a_0000.nii.gz"))
    segmenter = Segmenter.load(tiny_models)
    calls: list[str] = []
    real_segment_array = segmenter.segment_array
    monkeypatch.setattr(
        segmenter, "segment_array", lambda *a, **k: (calls.append("warm"), real_segment_array(*a, **k))[1]
    )
    for run in ("first", "second"):
        reports = predict_dir(inputs, tmp_path / run, segmenter)
        assert [r.status for r in reports] == ["ok"]
    assert calls == ["warm"]  # the warm-up volume went through the pipeline once, not per run

    broken = Segmenter.load(tiny_models)
    monkeypatch.setattr(broken, "warm_up", lambda: 1 / 0)
    reports = predict_dir(inputs, tmp_path / "third", broken)
    assert [r.status for r in reports] == ["ok"]
    assert (tmp_path / "third" / "a.nii.gz").is_file()


def test_precision_flag_reaches_the_model_loader(monkeypatch, tmp_path: Path, capsys) -> None:
    """``--precision`` is handed to ``Segmenter.load``; an unknown value is a usage error."""
    import pytest

    from flare_seg.service import pipeline

    seen = []

    class Stop(Exception):
        pass

    def fake_load(models_dir, memory_budget_mb=256, precision="auto", device="auto"):
        seen.append(precision)
        raise Stop

    monkeypatch.setattr(pipeline.Segmenter, "load", staticmethod(fake_load))
    (tmp_path / "models").mkdir()
    sitk.WriteImage(ct_image(), str(tmp_path / "ct.nii.gz"))  # inputs are checked before the models load
    for flag, expected in ((["--precision", "float32"], "float32"), ([], "auto")):
        with pytest.raises(Stop):
            main(
                [
                    "predict",
                    str(tmp_path / "ct.nii.gz"),
                    str(tmp_path / "out"),
                    "--models-dir",
                    str(tmp_path / "models"),
                    *flag,
                ]
            )
        assert seen[-1] == expected
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(tmp_path), str(tmp_path / "out"), "--precision", "float16"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_predict_reports_an_image_that_is_not_in_hounsfield_units(tiny_models, tmp_path, capsys):
    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    inputs.mkdir()
    sitk.WriteImage(ct_image(), str(inputs / "hu_0000.nii.gz"))
    sitk.WriteImage(sitk.Cast(ct_image() + 1024, sitk.sitkInt16), str(inputs / "raw_0000.nii.gz"))
    assert main(["predict", str(inputs), str(outputs), "--models-dir", str(tiny_models)]) == 0
    assert (outputs / "raw.nii.gz").is_file()  # segmented all the same, with the warning beside it
    cases = {c["case"]: c for c in json.loads((outputs / "summary.json").read_text())["cases"]}
    # (the tiny random-weight models may add warnings about implausible heatmaps to both)
    assert not [w for w in cases["hu"]["warnings"] if "Hounsfield" in w]
    raw = [w for w in cases["raw"]["warnings"] if "Hounsfield" in w]
    assert len(raw) == 1
    out = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(out) if line.startswith("raw: ok"))
    assert out[at + 1].startswith("  warning: the image holds no air")

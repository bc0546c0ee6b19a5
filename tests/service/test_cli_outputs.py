"""The batch command's optional outputs (--statistics, --preview, --organs, --split-masks), -v/-q
after the subcommand, and --device gpu without a GPU."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from flare_seg.cli import build_parser, main
from flare_seg.geometry import Geometry
from tests.conftest import ct_image, oblique_direction


def test_predict_writes_statistics_preview_split_masks_for_chosen_organs(tiny_models, tmp_path: Path) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    images = {"a": ct_image(), "b": ct_image(direction=oblique_direction(10.0))}
    for case, image in images.items():
        sitk.WriteImage(image, str(inputs / f"{case}_0000.nii.gz"))
    flags = ["--statistics", "--preview", "--split-masks", "--organs", "spleen,liver"]
    assert main(["predict", str(inputs), str(out), "--models-dir", str(tiny_models), *flags]) == 0
    rows = list(csv.DictReader((out / "statistics.csv").open()))
    pairs = [(r["case"], r["organ"]) for r in rows]
    assert pairs == [("a", "liver"), ("a", "spleen"), ("b", "liver"), ("b", "spleen")]
    for case, image in images.items():
        mask = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        labels = sitk.GetArrayFromImage(mask)
        assert set(np.unique(labels)) <= {0, 1, 3}
        stats = json.loads((out / f"{case}_statistics.json").read_text())
        assert list(stats) == ["liver", "spleen"]
        assert stats["liver"]["voxel_count"] == int(np.count_nonzero(labels == 1))
        if stats["liver"]["voxel_count"]:
            ct = sitk.GetArrayFromImage(image)
            assert stats["liver"]["hu_mean"] == pytest.approx(ct[labels == 1].mean(), abs=0.01)
        assert (out / f"{case}_preview.png").read_bytes()[:4] == b"\x89PNG"
        for k, organ in ((1, "liver"), (3, "spleen")):
            split = sitk.ReadImage(str(out / f"{case}_masks" / f"{organ}.nii.gz"))
            assert Geometry.of(split) == Geometry.of(sitk.ReadImage(str(inputs / f"{case}_0000.nii.gz")))
            np.testing.assert_array_equal(sitk.GetArrayFromImage(split), (labels == k).astype(np.uint8))
        assert not (out / f"{case}_masks" / "kidney.nii.gz").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert "a_preview.png" in summary["cases"][0]["outputs"]


def test_unknown_organ_is_a_usage_error(tiny_models, tmp_path: Path, capsys) -> None:
    (tmp_path / "in").mkdir()
    args = ["predict", str(tmp_path / "in"), str(tmp_path / "out"), "--models-dir", str(tiny_models)]
    assert main([*args, "--organs", "liver,livr"]) == 2
    assert "unknown organ 'livr'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "verbose", "quiet"),
    [
        (["predict", "a", "b"], False, False),
        (["-v", "predict", "a", "b"], True, False),
        (["predict", "a", "b", "-v"], True, False),
        (["predict", "a", "b", "--quiet"], False, True),
        (["-q", "demo"], False, True),
        (["train-segmentation", "d", "-v"], True, False),
    ],
)
def test_verbosity_flags_before_or_after_the_subcommand(argv, verbose, quiet) -> None:
    args = build_parser().parse_args(argv)
    assert (args.verbose, args.quiet) == (verbose, quiet)


def test_verbose_and_quiet_exclude_each_other(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["-v", "predict", "a", "b", "-q"])
    assert exc.value.code == 2 and "exclude each other" in capsys.readouterr().err


def test_device_gpu_without_a_gpu_is_a_clear_error(tmp_path: Path, capsys) -> None:
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible here")
    assert main(["demo", "--device", "gpu", "--out", str(tmp_path / "m.nii.gz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("flare-seg demo: error: --device gpu: TensorFlow sees no GPU")
    assert not (tmp_path / "m.nii.gz").exists()


def test_export_refuses_an_existing_folder_without_force(tmp_path: Path, capsys) -> None:
    out = tmp_path / "models"
    out.mkdir()
    assert main(["export", "--out", str(out), "--localization-run", "x", "--segmentation-run", "y"]) == 2
    err = capsys.readouterr().err
    assert "already exists: give --force" in err and err.count("\n") == 1


def test_interrupted_training_exits_130_with_how_to_resume(monkeypatch, tmp_path: Path, capsys) -> None:
    from flare_seg.training import train as train_module
    from flare_seg.training.interrupt import TrainingInterrupted

    def interrupted(data_dir, run_dir, config, contract=None, *, cache_dir=None):
        assert cache_dir == tmp_path / "cache"
        raise TrainingInterrupted(run_dir, 77, "SIGINT")

    monkeypatch.setattr(train_module, "train", interrupted)
    run, cache = str(tmp_path / "run"), str(tmp_path / "cache")
    argv = ["train-localization", str(tmp_path), "--run-dir", run, "--cache-dir", cache]
    assert main(argv) == 130
    assert "SIGINT at step 77: checkpoint saved in" in capsys.readouterr().err


def test_serve_with_device_gpu_without_a_gpu_stops_before_serving(monkeypatch, capsys) -> None:
    import tensorflow as tf

    from flare_seg.service import api

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible here")
    monkeypatch.setattr(api, "serve", lambda settings: pytest.fail("served without a GPU"))
    monkeypatch.setenv("FLARE_SEG_DEVICE", "gpu")
    assert main(["serve", "--port", "8999"]) == 2
    assert "flare-seg serve: error: --device gpu: TensorFlow sees no GPU" in capsys.readouterr().err


def test_a_failing_preview_keeps_the_case_ok_with_a_warning(tiny_models, tmp_path: Path, monkeypatch) -> None:
    from flare_seg.service import outputs
    from flare_seg.service.cli import predict_dir
    from flare_seg.service.outputs import OutputOptions
    from flare_seg.service.pipeline import Segmenter

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(outputs, "write_preview", broken)
    inputs = tmp_path / "in"
    inputs.mkdir()
    sitk.WriteImage(ct_image(), str(inputs / "a_0000.nii.gz"))
    options = OutputOptions(statistics=True, preview=True)
    (report,) = predict_dir(inputs, tmp_path / "out", Segmenter.load(tiny_models), options=options)
    assert report.status == "ok" and (tmp_path / "out" / "a.nii.gz").is_file()
    assert any("could not be written: disk full" in w for w in report.warnings)


def test_progress_bar_over_the_cases_on_a_terminal(tiny_models, tmp_path: Path, monkeypatch, capsys) -> None:
    from flare_seg import progress

    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for case in ("a", "b"):
        sitk.WriteImage(ct_image(), str(inputs / f"{case}_0000.nii.gz"))
    assert main(["predict", str(inputs), str(tmp_path / "out"), "--models-dir", str(tiny_models), "-q"]) == 0
    captured = capsys.readouterr()
    # the report lines, in order (a case's warnings, e.g. the random-weight networks' implausible
    # boxes, follow its line indented)
    reports = [line for line in captured.out.splitlines() if not line.startswith(" ")]
    assert [line.split(":")[0] for line in reports[:2]] == ["a", "b"]
    assert "predict" in captured.err and "2/2" in captured.err  # the bar, on stderr

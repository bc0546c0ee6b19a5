"""The benchmark's inputs and measurements (figures themselves are not asserted: they are machine-bound)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from flare_seg import bench


def test_bench_ct_has_the_requested_grid_and_is_centred_on_the_phantom():
    image = bench.make_bench_ct(40, seed=5)
    assert image.GetSize() == (512, 512, 40)
    assert image.GetSpacing() == pytest.approx(bench.BENCH_SPACING_MM_XYZ)
    assert image.GetDirection() == pytest.approx(bench.BENCH_DIRECTION)
    assert image.GetPixelID() == sitk.sitkInt16
    arr = sitk.GetArrayViewFromImage(image)
    # a body in the middle of the field of view, air in the corners
    assert arr[20, 256, 256] > -300
    assert arr[20, 0, 0] <= -900
    assert (arr > 0).mean() > 0.05


def test_worker_measures_a_small_case_and_the_summary_reads_its_figures(
    tiny_models, phantom_dataset, tmp_path
):
    source = sorted((phantom_dataset / "TrainingImg").glob("*_0000.nii.gz"))[0]
    path = tmp_path / source.name  # the DICOM variant writes its series beside the input
    path.write_bytes(source.read_bytes())
    image = sitk.ReadImage(str(path))
    result = bench.run_worker(
        {
            "models_dir": str(tiny_models),
            "path": str(path),
            "slices": image.GetSize()[2],
            "repeats": 2,
            "memory_budget_mb": 256,
            "baseline": True,
            "batch_cases": 2,
            "dicom": True,
        }
    )
    assert result["voxels"] == image.GetNumberOfPixels()
    assert len(result["runs"]) == 2
    stages = result["stages_s"]
    for key in ("read_s", "localization_forward_s", "segmentation_forward_s", "postprocess_s", "write_s"):
        assert stages[key] >= 0.0
    # the localization input is resampled on a second thread while the file is read: inside read_s
    overlapped = stages.pop("localization_during_read_s")
    assert 0.0 < overlapped <= stages["read_s"]
    assert sum(stages.values()) <= result["steady_state_wall_s"] + 1e-3
    memory = result["memory"]
    assert memory["peak_rss_mib"] >= memory["idle_rss_mib"] > 0
    # the networks' tensors, as TensorFlow's allocator counts them, live inside the process
    assert memory["tensorflow_device"] == "CPU:0"
    assert 0 < memory["tensorflow_peak_mib"] < memory["peak_rss_mib"]
    # two runs: the second is measured above the idle process the first one left
    assert memory["peak_rss_mib"] >= memory["steady_peak_rss_mib"] >= memory["steady_idle_rss_mib"] > 0
    assert memory["steady_peak_above_idle_mib"] == pytest.approx(
        memory["steady_peak_rss_mib"] - memory["steady_idle_rss_mib"], abs=0.11
    )
    dicom = result["dicom"]  # the same CT as a DICOM series: read, segmented, written as SEG
    assert dicom["size_xyz"] == list(image.GetSize()) and dicom["files"] == image.GetSize()[2]
    assert dicom["read_dicom_s"] > 0 and dicom["read_ratio"] > 0 and dicom["seg_frames"] >= 1
    assert dicom["segment_s"] > 0 and dicom["seg_mib"] > 0
    baseline = result["single_stage_baseline"]
    assert baseline["tiles"] >= 1 and baseline["total_s"] > 0
    assert len(baseline["runs_total_s"]) == 2 and baseline["total_s"] == min(baseline["runs_total_s"])
    assert result["device"] == "CPU" and result["precision"] == "float32" and result["onednn"] is not False
    assert result["batch"]["cases"] == 2 and result["batch"]["failed"] == 0

    summary = bench.summarize([result])[str(result["slices"])]
    assert summary["speedup_vs_single_stage"] == pytest.approx(
        baseline["total_s"] / result["steady_state_wall_s"], rel=0.01
    )
    assert 0.0 <= summary["other_than_io_and_forward_share"] <= 1.0
    table = bench.format_table([result])
    assert str(result["slices"]) in table and "cold start" in table and "DICOM variant" in table
    assert summary["dicom_read_vs_nifti"] == dicom["read_ratio"]
    cold = result["cold_start_s"]
    assert cold["first_case_s"] == result["runs"][0]["wall_s"] >= result["steady_state_wall_s"]
    assert cold["time_to_first_mask_s"] == pytest.approx(cold["total_s"] + cold["first_case_s"], abs=2e-3)


def test_peak_rss_reset_tracks_a_new_allocation():
    if not bench.reset_peak_rss():
        pytest.skip("no /proc/self/clear_refs on this system")
    before = bench.peak_rss_mib()
    block = np.ones(64 * 2**20, np.uint8)  # 64 MiB, touched
    after = bench.peak_rss_mib()
    assert after - before >= 50
    del block

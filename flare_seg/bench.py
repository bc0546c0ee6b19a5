"""``flare-seg bench``: speed and memory of the two-stage pipeline on full-size abdominal CTs.

The benchmark writes (or reuses) full-size CTs of 512 x 512 x N voxels at 0.8 x 0.8 x 1.5 mm built
from a phantom, then measures each size in a fresh worker process, so that memory figures are not
polluted by earlier sizes and the first worker's start-up is a true cold start:

- cold start: interpreter + imports, model load, warm-up; and the first case after it (the time
  to the first mask is what a one-case run waits, whatever the warm-up leaves to that case);
- steady state: per-case wall time from reading the file to the written mask, and per stage;
- peak resident memory during a case above the idle footprint of the loaded models, per input voxel:
  between cases once a first case has run (TensorFlow's oneDNN allocator then holds the networks'
  working memory for reuse), and for the first case above the idle process after warm-up;
- the I/O floor: reading the input and writing a uint8 mask of the same grid;
- a single-stage baseline: the same segmentation network slid over the whole volume at the
  segmentation spacing (what one would run without the localization stage);
- batch throughput through ``predict_dir``, which reads the next case while the current one runs;
- the peak memory of TensorFlow's tensors on the device the networks run on (on a GPU: peak GPU
  memory; on a CPU the same figure for the same float32 graphs).

Figures are printed and written as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_SPACING_MM_XYZ = (0.8, 0.8, 1.5)
BENCH_INPLANE = 512
# FLARE21 NIfTI files are mostly stored RAS: in SimpleITK's LPS terms, x and y point backwards.
BENCH_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


# ----------------------------------------------------------------------------- inputs


def bench_image_path(work_dir: Path, slices: int, seed: int) -> Path:
    return Path(work_dir) / f"bench_{BENCH_INPLANE}x{BENCH_INPLANE}x{slices}_seed{seed}_0000.nii.gz"


def make_bench_ct(slices: int, seed: int) -> Any:
    """A 512 x 512 x ``slices`` int16 CT at 0.8 x 0.8 x 1.5 mm, centred on a full-size phantom.

    Slices beyond the phantom's own extent are air (-1000 HU).
    """
    import numpy as np
    import SimpleITK as sitk

    from flare_seg.geometry import Geometry
    from flare_seg.training.phantom import PhantomOptions, generate_case

    phantom, _ = generate_case(seed, PhantomOptions(size="full", flip_probability=0.0))
    g = Geometry.of(phantom)
    centre = g.index_to_physical_xyz((np.asarray(g.size_xyz, float) - 1.0) / 2.0)
    size = np.array([BENCH_INPLANE, BENCH_INPLANE, slices], float)
    spacing = np.asarray(BENCH_SPACING_MM_XYZ)
    direction = np.asarray(BENCH_DIRECTION).reshape(3, 3)
    origin = centre - direction @ ((size - 1.0) / 2.0 * spacing)
    reference = sitk.Image([int(s) for s in size], sitk.sitkInt16)
    reference.SetSpacing(tuple(float(s) for s in spacing))
    reference.SetOrigin(tuple(float(v) for v in origin))
    reference.SetDirection(BENCH_DIRECTION)
    return sitk.Resample(phantom, reference, sitk.Transform(), sitk.sitkLinear, -1000.0, sitk.sitkInt16)


def ensure_bench_inputs(work_dir: Path, slice_counts: list[int], seed: int) -> dict[int, Path]:
    """Write the benchmark CTs that are not in ``work_dir`` yet; returns slices -> path."""
    from flare_seg.service.io import write_mask_atomic

    work_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for n in slice_counts:
        path = bench_image_path(work_dir, n, seed)
        if not path.is_file():
            t = time.perf_counter()
            write_mask_atomic(make_bench_ct(n, seed), path)  # atomic NIfTI writer; any pixel type
            print(f"wrote {path.name} in {time.perf_counter() - t:.1f} s", flush=True)
        paths[n] = path
    return paths


# ----------------------------------------------------------------------------- memory


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _status_mib(field: str) -> float:
    """A /proc/self/status memory figure in MiB; without /proc, the process's peak RSS."""
    kib = _proc_status_kib(field)
    if kib is None:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return kib / 1024.0


def rss_mib() -> float:
    """Current resident set size (MiB)."""
    return _status_mib("VmRSS")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """Peak resident set size since the process started or ``reset_peak_rss`` (MiB)."""
    return _status_mib("VmHWM")


# ----------------------------------------------------------------------------- worker


def _tf_device(tf: Any) -> str:
    """The device the networks run on: the first GPU if any, else the CPU."""
    return "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"


def _tf_peak_mib(tf: Any) -> float | None:
    """Peak bytes in use in TensorFlow's allocator for that device since the last reset (tensors
    only: not the CUDA context, nor memory the allocator holds unused)."""
    try:
        return float(tf.config.experimental.get_memory_info(_tf_device(tf))["peak"]) / 2**20
    except (ValueError, RuntimeError):  # an allocator that keeps no statistics
        return None


def _tf_reset(tf: Any) -> None:
    with contextlib.suppress(ValueError, RuntimeError):
        tf.config.experimental.reset_memory_stats(_tf_device(tf))


def single_stage_baseline(segmenter: Any, path: Path, max_voxels: int, out_dir: Path) -> dict[str, Any]:
    """The segmentation network slid over the whole volume at its spacing, in non-overlapping tiles
    of its largest size, scores resampled back, argmaxed and written: the pipeline without
    localization, timed from reading to the written mask like the two-stage wall time."""
    import numpy as np
    import tensorflow as tf

    from flare_seg.contract import SEGMENTATION_OUTPUT
    from flare_seg.geometry import canonical_axes
    from flare_seg.grid import GridCrop, plan_shape, resample_crop
    from flare_seg.service.io import read_ct_volume, write_mask_atomic

    c = segmenter.contract
    t0 = time.perf_counter()
    volume = read_ct_volume(path, max_voxels)
    axes, geometry = canonical_axes(volume.geometry)
    vol = axes.view(volume.array_zyx)
    spacing = geometry.spacing_mm_zyx
    shape = plan_shape(vol.shape, spacing, c.segmentation_spacing_mm, 10**6)
    crop = GridCrop((0, 0, 0), vol.shape, shape, spacing)
    box = resample_crop(segmenter.models.tf_utils, vol, crop, segmenter._slab_budget())
    centre_mm = crop.source_edge_to_out_mm(np.asarray(vol.shape, float) / 2.0)
    x = segmenter.models.tf_utils.normalize_segmentation(
        tf.constant(box), tf.constant(crop.out_spacing_mm_zyx, tf.float32), tf.constant(centre_mm, tf.float32)
    )
    del box
    x = x[:, : shape[0], : shape[1], : shape[2], :]  # drop the padding to valid sizes; tiles re-pad
    tile = c.segmentation_max_size_vox
    scores = np.zeros((*shape, 5), np.float32)
    t_forward = time.perf_counter()
    tiles = 0
    for z in range(0, shape[0], tile):
        for y in range(0, shape[1], tile):
            for xx in range(0, shape[2], tile):
                part = x[:, z : z + tile, y : y + tile, xx : xx + tile, :]
                m = c.segmentation_size_multiple
                pad = [(0, 0)] + [(0, (-int(n)) % m) for n in part.shape[1:4]] + [(0, 0)]
                out = segmenter.models.segmentation(tf.pad(part, pad))[SEGMENTATION_OUTPUT]
                d, h, w = part.shape[1:4]
                scores[z : z + d, y : y + h, xx : xx + w] = out[0, :d, :h, :w].numpy()
                tiles += 1
    forward = time.perf_counter() - t_forward
    mask = np.zeros(volume.array_zyx.shape, np.uint8)
    segmenter._scores_to_labels(tf.constant(scores), crop, axes.view(mask))  # in the input's layout
    write_mask_atomic(mask, out_dir / "single_stage.nii.gz", like=volume.header, geometry=volume.geometry)
    total = time.perf_counter() - t0
    return {
        "grid_at_segmentation_spacing_zyx": list(shape),
        "tiles": tiles,
        "forward_s": round(forward, 3),
        "total_s": round(total, 3),
    }


def io_floor(path: Path, max_voxels: int, out_dir: Path) -> dict[str, float]:
    """Reading the input and writing an all-background uint8 mask of the same grid."""
    import SimpleITK as sitk

    from flare_seg.service.io import read_ct_volume, write_mask_atomic

    read_s = float("inf")
    for _ in range(2):  # the better of two reads, as the pipeline's figure is the best run
        t = time.perf_counter()
        volume = read_ct_volume(path, max_voxels)
        read_s = min(read_s, time.perf_counter() - t)
    mask = sitk.Image(volume.geometry.size_xyz, sitk.sitkUInt8)
    volume.geometry.apply_to(mask)
    header = volume.header
    del volume
    t = time.perf_counter()
    write_mask_atomic(mask, out_dir / "io_floor.nii.gz", like=header)
    write_s = time.perf_counter() - t
    return {"read_s": round(read_s, 3), "write_s": round(write_s, 3), "total_s": round(read_s + write_s, 3)}


_WORKER_MAX_VOXELS = 2_000_000_000  # the benchmark's inputs are far below any service limit


def run_worker(opts: dict[str, Any]) -> dict[str, Any]:
    """Everything measured for one input size, in this (fresh) process.

    Stages: cold start (imports, model load, warm-up), the I/O floor, the steady-state cases with
    their memory, then the single-stage baseline and the batch throughput where asked for."""
    segmenter, out = _cold_start(opts)
    path = Path(opts["path"])
    with tempfile.TemporaryDirectory(prefix="flare-seg-bench-") as tmp:
        tmp_dir = Path(tmp)
        out["io_floor"] = io_floor(path, _WORKER_MAX_VOXELS, tmp_dir)
        runs, voxels, memory = _steady_state(segmenter, path, opts["repeats"], tmp_dir)
        out["voxels"] = voxels
        out["runs"] = runs
        best = min(runs, key=lambda r: r["wall_s"])
        out["steady_state_wall_s"] = best["wall_s"]
        cold = out["cold_start_s"]
        cold["first_case_s"] = runs[0]["wall_s"]
        cold["time_to_first_mask_s"] = round(cold["total_s"] + runs[0]["wall_s"], 3)
        out["stages_s"] = best["stages_s"]
        out["memory"] = memory
        if opts["baseline"]:
            out["single_stage_baseline"] = _baseline(segmenter, path, tmp_dir)
        if opts["batch_cases"] > 0:
            out["batch"] = _batch(segmenter, path, opts["batch_cases"], voxels, tmp_dir)
        if opts.get("dicom"):
            out["dicom"] = _dicom(segmenter, path, tmp_dir)
    return out


def _dicom(segmenter: Any, path: Path, tmp_dir: Path) -> dict[str, Any]:
    """The DICOM variant of the case: the same CT as a series of 2D files, read against its
    .nii.gz, segmented, and its mask written as a DICOM SEG (``flare_seg.dicom.benchmark``)."""
    from flare_seg.dicom.benchmark import dicom_variant

    return dicom_variant(
        path,
        tmp_dir,
        _WORKER_MAX_VOXELS,
        segment=lambda dicom: segmenter.segment_dicom_volume(dicom).labels_zyx,
    )


def _cold_start(opts: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Import, load and warm up the pipeline; the loaded ``Segmenter`` and the worker's first figures."""
    t_start = time.perf_counter()
    import tensorflow as tf

    from flare_seg.service.models import onednn_enabled
    from flare_seg.service.pipeline import Segmenter

    t_imported = time.perf_counter()
    segmenter = Segmenter.load(opts["models_dir"], opts["memory_budget_mb"], opts.get("precision", "auto"))
    t_loaded = time.perf_counter()
    segmenter.warm_up()
    t_warm = time.perf_counter()
    out: dict[str, Any] = {
        "slices": opts["slices"],
        "cold_start_s": {
            "import_s": round(t_imported - t_start, 3),
            "load_s": round(t_loaded - t_imported, 3),
            "warm_up_s": round(t_warm - t_loaded, 3),
            "total_s": round(t_warm - t_start, 3),
        },
        "device": _tf_device(tf).split(":")[0],  # GPU or CPU
        "onednn": onednn_enabled(),  # TensorFlow's oneDNN CPU kernels (3-4x faster 3D convolutions)
        "precision": segmenter.models.precision,  # the networks' arithmetic (mixed float16 on a GPU)
    }
    return segmenter, out


def _one_case(segmenter: Any, path: Path, tmp_dir: Path) -> tuple[dict[str, Any], int]:
    """One case as the batch CLI runs it, from reading the file to the written mask: its wall time
    and stages, and its voxel count."""
    t = time.perf_counter()
    volume = segmenter.read_volume(path, _WORKER_MAX_VOXELS)  # as the batch CLI does
    read_s = time.perf_counter() - t
    voxels = int(volume.array_zyx.size)
    result = segmenter.segment_volume(volume, release_input=True)  # as the batch CLI does
    del volume
    t_w = time.perf_counter()
    result.write_mask(tmp_dir / "mask.nii.gz")
    write_s = time.perf_counter() - t_w
    stages = {"read_s": round(read_s, 3), **result.timings_s, "write_s": round(write_s, 3)}
    return {"wall_s": round(time.perf_counter() - t, 3), "stages_s": stages}, voxels


def _steady_state(
    segmenter: Any, path: Path, repeats: int, tmp_dir: Path
) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
    """``repeats`` cases in a row: their runs, the voxel count and the memory figures."""
    import tensorflow as tf

    idle = rss_mib()
    exact_peak = reset_peak_rss()
    _tf_reset(tf)
    runs: list[dict[str, Any]] = []
    steady_idle: float | None = None
    first_peak = 0.0
    voxels = 0
    for i in range(repeats):
        if i == 1:  # from here on: between cases, with the models' working memory in place
            steady_idle, first_peak = rss_mib(), peak_rss_mib()
            reset_peak_rss()
        run, voxels = _one_case(segmenter, path, tmp_dir)
        runs.append(run)
    peak = peak_rss_mib()
    steady_peak = None
    if steady_idle is not None:
        steady_peak, peak = peak, max(peak, first_peak)
    memory: dict[str, Any] = {
        "idle_rss_mib": round(idle, 1),
        "peak_rss_mib": round(peak, 1),
        "peak_above_idle_mib": round(peak - idle, 1),
        "peak_above_idle_bytes_per_voxel": round((peak - idle) * 2**20 / voxels, 2),
        "peak_is_exact": exact_peak,  # False: the process-lifetime peak (includes load/warm-up)
    }
    if steady_idle is not None and steady_peak is not None:
        # After a first case the process keeps TensorFlow's working memory for the networks
        # (its oneDNN allocator pools it for reuse): that is the loaded models' idle footprint
        # in service, and what each further case adds is measured above it.
        memory.update(
            {
                "steady_idle_rss_mib": round(steady_idle, 1),
                "steady_peak_rss_mib": round(steady_peak, 1),
                "steady_peak_above_idle_mib": round(steady_peak - steady_idle, 1),
                "steady_peak_above_idle_bytes_per_voxel": round(
                    (steady_peak - steady_idle) * 2**20 / voxels, 2
                ),
            }
        )
    memory.update(_tf_memory(tf))
    return runs, voxels, memory


def _tf_memory(tf: Any) -> dict[str, Any]:
    """TensorFlow's peak tensor memory on the networks' device, where its allocator keeps count."""
    tf_peak = _tf_peak_mib(tf)
    if tf_peak is None:
        return {}
    # On a GPU: peak GPU memory of the tensors. On a CPU: the same figure for the same float32
    # graphs, what a GPU would need besides its CUDA context and cuDNN workspaces.
    memory: dict[str, Any] = {"tensorflow_device": _tf_device(tf), "tensorflow_peak_mib": round(tf_peak, 1)}
    if memory["tensorflow_device"].startswith("GPU"):
        memory["gpu_peak_mib"] = round(tf_peak, 1)
    return memory


def _baseline(segmenter: Any, path: Path, tmp_dir: Path) -> dict[str, Any]:
    """The single-stage baseline: the better of two runs, as for the two-stage figure (the first
    run of each new tile shape also pays for building its oneDNN kernels)."""
    base_runs = [single_stage_baseline(segmenter, path, _WORKER_MAX_VOXELS, tmp_dir) for _ in range(2)]
    best_base = min(base_runs, key=lambda b: b["total_s"])
    return {**best_base, "runs_total_s": [b["total_s"] for b in base_runs]}


def _batch(segmenter: Any, path: Path, cases: int, voxels: int, tmp_dir: Path) -> dict[str, Any]:
    """Batch throughput through ``predict_dir``: ``cases`` copies (links) of the input in a row."""
    from flare_seg.service.cli import predict_dir

    inputs = tmp_dir / "inputs"
    inputs.mkdir()
    for i in range(cases):
        (inputs / f"case{i:02d}_0000.nii.gz").symlink_to(path.resolve())
    reset_peak_rss()
    before = rss_mib()
    t = time.perf_counter()
    reports = predict_dir(inputs, tmp_dir / "outputs", segmenter, max_voxels=_WORKER_MAX_VOXELS)
    total = time.perf_counter() - t
    return {
        "cases": len(reports),
        "failed": sum(r.status != "ok" for r in reports),
        "total_s": round(total, 3),
        "per_case_s": round(total / len(reports), 3),
        "peak_above_start_mib": round(peak_rss_mib() - before, 1),
        "peak_above_start_bytes_per_voxel": round((peak_rss_mib() - before) * 2**20 / voxels, 2),
    }


# ----------------------------------------------------------------------------- driver


def _spawn_worker(opts: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "flare_seg.bench", "--worker", json.dumps(opts)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"benchmark worker for {opts['slices']} slices failed: " + " | ".join(tail))
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["worker_wall_s"] = round(wall, 3)
    return result


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Ratios and shares that the targets are stated in."""
    summary: dict[str, Any] = {}
    for r in results:
        s, memory = r["stages_s"], r["memory"]
        # Reading overlaps the localization resampling (``localization_during_read_s``): only as
        # much of it as the plain read (the I/O floor's) counts as I/O; any slowdown is "other".
        read = min(s.get("read_s", 0.0), r["io_floor"]["read_s"])
        network_io = read + sum(
            s.get(k, 0.0) for k in ("write_s", "localization_forward_s", "segmentation_forward_s")
        )
        entry: dict[str, Any] = {
            "wall_s": r["steady_state_wall_s"],
            "other_than_io_and_forward_share": round(1.0 - network_io / r["steady_state_wall_s"], 3),
            "peak_above_idle_bytes_per_voxel": memory["peak_above_idle_bytes_per_voxel"],
            "steady_peak_above_idle_bytes_per_voxel": memory.get("steady_peak_above_idle_bytes_per_voxel"),
            "io_floor_ratio": round(r["steady_state_wall_s"] / r["io_floor"]["total_s"], 2),
        }
        if "single_stage_baseline" in r:
            entry["speedup_vs_single_stage"] = round(
                r["single_stage_baseline"]["total_s"] / r["steady_state_wall_s"], 2
            )
        if "batch" in r:
            entry["batch_per_case_s"] = r["batch"]["per_case_s"]
        if "dicom" in r:
            entry["dicom_read_vs_nifti"] = r["dicom"]["read_ratio"]
        summary[str(r["slices"])] = entry
    return summary


def format_table(results: list[dict[str, Any]]) -> str:
    lines = []
    first = results[0]
    cold = first["cold_start_s"]
    onednn_off = " (oneDNN off)" if first.get("onednn") is False else ""
    device = f"{first['device']}{onednn_off}, {first.get('precision', 'float32')}"
    lines.append(
        f"device {device}; cold start {cold['total_s']:.1f} s "
        f"(import {cold['import_s']:.1f}, load {cold['load_s']:.1f}, warm-up {cold['warm_up_s']:.1f}); "
        f"first case {cold['first_case_s']:.1f} s, first mask at {cold['time_to_first_mask_s']:.1f} s"
    )
    for r in results:
        memory = r["memory"]
        if "tensorflow_peak_mib" in memory:
            lines.append(
                f"{r['slices']:>6} slices: TensorFlow's peak tensor memory on {memory['tensorflow_device']}"
                f" {memory['tensorflow_peak_mib']:.0f} MiB"
            )
    header = (
        f"{'slices':>6} {'Mvox':>6} {'wall s':>7} {'io floor':>8} {'1-stage':>8} {'speedup':>7} "
        f"{'batch/case':>10} {'peak MiB':>8} {'B/vox':>6} {'1st B/vox':>9} {'other %':>7}"
    )
    lines.append(header)
    summary = summarize(results)
    for r in results:
        s = summary[str(r["slices"])]
        base = r.get("single_stage_baseline", {}).get("total_s")
        base_txt = f"{base:.1f}" if base else "-"
        speedup_txt = f"{s['speedup_vs_single_stage']:.1f}x" if base else "-"
        batch_txt = f"{s['batch_per_case_s']:>10.2f}" if "batch_per_case_s" in s else f"{'-':>10}"
        memory = r["memory"]
        steady = "steady_peak_above_idle_mib" in memory
        peak_txt = f"{memory['steady_peak_above_idle_mib']:>8.0f}" if steady else f"{'-':>8}"
        steady_txt = f"{s['steady_peak_above_idle_bytes_per_voxel']:>6.2f}" if steady else f"{'-':>6}"
        lines.append(
            f"{r['slices']:>6} {r['voxels'] / 1e6:>6.1f} {r['steady_state_wall_s']:>7.2f} "
            f"{r['io_floor']['total_s']:>8.2f} {base_txt:>8} {speedup_txt:>7} {batch_txt} "
            f"{peak_txt} {steady_txt} {s['peak_above_idle_bytes_per_voxel']:>9.2f} "
            f"{100 * s['other_than_io_and_forward_share']:>6.0f}%"
        )
    lines.append(
        "peak MiB, B/vox: above the idle process between cases (after a first case, which leaves the"
        " networks' working memory pooled); 1st B/vox: the first case, above the idle after warm-up"
    )
    for r in results:
        if "dicom" in r:
            d = r["dicom"]
            lines.append(
                f"DICOM variant, {r['slices']} slices ({d['files']} files): read {d['read_dicom_s']:.2f} s "
                f"(.nii.gz {d['read_nifti_s']:.2f} s, {d['read_ratio']:.2f}x), "
                f"segment {d['segment_s']:.2f} s, "
                f"SEG build {d['seg_build_s']:.2f} s + write {d['seg_write_s']:.2f} s "
                f"({d['seg_frames']} frames, {d['seg_mib']:.1f} MiB)"
            )
    lines.append("stages (s) of the steady-state run:")
    for r in results:
        lines.append(f"  {r['slices']:>4}: " + "  ".join(f"{k} {v:.2f}" for k, v in r["stages_s"].items()))
    return "\n".join(lines)


def run_bench(
    models_dir: Path,
    work_dir: Path,
    slice_counts: list[int],
    seed: int = 990001,
    repeats: int = 2,
    memory_budget_mb: int = 256,
    precision: str = "auto",
    baseline_slices: list[int] | None = None,
    batch_cases: int = 3,
    batch_slices: list[int] | None = None,
    out_json: Path | None = None,
    dicom_slices: list[int] | None = None,
) -> dict[str, Any]:
    paths = ensure_bench_inputs(work_dir, slice_counts, seed)
    baseline_slices = slice_counts[:1] if baseline_slices is None else baseline_slices
    batch_slices = slice_counts[:1] if batch_slices is None else batch_slices
    dicom_slices = [n for n in slice_counts if n == 300][:1] if dicom_slices is None else dicom_slices
    results = []
    for n in slice_counts:
        print(f"measuring 512 x 512 x {n} ...", flush=True)
        results.append(
            _spawn_worker(
                {
                    "models_dir": str(models_dir),
                    "path": str(paths[n]),
                    "slices": n,
                    "repeats": repeats,
                    "memory_budget_mb": memory_budget_mb,
                    "precision": precision,
                    "baseline": n in baseline_slices,
                    "batch_cases": batch_cases if n in batch_slices else 0,
                    "dicom": n in dicom_slices,
                }
            )
        )
    doc = {
        "input": {
            "inplane": BENCH_INPLANE,
            "spacing_mm_xyz": BENCH_SPACING_MM_XYZ,
            "direction": BENCH_DIRECTION,
            "phantom_seed": seed,
        },
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "memory_budget_mb": memory_budget_mb,
        "results": results,
        "summary": summarize(results),
    }
    print(format_table(results))
    if out_json is not None:
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(doc, indent=2))
        print(f"written {out_json}")
    return doc


def main() -> int:
    parser = argparse.ArgumentParser(description="flare-seg benchmark worker (run by `flare-seg bench`)")
    parser.add_argument("--worker", required=True, help="JSON options")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    result = run_worker(json.loads(args.worker))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    from flare_seg.console import exit_now

    exit_now(main())

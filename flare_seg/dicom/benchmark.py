"""The DICOM variant of a benchmark case: the same CT as a DICOM series (one file per slice),
read against reading its .nii.gz, and its mask written as a DICOM SEG.

Used by ``flare-seg bench`` (the figures go in its JSON report and table); the series is written
once beside the benchmark's .nii.gz and reused.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from flare_seg.dicom.seg import build_seg, write_seg_atomic
from flare_seg.dicom.synth import SeriesOptions, write_ct_series
from flare_seg.dicom.volume import DicomVolume, read_dicom_volume
from flare_seg.service.io import read_ct_volume

logger = logging.getLogger(__name__)


def series_dir_for(nifti_path: Path) -> Path:
    stem = nifti_path.name.removesuffix(".nii.gz").removesuffix(".nii")
    return nifti_path.parent / f"{stem}_dicom"


def ensure_series(nifti_path: Path, max_voxels: int) -> Path:
    """The DICOM series of ``nifti_path`` (written next to it on first use, atomically)."""
    folder = series_dir_for(nifti_path)
    if folder.is_dir():
        return folder
    volume = read_ct_volume(nifti_path, max_voxels)
    tmp = Path(tempfile.mkdtemp(dir=nifti_path.parent, prefix=f".{folder.name}."))
    try:
        t = time.perf_counter()
        write_ct_series(volume.array_zyx, volume.geometry, tmp, SeriesOptions(description="bench CT"))
        tmp.rename(folder)
        logger.info("wrote the DICOM series %s in %.1f s", folder.name, time.perf_counter() - t)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _best_of(runs: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    best, value = float("inf"), None
    for _ in range(runs):
        t = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t)
    return best, value


def dicom_variant(
    nifti_path: Path,
    out_dir: Path,
    max_voxels: int,
    segment: Callable[[DicomVolume], np.ndarray] | None = None,
    repeats: int = 2,
) -> dict[str, Any]:
    """Reading the case as DICOM and as .nii.gz (the best of ``repeats`` each), then writing the
    DICOM SEG of its mask (``segment``'s, or an HU-threshold stand-in without one)."""
    folder = ensure_series(nifti_path, max_voxels)
    read_nifti_s, _ = _best_of(repeats, lambda: read_ct_volume(nifti_path, max_voxels))
    read_dicom_s, dicom = _best_of(repeats, lambda: read_dicom_volume(folder, max_voxels))
    if segment is not None:
        t = time.perf_counter()
        labels = segment(dicom)
        segment_s: float | None = time.perf_counter() - t
    else:
        hu = dicom.volume.array_zyx
        labels = np.where(hu > 150, 1, np.where((hu > 20) & (hu < 80), 2, 0)).astype(np.uint8)
        segment_s = None
    t = time.perf_counter()
    seg = build_seg(labels, dicom.source, model_version="bench")
    build_s = time.perf_counter() - t
    path = out_dir / "bench.seg.dcm"
    t = time.perf_counter()
    write_seg_atomic(seg, path)
    write_s = time.perf_counter() - t
    size_xyz = dicom.volume.geometry.size_xyz
    return {
        "size_xyz": list(size_xyz),
        "files": len(list(folder.iterdir())),
        "read_nifti_s": round(read_nifti_s, 3),
        "read_dicom_s": round(read_dicom_s, 3),
        "read_ratio": round(read_dicom_s / read_nifti_s, 2) if read_nifti_s > 0 else None,
        "segment_s": None if segment_s is None else round(segment_s, 3),
        "seg_build_s": round(build_s, 3),
        "seg_write_s": round(write_s, 3),
        "seg_frames": int(seg.NumberOfFrames),
        "seg_mib": round(path.stat().st_size / 2**20, 1),
    }

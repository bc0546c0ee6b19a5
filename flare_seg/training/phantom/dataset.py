"""Datasets of phantoms in the FLARE21 layout: case seeds and names, atomic file writing, and the
dataset.json that records how every case was made."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from flare_seg.labels import LABELS
from flare_seg.training.phantom.generate import generate_case_with_info
from flare_seg.training.phantom.params import DEFAULT_OPTIONS, PhantomOptions

logger = logging.getLogger(__name__)


def case_seed(seed: int, index: int) -> int:
    """The seed of case `index` of a dataset with seed `seed`: 63 bits drawn from child `index` of
    numpy's SeedSequence(seed) (the same child that SeedSequence(seed).spawn() gives)."""
    child = np.random.SeedSequence(int(seed), spawn_key=(int(index),))
    return int(child.generate_state(1, np.uint64)[0]) >> 1


def case_name(seed: int, index: int) -> str:
    """The name of case `index` of a dataset with seed `seed`, e.g. phantom_0007_002."""
    return f"phantom_{seed:04d}_{index:03d}"


def _write_atomic(image: sitk.Image, path: Path) -> None:
    """Writes a compressed NIfTI through a temporary file in the same folder, then renames it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.nii.gz")
    try:
        sitk.WriteImage(image, str(tmp), useCompression=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_case(out_dir: Path, name: str, seed: int, options: PhantomOptions) -> dict[str, Any]:
    """Generates and writes one case; returns its PhantomInfo as a dict."""
    image, mask, info = generate_case_with_info(seed, options)
    _write_atomic(image, out_dir / "TrainingImg" / f"{name}_0000.nii.gz")
    _write_atomic(mask, out_dir / "TrainingMask" / f"{name}.nii.gz")
    return dataclasses.asdict(info)


def _write_case_star(args: tuple[Path, str, int, PhantomOptions]) -> dict[str, Any]:
    """`_write_case` with its arguments as one tuple (for Pool.imap)."""
    return _write_case(*args)


def write_dataset(
    out_dir: Path,
    cases: int,
    seed: int,
    options: PhantomOptions = DEFAULT_OPTIONS,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Write `cases` phantoms in the FLARE21 layout and return their names.

    Layout: out_dir/TrainingImg/<name>_0000.nii.gz, out_dir/TrainingMask/<name>.nii.gz and
    out_dir/dataset.json. Case i is named `case_name(seed, i)` and generated from `case_seed(seed, i)`.
    Files are written atomically. workers > 1 uses a spawn-context process pool.
    progress(done, total) is called after each case.
    """
    if cases < 0:
        raise ValueError(f"cases must be >= 0, got {cases}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    out_dir = Path(out_dir)
    (out_dir / "TrainingImg").mkdir(parents=True, exist_ok=True)
    (out_dir / "TrainingMask").mkdir(parents=True, exist_ok=True)
    names = [case_name(seed, i) for i in range(cases)]
    jobs = [(out_dir, name, case_seed(seed, i), options) for i, name in enumerate(names)]
    infos = _run_jobs(jobs, workers, progress)
    meta = {
        "generator": "flare-seg synthetic phantom",
        "seed": seed,
        "cases": names,
        "case_seeds": {name: job[2] for name, job in zip(names, jobs, strict=True)},
        "labels": {str(k): v for k, v in LABELS.items()},
        "options": dataclasses.asdict(options),
        "case_info": dict(zip(names, infos, strict=True)),
    }
    tmp = out_dir / f".dataset.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, out_dir / "dataset.json")
    logger.info("wrote %d phantom cases to %s", cases, out_dir)
    return names


def _run_jobs(
    jobs: list[tuple[Path, str, int, PhantomOptions]],
    workers: int,
    progress: Callable[[int, int], None] | None,
) -> list[dict[str, Any]]:
    """Writes the cases of `jobs` (serially, or in a spawn-context pool of `workers` processes) and
    returns their PhantomInfo dicts in job order."""
    cases = len(jobs)
    infos: list[dict[str, Any]] = []
    if workers > 1 and cases > 1:
        with get_context("spawn").Pool(min(workers, cases)) as pool:
            for done, info in enumerate(pool.imap(_write_case_star, jobs), start=1):
                infos.append(info)
                if progress is not None:
                    progress(done, cases)
    else:
        for done, job in enumerate(jobs, start=1):
            infos.append(_write_case_star(job))
            if progress is not None:
                progress(done, cases)
    return infos

"""Shared small phantoms and measurements for the phantom tests (cached, so each case is generated
once per test session)."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from flare_seg.labels import LABELS
from flare_seg.training.phantom import PhantomInfo, PhantomOptions, case_seed, generate_case_with_info

SMALL = PhantomOptions(size="small")
SEEDS = tuple(range(8))
LABEL = {name: value for value, name in LABELS.items()}


@cache
def _case(seed: int, options: PhantomOptions = SMALL) -> tuple[sitk.Image, sitk.Image, PhantomInfo]:
    return generate_case_with_info(seed, options)


def _case_arrays(seed: int, options: PhantomOptions = SMALL) -> tuple[np.ndarray, np.ndarray, PhantomInfo]:
    """``_case`` as numpy arrays: image, mask (both (z, y, x)) and what was sampled."""
    image, mask, info = _case(seed, options)
    return sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(mask), info


def first_case_seed(predicate: Callable[[int], bool], dataset_seed: int, cases: int) -> int:
    """The first of the first ``cases`` case seeds of ``dataset_seed`` that satisfies ``predicate``."""
    for i in range(cases):
        seed = case_seed(dataset_seed, i)
        if predicate(seed):
            return seed
    raise AssertionError(f"no case seed among the first {cases} of dataset seed {dataset_seed} qualifies")


def synth_small_case(out: Path, flag: str) -> dict:
    """``flare-seg synth`` of one small case (seed 5) with ``flag`` into ``out``: its dataset.json,
    after checking that the command succeeded and recorded the option as on."""
    from flare_seg.cli import main

    assert main(["synth", str(out), "--cases", "1", "--seed", "5", "--size", "small", flag]) == 0
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["options"][flag.removeprefix("--").replace("-", "_")] is True
    return dataset


def _geometry(image: sitk.Image) -> tuple:
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def _centroid_lps(mask: sitk.Image, label: int) -> np.ndarray:
    """Physical (LPS mm) centroid of a label; numpy gives (z, y, x) indices, SimpleITK wants (x, y, z)."""
    zyx = np.argwhere(sitk.GetArrayViewFromImage(mask) == label).mean(axis=0)
    return np.array(mask.TransformContinuousIndexToPhysicalPoint(zyx[::-1].tolist()))


def _touches_top_or_bottom(mask: sitk.Image, label: int) -> bool:
    """Whether a label reaches the first or last slice (slices are the array's first axis)."""
    m = sitk.GetArrayViewFromImage(mask)
    return bool((m[0] == label).any() or (m[-1] == label).any())


def _volume_ml(mask: sitk.Image, label: int) -> float:
    return float(
        np.count_nonzero(sitk.GetArrayViewFromImage(mask) == label) * np.prod(mask.GetSpacing()) / 1000
    )

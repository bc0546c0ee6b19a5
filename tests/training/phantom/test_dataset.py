"""Tests of dataset writing in the FLARE21 layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from flare_seg.labels import LABELS
from flare_seg.training.phantom import PHASES, case_name, case_seed, generate_case, write_dataset
from tests.training.phantom.helpers import SMALL


def test_case_seeds_come_from_a_seed_sequence() -> None:
    seeds = [case_seed(7, i) for i in range(5)]
    assert len(set(seeds)) == 5
    assert seeds == [case_seed(7, i) for i in range(5)]
    child = np.random.SeedSequence(7).spawn(3)[2]
    assert case_seed(7, 2) == int(child.generate_state(1, np.uint64)[0]) >> 1
    assert case_name(7, 2) == "phantom_0007_002"


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[tuple[int, int]]]:
    root = tmp_path_factory.mktemp("phantoms")
    calls: list[tuple[int, int]] = []
    names = write_dataset(root, cases=2, seed=5, options=SMALL, progress=lambda i, n: calls.append((i, n)))
    return root, names, calls


def test_write_dataset_writes_the_flare_layout(
    small_dataset: tuple[Path, list[str], list[tuple[int, int]]],
) -> None:
    root, names, calls = small_dataset
    assert names == [case_name(5, 0), case_name(5, 1)]
    assert calls == [(1, 2), (2, 2)]
    assert sorted(p.name for p in (root / "TrainingImg").iterdir()) == [f"{n}_0000.nii.gz" for n in names]
    assert sorted(p.name for p in (root / "TrainingMask").iterdir()) == [f"{n}.nii.gz" for n in names]
    assert sorted(p.name for p in root.iterdir()) == [
        "TrainingImg",
        "TrainingMask",
        "dataset.json",
    ]  # no temp files
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["generator"] == "flare-seg synthetic phantom"
    assert meta["seed"] == 5
    assert meta["cases"] == names
    assert meta["labels"] == {str(k): v for k, v in LABELS.items()}
    assert meta["options"] == {
        "size": "small",
        "flip_probability": 0.5,
        "oblique_probability": 0.0,
        "iliac_wings": False,
        "hu_spread_hu": 0.0,
        "anatomy_variety": False,
        "lesions": False,
        "arms": False,
        "lateral_spleen": False,
        "fatty_pancreas": False,
        "organ_layout": False,
        "collapsed_stomach": False,
        "liver_masses": 0.0,
        "low_left_lobe": False,
        "thin_left_lobe": False,
        "pancreas_lipomatosis": False,
        "pancreas_forward": False,
        "liver_fissures": False,
        "gallbladder_fossa": False,
        "true_pelvis": False,
        "flat_pancreas": False,
        "stomach_in_front": False,
    }
    for i, name in enumerate(names):
        assert meta["case_seeds"][name] == case_seed(5, i)
        image = sitk.ReadImage(str(root / "TrainingImg" / f"{name}_0000.nii.gz"))
        mask = sitk.ReadImage(str(root / "TrainingMask" / f"{name}.nii.gz"))
        assert image.GetPixelID() == sitk.sitkInt16 and mask.GetPixelID() == sitk.sitkUInt8
        assert image.GetSize() == mask.GetSize()
        np.testing.assert_allclose(image.GetOrigin(), mask.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(image.GetSpacing(), mask.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(image.GetDirection(), mask.GetDirection(), atol=1e-6)
        expected_image, expected_mask = generate_case(case_seed(5, i), SMALL)
        np.testing.assert_array_equal(
            sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(expected_image)
        )
        np.testing.assert_array_equal(
            sitk.GetArrayViewFromImage(mask), sitk.GetArrayViewFromImage(expected_mask)
        )
        assert meta["case_info"][name]["phase"] in PHASES


def test_write_dataset_in_worker_processes_matches_serial(
    small_dataset: tuple[Path, list[str], list[tuple[int, int]]], tmp_path: Path
) -> None:
    root, names, _ = small_dataset
    assert write_dataset(tmp_path, cases=2, seed=5, options=SMALL, workers=2) == names
    for name in names:
        for sub, suffix in (("TrainingImg", "_0000.nii.gz"), ("TrainingMask", ".nii.gz")):
            a = sitk.ReadImage(str(root / sub / f"{name}{suffix}"))
            b = sitk.ReadImage(str(tmp_path / sub / f"{name}{suffix}"))
            np.testing.assert_array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["TrainingImg", "TrainingMask", "dataset.json"]

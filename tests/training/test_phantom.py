"""Tests of the synthetic CT phantom generator (small phantoms, so the module runs in seconds)."""

from __future__ import annotations

import json
import time
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from flare_seg.labels import LABELS, ORGANS
from flare_seg.training.phantom import (
    HU_RANGES,
    PHASES,
    PhantomInfo,
    PhantomOptions,
    case_name,
    case_seed,
    generate_case,
    generate_case_with_info,
    write_dataset,
)

SMALL = PhantomOptions(size="small")
SEEDS = tuple(range(8))
LABEL = {name: value for value, name in LABELS.items()}


@cache
def _case(seed: int, options: PhantomOptions = SMALL) -> tuple[sitk.Image, sitk.Image, PhantomInfo]:
    return generate_case_with_info(seed, options)


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


def test_same_seed_gives_the_same_case() -> None:
    image_a, mask_a = generate_case(3, SMALL)
    image_b, mask_b, _ = _case(3)
    assert _geometry(image_a) == _geometry(image_b)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image_a), sitk.GetArrayViewFromImage(image_b))
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(mask_a), sitk.GetArrayViewFromImage(mask_b))


def test_different_seeds_give_different_cases() -> None:
    (image_a, mask_a, _), (image_b, mask_b, _) = _case(0), _case(1)
    assert _geometry(image_a) != _geometry(image_b)
    assert _volume_ml(mask_a, LABEL["liver"]) != _volume_ml(mask_b, LABEL["liver"])


@pytest.mark.parametrize("seed", SEEDS)
def test_image_and_mask_share_one_geometry(seed: int) -> None:
    image, mask, info = _case(seed)
    assert image.GetPixelID() == sitk.sitkInt16
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert _geometry(image) == _geometry(mask)
    assert image.GetSize() == info.size_xyz
    direction = np.array(image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction @ direction.T, np.eye(3), atol=1e-9)
    assert np.linalg.norm(image.GetOrigin()) > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_small_geometry_ranges(seed: int) -> None:
    image, _, _ = _case(seed)
    nx, ny, nz = image.GetSize()
    sx, sy, sz = image.GetSpacing()
    assert 96 <= nx == ny <= 128
    assert 3.0 <= sx == sy <= 4.0
    assert 3.0 <= sz <= 6.0
    assert 245.0 <= (nz - 1) * sz <= 455.0  # z extent, mm


def test_every_organ_appears_in_every_case() -> None:
    for seed in SEEDS:
        _, mask, _ = _case(seed)
        present = set(np.unique(sitk.GetArrayViewFromImage(mask)).tolist())
        assert present == set(LABELS), (seed, present)


def test_organ_volumes_are_plausible() -> None:
    ranges_ml = {"liver": (900, 2500), "kidney": (170, 480), "spleen": (100, 350), "pancreas": (40, 200)}
    checked = 0
    for seed in SEEDS:
        _, mask, _ = _case(seed)
        for name, (lo, hi) in ranges_ml.items():
            if _touches_top_or_bottom(mask, LABEL[name]):
                continue  # cut by the field of view
            checked += 1
            assert lo <= _volume_ml(mask, LABEL[name]) <= hi, (seed, name, _volume_ml(mask, LABEL[name]))
    assert checked >= 0.75 * len(SEEDS) * len(ranges_ml)


@pytest.mark.parametrize("options", [SMALL, PhantomOptions(size="small", flip_probability=1.0)])
def test_anatomy_sides_hold_in_physical_space(options: PhantomOptions) -> None:
    """Liver on the patient's right (smaller LPS x) of the spleen, kidneys posterior (larger LPS y)
    to the pancreas, whatever the direction matrix."""
    for seed in SEEDS[:4] if options == SMALL else SEEDS[:2]:
        _, mask, _ = _case(seed, options)
        liver, spleen = _centroid_lps(mask, LABEL["liver"]), _centroid_lps(mask, LABEL["spleen"])
        kidney, pancreas = _centroid_lps(mask, LABEL["kidney"]), _centroid_lps(mask, LABEL["pancreas"])
        assert liver[0] < spleen[0] - 50.0, seed
        assert kidney[1] > pancreas[1] + 10.0, seed
        assert spleen[2] > kidney[2], seed  # spleen above the kidneys


def test_directions_flip_and_tilt_as_asked() -> None:
    diagonals = {tuple(np.sign(np.diag(np.reshape(_case(s)[0].GetDirection(), (3, 3))))) for s in SEEDS}
    assert len(diagonals) >= 3  # several flip combinations among a few seeds
    assert any(-1.0 in d for d in diagonals)

    image, _, info = _case(0, PhantomOptions(size="small", flip_probability=0.0))
    assert image.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert info.flipped_xyz == (False, False, False)

    image, mask, info = _case(1, PhantomOptions(size="small", oblique_probability=1.0))
    direction = np.reshape(image.GetDirection(), (3, 3))
    flips = np.diag([-1.0 if f else 1.0 for f in info.flipped_xyz])
    angle = np.degrees(np.arccos(np.clip((np.trace(direction @ flips) - 1) / 2, -1, 1)))
    assert 5.0 - 1e-6 <= angle <= 15.0 + 1e-6
    assert abs(angle - info.oblique_deg) < 1e-6
    assert _centroid_lps(mask, LABEL["liver"])[0] < _centroid_lps(mask, LABEL["spleen"])[0]


def test_cut_fields_of_view_cut_organs() -> None:
    """A case whose field of view starts below the liver dome has liver in its top slice."""
    for seed in range(100):
        info = _case(seed)[2] if seed in SEEDS else None
        if info is None:
            image, mask, info = generate_case_with_info(seed, SMALL)
        else:
            image, mask, _ = _case(seed)
        if info.fov == "cut_top":
            break
    else:
        pytest.fail("no cut_top case among 100 seeds")
    z_axis_up = np.reshape(image.GetDirection(), (3, 3))[2, 2] > 0
    m = sitk.GetArrayViewFromImage(mask)
    top = m[-1] if z_axis_up else m[0]
    assert (top == LABEL["liver"]).any()


@pytest.mark.parametrize("seed", SEEDS)
def test_hu_statistics(seed: int) -> None:
    image, mask, info = _case(seed)
    hu = sitk.GetArrayViewFromImage(image)
    m = sitk.GetArrayViewFromImage(mask)
    assert info.phase in PHASES
    for organ in ORGANS.values():
        assert f"{organ}" in info.hu_means or organ == "kidney"
    lo, hi = HU_RANGES["liver"][PHASES.index(info.phase)]
    interior = ndimage.binary_erosion(m == LABEL["liver"])
    assert lo - 15 <= float(hu[interior].mean()) <= hi + 15, (info.phase, float(hu[interior].mean()))
    assert 5.0 <= float(hu[interior].std()) <= 60.0  # noise (10-30 HU) plus mild texture

    # Background: the anterior corners of every slice are outside the body.
    ny, nx = hu.shape[1:]
    corners = [(j, i) for j in (0, ny - 1) for i in (0, nx - 1)]
    centre_y = image.TransformContinuousIndexToPhysicalPoint(((nx - 1) / 2, (ny - 1) / 2, 0))[1]
    for j, i in corners:
        if image.TransformIndexToPhysicalPoint((i, j, 0))[1] >= centre_y:
            continue  # posterior corner: the table may be there
        patch = hu[:, max(j - 2, 0) : j + 3, max(i - 2, 0) : i + 3].astype(float)
        assert not (m[:, max(j - 2, 0) : j + 3, max(i - 2, 0) : i + 3]).any()
        if info.pad_value is not None:
            assert np.all(patch == info.pad_value)
        else:
            assert abs(patch.mean() + 1000.0) < 5.0
            assert 3.0 < patch.std() < 40.0


def test_options_and_seeds_are_validated() -> None:
    with pytest.raises(ValueError, match="size"):
        PhantomOptions(size="huge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="flip_probability"):
        PhantomOptions(flip_probability=1.5)
    with pytest.raises(ValueError, match="seed"):
        generate_case(-1, SMALL)


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
    assert meta["options"] == {"size": "small", "flip_probability": 0.5, "oblique_probability": 0.0}
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


@pytest.mark.slow
def test_full_size_case() -> None:
    started = time.perf_counter()
    image, mask = generate_case(11, PhantomOptions(size="full"))
    elapsed = time.perf_counter() - started
    nx, ny, nz = image.GetSize()
    assert nx == ny == 512
    assert 0.6 <= image.GetSpacing()[0] <= 1.0
    assert 1.0 <= image.GetSpacing()[2] <= 5.0
    assert nz <= 320
    assert _geometry(image) == _geometry(mask)
    assert elapsed < 60.0, elapsed

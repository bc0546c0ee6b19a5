"""Shared fixtures: a seeded phantom dataset (anisotropic, non-identity directions) and tiny
random-weight models trained for a few steps and exported through the real export code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
SHIPPED_MODELS = REPO / "flare_seg" / "saved_models"  # shipped inside the package
EXAMPLES = REPO / "flare_seg" / "examples"


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four small phantoms in the FLARE21 layout (flips always on, so directions vary)."""
    from flare_seg.training.phantom import PhantomOptions, write_dataset

    root = tmp_path_factory.mktemp("phantoms")
    write_dataset(root, cases=4, seed=7, options=PhantomOptions(size="small", flip_probability=0.7))
    return root


@pytest.fixture(scope="session")
def tiny_runs(phantom_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Localization and segmentation runs of two steps each with very small networks."""
    from flare_seg.training.config import load_config
    from flare_seg.training.train import train

    runs = tmp_path_factory.mktemp("runs")
    small = {"steps": 2, "filters": (4, 8, 8, 8), "val_cases": 1, "log_every": 1, "checkpoint_every": 1}
    train(phantom_dataset, runs / "loc", load_config("localization", **small))
    train(
        phantom_dataset, runs / "seg", load_config("segmentation", sc_filters=4, patch_size_vox=32, **small)
    )
    return runs / "loc", runs / "seg"


@pytest.fixture(scope="session")
def tiny_models(tiny_runs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory exported from ``tiny_runs`` by the real export code."""
    from flare_seg.training.export import export_models

    out = tmp_path_factory.mktemp("models") / "saved_models"
    export_models(tiny_runs[0], tiny_runs[1], out, notes="test fixture")
    return out


@pytest.fixture(scope="session")
def tiny_segmenter(tiny_models: Path):
    from flare_seg.service.pipeline import Segmenter

    return Segmenter.load(tiny_models, memory_budget_mb=256)


def oblique_direction(degrees: float = 12.0) -> tuple[float, ...]:
    """A rotation about an axis tilted between x and z (a non-axis-aligned direction matrix)."""
    a = np.deg2rad(degrees)
    axis = np.array([1.0, 0.3, 0.5])
    axis /= np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    r = np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k
    return tuple(float(v) for v in r.ravel())


def ct_image(
    shape_zyx: tuple[int, int, int] = (24, 40, 36),
    spacing_mm_xyz: tuple[float, float, float] = (2.8, 3.1, 5.0),
    direction: tuple[float, ...] = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0),
    origin_mm_xyz: tuple[float, float, float] = (-61.5, 42.25, -210.0),
    pixel_type: int = sitk.sitkInt16,
) -> sitk.Image:
    """A body-like CT (HU) with a bright block, anisotropic spacing and the given direction."""
    z, y, x = shape_zyx
    arr = np.full(shape_zyx, -1000, np.int16)
    arr[2:-2, 4:-4, 3:-3] = 30
    arr[z // 4 : z // 2, y // 3 : y // 2, x // 4 : x // 2] = 120
    image = sitk.GetImageFromArray(arr)
    if pixel_type != sitk.sitkInt16:
        image = sitk.Cast(image, pixel_type)
    image.SetSpacing(spacing_mm_xyz)
    image.SetOrigin(origin_mm_xyz)
    image.SetDirection(direction)
    return image

"""Tests for flare_seg.service.plausibility: absurd grids are named, plausible ones pass."""

from __future__ import annotations

import pytest

from flare_seg.service.plausibility import implausible_grid_reason


@pytest.mark.parametrize(
    ("dims", "axes"),
    [((1, 40, 30), "x"), ((40, 1, 30), "y"), ((1, 1, 2), "x, y, z"), ((512, 512, 3), "z")],
)
def test_thin_axes(dims: tuple[int, int, int], axes: str) -> None:
    reason = implausible_grid_reason(dims, (1.0, 1.0, 1.0))
    assert reason is not None and f"fewer than 4 voxels along {axes};" in reason


@pytest.mark.parametrize("spacing", [(1e30, 1.0, 1.0), (1.0, 1e6, 1.0), (0.8, 0.8, 0.001), (0.8, 0.8, 51.0)])
def test_absurd_spacings(spacing: tuple[float, float, float]) -> None:
    reason = implausible_grid_reason((64, 64, 64), spacing)
    assert reason is not None and "implausible voxel spacing" in reason and "mm" in reason


@pytest.mark.parametrize("spacing", [(0.01, 0.01, 0.01), (50.0, 50.0, 50.0), (0.7, 0.7, 5.0)])
def test_plausible(spacing: tuple[float, float, float]) -> None:
    assert implausible_grid_reason((4, 4, 4), spacing) is None

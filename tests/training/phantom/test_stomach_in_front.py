"""The stomach kept in front of the pancreas (``PhantomOptions.stomach_in_front``)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from flare_seg.training.phantom import PhantomOptions
from flare_seg.training.phantom.anatomy import AnatomyBuilder
from flare_seg.training.phantom.appearance import sample_appearance
from flare_seg.training.phantom.bowel import STOMACH_GAP_MM, keep_stomach_in_front, stomach_in_front_rng
from flare_seg.training.phantom.coarse import Coarse
from flare_seg.training.phantom.params import case_rngs
from tests.training.phantom.helpers import _case_arrays, synth_small_case


def _occupancy(seed: int, in_front: bool):
    """The pancreas' and the stomach's occupancy on one 2 mm grid over the stomach (z, y, x)."""
    rng_anatomy, _, rng_hu, _ = case_rngs(seed)
    anatomy = AnatomyBuilder(rng_anatomy, sample_appearance(rng_hu)).build()
    if in_front:
        anatomy = keep_stomach_in_front(stomach_in_front_rng(seed), anatomy)
    parts = {p.name: p for p in anatomy.parts}
    grid = Coarse.covering(parts["stomach"].lo, parts["stomach"].hi, 2.0)
    return grid.evaluate(parts["pancreas"].shape) < 0, grid.evaluate(parts["stomach"].shape) < 0


@pytest.mark.parametrize("seed", [0, 2, 5])
def test_the_stomach_no_longer_wraps_the_pancreas_and_stays_in_front_of_it(seed):
    pancreas, stomach = _occupancy(seed, in_front=False)
    assert (pancreas & stomach).sum() > 0.05 * pancreas.sum()  # the tube ran through the gland
    pancreas, stomach = _occupancy(seed, in_front=True)
    assert pancreas.any() and stomach.sum() > 1000
    assert not (pancreas & stomach).any()
    # nowhere behind the gland (LPS +y, the grid's second axis) in the gland's own columns
    behind = np.logical_or.accumulate(pancreas, axis=1)
    assert not (behind & stomach).any()
    # and the fat gap: no stomach voxel right in front of the gland either
    front = np.zeros_like(pancreas)
    front[:, :-1] = pancreas[:, 1:]  # one 2 mm step in front of a gland voxel
    assert STOMACH_GAP_MM[0] >= 2.0 and not (front & stomach).any()


def test_the_organs_are_unchanged_and_only_the_image_around_them_moves(tmp_path):
    plain, plain_mask, _ = _case_arrays(7, PhantomOptions(size="small", flip_probability=0.0))
    image, mask, _ = _case_arrays(
        7, PhantomOptions(size="small", flip_probability=0.0, stomach_in_front=True)
    )
    np.testing.assert_array_equal(mask, plain_mask)  # a filler: it never takes an organ's voxel
    changed = image != plain
    # inside the organs only where the reconstruction's blur carries the change across a border
    core = ndimage.binary_erosion(mask > 0, iterations=3)
    assert changed.any() and not (changed & core).any()
    synth_small_case(tmp_path / "ds", "--stomach-in-front")

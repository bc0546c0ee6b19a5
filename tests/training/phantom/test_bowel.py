"""The empty stomach of ``collapsed_stomach``: a wall of rugal folds whose mucosa enhances."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from flare_seg.training.phantom import PhantomOptions, generate_case_with_info
from flare_seg.training.phantom.appearance import HU_RANGES, PHASES, sample_hu
from flare_seg.training.phantom.bowel import (
    MUCOSA_ENHANCEMENT_HU,
    StomachPlan,
    folds_hu,
    sample_stomach_plan,
    stomach_rng,
)
from tests.training.phantom.helpers import first_case_seed

PLAIN = PhantomOptions(size="small", flip_probability=0.0)
FOLDS = PhantomOptions(size="small", flip_probability=0.0, collapsed_stomach=True)


def test_the_plan_empties_half_of_the_stomachs_with_the_phase_s_mucosal_enhancement():
    plans = [sample_stomach_plan(stomach_rng(s), "portal_venous") for s in range(300)]
    share = np.mean([p.collapsed for p in plans])
    assert 0.4 < share < 0.6
    lo, hi = MUCOSA_ENHANCEMENT_HU[PHASES.index("portal_venous")]
    assert all(lo <= p.mucosa_hu <= hi and -40 <= p.submucosa_hu <= -10 for p in plans)
    assert {p.cleft for p in plans} == {"gas", "water"}
    # unenhanced mucosa is barely brighter than the wall; arterial mucosa always clearly so
    assert max(sample_stomach_plan(stomach_rng(s), "unenhanced").mucosa_hu for s in range(50)) <= 10
    assert min(sample_stomach_plan(stomach_rng(s), "arterial").mucosa_hu for s in range(50)) >= 30


class _Context:
    """What ``folds_hu`` reads of a paint context: the part's signed distance and fields on it."""

    def __init__(self, sdf: np.ndarray, xyz: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        self.sdf, self.xyz = sdf, xyz

    def field(self, fn):
        return np.asarray(fn(*self.xyz), np.float32)


def test_folds_paint_mucosa_on_crests_submucosa_between_and_fluid_in_deep_clefts():
    hu = sample_hu(np.random.default_rng(0), PHASES.index("portal_venous"))
    plan = sample_stomach_plan(stomach_rng(3), "portal_venous")
    plan = StomachPlan(True, plan.folds, 45.0, -25.0, "water")
    z, y, x = np.meshgrid(*(np.arange(0.0, 60.0, 1.0, np.float32),) * 3, indexing="ij")
    sdf = -np.minimum(np.minimum(x, 59 - x), np.minimum(y, 59 - y)).astype(np.float32)  # a slab's wall
    out = folds_hu(hu, plan)(_Context(sdf, (x, y, z)))
    pattern = plan.folds(x, y, z)
    wall = hu["bowel_wall"]
    assert np.allclose(out[pattern > 0], wall + 45.0)
    deep_cleft = (pattern < -1.0) & (sdf < -3.0)
    assert deep_cleft.any() and np.allclose(out[deep_cleft], hu["water"])
    between = (pattern <= 0) & ~deep_cleft
    assert np.allclose(out[between], wall - 25.0)
    # near the serosa a cleft stays wall, not fluid
    assert np.allclose(out[(pattern < -1.0) & (sdf >= -3.0)], wall - 25.0)
    assert HU_RANGES["bowel_wall"][PHASES.index("portal_venous")][0] <= wall


def _arrays(options: PhantomOptions, seed: int):
    image, mask, info = generate_case_with_info(seed, options)
    return sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(mask), info


def test_an_emptied_stomach_changes_the_image_only_not_the_labels_or_other_draws(tmp_path):
    """A case whose plan empties the stomach: the labels and the grid are the seed's, the image
    differs outside the organs (but for the blur at their borders), and the case records its
    stomach as empty. On the command line and recorded in dataset.json."""
    from flare_seg.cli import main

    # whether the plan empties the stomach does not depend on the phase (its first draw)
    seed = first_case_seed(lambda s: sample_stomach_plan(stomach_rng(s), "arterial").collapsed, 3000, 60)
    plain_image, plain_mask, plain_info = _arrays(PLAIN, seed)
    image, mask, info = _arrays(FOLDS, seed)
    assert info.stomach_collapsed is True and plain_info.stomach_collapsed is None
    assert info.size_xyz == plain_info.size_xyz and info.hu_means == plain_info.hu_means
    assert np.array_equal(mask, plain_mask)
    changed = image != plain_image
    organ_cores = ndimage.binary_erosion(mask > 0, iterations=3)
    assert changed.sum() > 200 and not changed[organ_cores].any()

    out = tmp_path / "ds"
    assert (
        main(["synth", str(out), "--cases", "1", "--seed", "5", "--size", "small", "--collapsed-stomach"])
        == 0
    )
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["options"]["collapsed_stomach"] is True
    (case,) = dataset["case_info"].values()
    assert isinstance(case["stomach_collapsed"], bool)

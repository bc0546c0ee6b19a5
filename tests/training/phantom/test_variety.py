"""The optional variety of the generator: a bony pelvis and wider soft-tissue intensities."""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import pytest
import SimpleITK as sitk

from flare_seg.training.phantom import PhantomOptions, case_seed, generate_case_with_info
from flare_seg.training.phantom.appearance import HU_RANGES
from flare_seg.training.phantom.variety import SPREAD_TISSUES
from tests.training.phantom.helpers import LABEL

PELVIS_SEED = case_seed(3000, 8)  # a small abdomen-pelvis case
PLAIN = PhantomOptions(size="small", flip_probability=0.0)


@cache
def _arrays(options: PhantomOptions, seed: int = PELVIS_SEED):
    image, mask, info = generate_case_with_info(seed, options)
    return sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(mask), info


def test_the_bony_pelvis_adds_bone_below_the_kidneys_and_leaves_the_upper_abdomen_alone():
    plain, plain_mask, info = _arrays(PLAIN)
    wings, wings_mask, _ = _arrays(PhantomOptions(size="small", flip_probability=0.0, iliac_wings=True))
    assert info.fov == "abdomen_pelvis"
    kidney_z = np.nonzero((plain_mask == LABEL["kidney"]).any(axis=(1, 2)))[0]
    # z index grows superiorly here (no flips): compare slices above the kidneys' top and below their bottom
    above = slice(int(kidney_z.max()) + 1, None)
    below = slice(0, int(kidney_z.min()) - 3)
    np.testing.assert_array_equal(wings[above], plain[above])
    # Bone where soft tissue was (the wings, acetabula, necks) and the thin shell in the wall gone.
    added = int(((wings[below] > 150) & (plain[below] < 100)).sum())
    removed = int(((plain[below] > 250) & (wings[below] < 100)).sum())
    assert added > 2000 and removed > 500
    # The organs are drawn from the same anatomy stream: the kidney mask is the same.
    np.testing.assert_array_equal(wings_mask == LABEL["kidney"], plain_mask == LABEL["kidney"])


def test_the_pelvis_is_symmetric_enough_to_be_a_pelvis():
    wings, _, _ = _arrays(PhantomOptions(size="small", flip_probability=0.0, iliac_wings=True))
    plain, _, _ = _arrays(PLAIN)
    added = (wings > 150) & (plain < 100)
    x = np.nonzero(added)[2]
    mid = wings.shape[2] / 2
    left, right = int((x > mid).sum()), int((x < mid).sum())
    assert min(left, right) > 0.4 * max(left, right)


def test_hu_spread_moves_soft_tissues_only_and_keeps_the_masks():
    _, plain_mask, plain_info = _arrays(PLAIN)
    spread_opts = PhantomOptions(size="small", flip_probability=0.0, hu_spread_hu=20.0)
    _, spread_mask, spread_info = _arrays(spread_opts)
    np.testing.assert_array_equal(spread_mask, plain_mask)
    moved = {k for k in plain_info.hu_means if abs(spread_info.hu_means[k] - plain_info.hu_means[k]) > 0.05}
    assert moved and moved <= set(SPREAD_TISSUES)
    for k in ("air", "fat", "cortical", "water", "oral_contrast"):
        assert spread_info.hu_means[k] == plain_info.hu_means[k]
    again = generate_case_with_info(PELVIS_SEED, spread_opts)[2]
    assert again.hu_means == spread_info.hu_means  # deterministic per seed


def test_hu_spread_reaches_beyond_the_textbook_ranges_over_many_cases():
    low, high = HU_RANGES["liver"][0][0], HU_RANGES["liver"][2][1]
    from flare_seg.training.phantom.appearance import sample_appearance
    from flare_seg.training.phantom.variety import spread_appearance, variety_rng

    livers = []
    for i in range(200):
        rng = np.random.default_rng(i)
        livers.append(spread_appearance(variety_rng(i), sample_appearance(rng), 20.0).hu["liver"])
    assert min(livers) < low - 20 and max(livers) > high  # fatty livers and bright enhanced ones


def test_options_are_checked_and_recorded(tmp_path):
    with pytest.raises(ValueError, match="hu_spread_hu"):
        PhantomOptions(hu_spread_hu=-1.0)
    from flare_seg.cli import main

    out = tmp_path / "ds"
    code = main(
        [
            "synth",
            str(out),
            "--cases",
            "1",
            "--seed",
            "5",
            "--size",
            "small",
            "--iliac-wings",
            "--hu-spread-hu",
            "12",
        ]
    )
    assert code == 0
    options = json.loads((out / "dataset.json").read_text())["options"]
    assert options["iliac_wings"] is True and options["hu_spread_hu"] == 12.0
    assert main(["synth", str(tmp_path / "bad"), "--cases", "1", "--hu-spread-hu", "-3"]) == 2

"""Lesions inside the labelled organs: kidney cysts and liver lesions, labelled as their organ."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from flare_seg.training.phantom import PhantomOptions, case_seed, generate_case_with_info
from flare_seg.training.phantom.lesions import lesion_rng, sample_lesions
from tests.training.phantom.helpers import LABEL

PLAIN = PhantomOptions(size="small", flip_probability=0.0)
LESIONS = PhantomOptions(size="small", flip_probability=0.0, lesions=True)


def _seed_with(predicate) -> int:
    for i in range(60):
        seed = case_seed(4000, i)
        if predicate(sample_lesions(lesion_rng(seed))):
            return seed
    raise AssertionError("no seed among 60 has the wanted lesions")


def _pair(seed: int):
    out = []
    for options in (PLAIN, LESIONS):
        image, mask, info = generate_case_with_info(seed, options)
        out.append((sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(mask), info))
    return out


def test_kidney_cysts_are_water_dense_kidney_label_and_may_bulge_out():
    seed = _seed_with(lambda p: len(p.left_kidney) + len(p.right_kidney) >= 3 and not p.liver)
    (plain, plain_mask, plain_info), (image, mask, info) = _pair(seed)
    assert plain_info.lesions is None and info.lesions is not None
    assert info.lesions["left_kidney"] + info.lesions["right_kidney"] >= 3
    kidney, plain_kidney = mask == LABEL["kidney"], plain_mask == LABEL["kidney"]
    # water-dense voxels inside the kidney label (the kidney's volume stays calibrated, cysts included)
    assert abs(int(kidney.sum()) - int(plain_kidney.sum())) < 0.1 * plain_kidney.sum()
    water = kidney & (image < 30)
    plain_water = plain_kidney & (plain < 30)
    assert water.sum() > plain_water.sum() + 20
    # the kidneys stay where they were (the lesion stream is separate from the anatomy's)
    overlap = 2 * (kidney & plain_kidney).sum() / (kidney.sum() + plain_kidney.sum())
    assert overlap > 0.8


def test_liver_lesions_are_darker_than_the_liver_and_keep_the_liver_label():
    seed = _seed_with(lambda p: len(p.liver) >= 2 and not p.left_kidney and not p.right_kidney)
    (plain, plain_mask, _), (image, mask, info) = _pair(seed)
    assert info.lesions is not None and info.lesions["liver"] >= 2
    liver, plain_liver = mask == LABEL["liver"], plain_mask == LABEL["liver"]
    assert liver.sum() >= plain_liver.sum()
    both = liver & plain_liver
    darker = both & (image < plain - 25)  # noise is the same: the seed's noise stream is unchanged
    assert darker.sum() > 30
    assert np.median(plain[darker]) - np.median(image[darker]) > 25


def test_lesion_plans_vary_and_are_deterministic():
    plans = [sample_lesions(lesion_rng(case_seed(4000, i))) for i in range(80)]
    assert sample_lesions(lesion_rng(case_seed(4000, 3))) == plans[3]
    with_cysts = sum(bool(p.left_kidney or p.right_kidney) for p in plans)
    with_liver = sum(bool(p.liver) for p in plans)
    large = sum(any(lesion.radius_mm >= 40 for lesion in p.liver) for p in plans)
    assert 20 < with_cysts < 70 and 20 < with_liver < 60 and large >= 1
    assert any(not p.liver and not p.left_kidney and not p.right_kidney for p in plans)


def test_lesions_are_recorded_and_on_the_command_line(tmp_path):
    from flare_seg.cli import main

    out = tmp_path / "ds"
    assert main(["synth", str(out), "--cases", "1", "--seed", "5", "--size", "small", "--lesions"]) == 0
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["options"]["lesions"] is True
    (info,) = dataset["case_info"].values()
    assert set(info["lesions"]) == {"left_kidney", "right_kidney", "liver"}

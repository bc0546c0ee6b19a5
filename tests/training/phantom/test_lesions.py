"""Lesions inside the labelled organs: kidney cysts and liver lesions, labelled as their organ."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from flare_seg.training.phantom import PhantomOptions, case_seed, generate_case_with_info
from flare_seg.training.phantom.lesions import lesion_rng, sample_lesions
from tests.training.phantom.helpers import LABEL, first_case_seed

PLAIN = PhantomOptions(size="small", flip_probability=0.0)
LESIONS = PhantomOptions(size="small", flip_probability=0.0, lesions=True)


def _seed_with(predicate) -> int:
    return first_case_seed(lambda seed: predicate(sample_lesions(lesion_rng(seed))), 4000, 60)


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


def test_liver_masses_come_in_a_third_of_cases_in_four_kinds():
    from flare_seg.training.phantom.lesions import LIVER_MASS_KINDS, liver_mass_rng, sample_liver_mass

    masses = [sample_liver_mass(liver_mass_rng(s), "arterial") for s in range(300)]
    drawn = [m for m in masses if m is not None]
    assert 0.25 < len(drawn) / len(masses) < 0.42
    assert {m.kind for m in drawn} == set(LIVER_MASS_KINDS)
    assert all(25 <= m.radius_mm <= 75 and m.grows_organ and not m.fluid for m in drawn)
    hyper = [m for m in drawn if m.kind == "hyperdense"]
    assert all(10 <= m.hu <= 50 for m in hyper)  # enhancing in the arterial phase
    unenhanced = [sample_liver_mass(liver_mass_rng(s), "unenhanced") for s in range(300)]
    assert all(m.hu < 0 for m in unenhanced if m is not None and m.kind == "hyperdense")
    necrotic = [m for m in drawn if m.kind == "necrotic"]
    assert all(0.3 <= m.core_fraction <= 0.7 and 5 <= m.core_hu <= 35 for m in necrotic)
    assert all(m.core_fraction == 0.0 for m in drawn if m.kind != "necrotic")


def test_a_large_mass_grows_the_liver_label_keeps_the_other_organs_and_is_recorded(tmp_path):
    """A necrotic mass: the liver label grows (by about the mass's volume), its core is far darker
    than the liver, and kidneys, spleen and pancreas are the seed's. On the command line and
    recorded in dataset.json."""
    from flare_seg.cli import main
    from flare_seg.training.phantom.lesions import liver_mass_rng, sample_liver_mass

    def necrotic(seed: int) -> bool:
        mass = sample_liver_mass(liver_mass_rng(seed), "portal_venous")
        return mass is not None and mass.kind == "necrotic" and mass.radius_mm > 40

    seed = first_case_seed(necrotic, 4000, 80)
    masses = PhantomOptions(size="small", flip_probability=0.0, liver_masses=1 / 3)
    (plain, plain_mask, plain_info), (image, mask, info) = (
        (sitk.GetArrayFromImage(i), sitk.GetArrayFromImage(m), n)
        for i, m, n in (generate_case_with_info(seed, o) for o in (PLAIN, masses))
    )
    assert info.liver_mass == "necrotic" and plain_info.liver_mass is None
    liver, plain_liver = mask == LABEL["liver"], plain_mask == LABEL["liver"]
    assert liver.sum() > 1.15 * plain_liver.sum()
    for organ in ("kidney", "spleen", "pancreas"):
        assert np.array_equal(mask == LABEL[organ], plain_mask == LABEL[organ]), organ
    mass = sample_liver_mass(liver_mass_rng(seed), info.phase)
    assert mass is not None
    core_hu = mass.core_hu
    dark = liver & (image < (core_hu + info.hu_means["liver"]) / 2)
    plain_dark = plain_liver & (plain < (core_hu + info.hu_means["liver"]) / 2)
    core_voxels = 4 / 3 * np.pi * (mass.core_fraction * mass.radius_mm) ** 3 / np.prod(info.spacing_xyz)
    assert dark.sum() - plain_dark.sum() > 0.3 * core_voxels

    out = tmp_path / "ds"
    args = ["synth", str(out), "--cases", "1", "--seed", "5", "--size", "small", "--liver-masses"]
    assert main(args) == 0
    dataset = json.loads((out / "dataset.json").read_text())
    from flare_seg.training.phantom.lesions import LIVER_MASS_SHARE

    assert dataset["options"]["liver_masses"] == pytest.approx(LIVER_MASS_SHARE)  # the flag's default
    every = tmp_path / "all"
    args = ["synth", str(every), "--cases", "2", "--seed", "5", "--size", "small", "--liver-masses", "1"]
    assert main(args) == 0
    cases = json.loads((every / "dataset.json").read_text())["case_info"].values()
    assert all(case["liver_mass"] for case in cases)
    assert main(["synth", str(tmp_path / "bad"), "--cases", "1", "--liver-masses", "1.5"]) == 2
    (case,) = dataset["case_info"].values()
    assert case["liver_mass"] in ("", "hypodense", "hyperdense", "necrotic", "heterogeneous")

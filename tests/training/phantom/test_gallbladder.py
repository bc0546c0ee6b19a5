"""The gallbladder in its fossa on the liver's underside (``PhantomOptions.gallbladder_fossa``)."""

from __future__ import annotations

import json

import numpy as np

from flare_seg.training.phantom import PhantomOptions, case_seed
from flare_seg.training.phantom.gallbladder import EMBED_RANGE
from tests.training.phantom.helpers import LABEL, _case, _case_arrays, first_case_seed

PLAIN = PhantomOptions(size="small", flip_probability=0.0)
FOSSA = PhantomOptions(size="small", flip_probability=0.0, gallbladder_fossa=True)


def test_the_gallbladder_is_carved_out_of_the_liver_underside_and_no_other_organ_changes():
    """Same seed with and without the option: the grid is unchanged, and no organ but the liver loses
    a voxel (the kidneys, spleen and pancreas can only get back voxels the generator's gallbladder
    took, fluid before); the liver loses voxels on its underside, about the recorded share of the
    gallbladder, that are fluid on the image (bile, darker than the liver they replace), and gets
    back the ones that the generator's gallbladder beside it took (fluid before, liver now). A
    distended one: a contracted one is mostly wall, brighter than bile."""

    def distended(s: int) -> bool:
        g = _case(s, FOSSA)[2].gallbladder
        return bool(g) and g["volume_ml"] > 15.0

    seed = first_case_seed(distended, 3000, 8)
    plain, plain_mask, plain_info = _case_arrays(seed, PLAIN)
    image, mask, info = _case_arrays(seed, FOSSA)
    assert info.size_xyz == plain_info.size_xyz and info.spacing_xyz == plain_info.spacing_xyz
    assert plain_info.gallbladder is None and info.gallbladder
    for organ in ("kidney", "spleen", "pancreas"):
        now, before = mask == LABEL[organ], plain_mask == LABEL[organ]
        assert not (before & ~now).any()
        if (now & ~before).any():
            assert np.median(plain[now & ~before]) < 45.0
    liver, plain_liver = mask == LABEL["liver"], plain_mask == LABEL["liver"]
    removed, gained = plain_liver & ~liver, liver & ~plain_liver
    voxel_ml = float(np.prod(info.spacing_xyz)) / 1000.0
    removed_ml = removed.sum() * voxel_ml
    inside_ml = info.gallbladder["embedded"] * info.gallbladder["volume_ml"]
    assert removed_ml > 1.0 and 0.5 * inside_ml < removed_ml < 2.0 * inside_ml
    # without flips: in front of the liver's centre (lower y index), and under liver (the slice
    # index runs from feet to head: liver at a higher index in the same column) for the most part
    assert np.nonzero(removed)[1].mean() < np.nonzero(plain_liver)[1].mean()
    liver_above = np.flip(np.logical_or.accumulate(np.flip(liver, 0), 0), 0)
    liver_above = np.concatenate([liver_above[1:], np.zeros_like(liver_above[:1])])
    assert liver_above[removed].mean() > 0.6
    # bile inside (the wall, where drawn, is a rim that enhances)
    assert np.percentile(image[removed], 25) < 45.0
    assert np.median(image[removed]) < np.median(plain[removed]) - 30.0
    if gained.any():
        assert np.median(plain[gained]) < 45.0
        assert np.median(image[gained]) > np.median(plain[gained]) + 30.0


def test_a_case_without_a_gallbladder_keeps_without_one():
    """A cholecystectomy case of the generator stays one: recorded as {} and the image unchanged."""
    seed = first_case_seed(lambda s: _case(s, FOSSA)[2].gallbladder == {}, 3000, 24)
    plain, plain_mask, _ = _case_arrays(seed, PLAIN)
    image, mask, _ = _case_arrays(seed, FOSSA)
    np.testing.assert_array_equal(image, plain)
    np.testing.assert_array_equal(mask, plain_mask)


def test_most_cases_get_a_gallbladder_embedded_in_the_liver_by_the_planned_share():
    """Across a dataset's first cases: most have one (the generator leaves it out in ~15%), and the
    recorded share inside the liver's outline is within the planned range on average."""
    infos = [_case(case_seed(3100, i), FOSSA)[2].gallbladder for i in range(8)]
    placed = [g for g in infos if g]
    assert len(placed) >= 5
    shares = np.array([g["embedded"] for g in placed])
    assert EMBED_RANGE[0] - 0.05 <= shares.mean() <= EMBED_RANGE[1]
    assert all(2.0 < g["volume_ml"] < 150.0 for g in placed)


def test_the_option_is_on_the_command_line_and_recorded_in_dataset_json(tmp_path):
    from flare_seg.cli import main

    out = tmp_path / "ds"
    args = ["synth", str(out), "--cases", "2", "--seed", "3000", "--size", "small", "--gallbladder-fossa"]
    assert main(args) == 0
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["options"]["gallbladder_fossa"] is True
    recorded = [case["gallbladder"] for case in dataset["case_info"].values()]
    assert all(isinstance(g, dict) for g in recorded)
    assert all(set(g) == {"volume_ml", "embedded", "wall", "sludge", "stones"} for g in recorded if g)

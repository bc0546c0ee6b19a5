"""The liver's fat-filled fissures (``PhantomOptions.liver_fissures``)."""

from __future__ import annotations

import json

import numpy as np
from scipy import ndimage

from flare_seg.training.phantom import PhantomOptions
from tests.training.phantom.helpers import LABEL, _case, _case_arrays, first_case_seed

PLAIN = PhantomOptions(size="small", flip_probability=0.0)
FISSURES = PhantomOptions(size="small", flip_probability=0.0, liver_fissures=True)


def test_the_umbilical_fissure_takes_fat_out_of_the_front_of_the_liver_and_nothing_else():
    """Same seed with and without the option: the grid and every other organ are unchanged, the
    liver only loses voxels (a few mL, in its front half: lower y index without flips), those
    voxels are fat on the image, and the liver stays one piece."""
    seed = first_case_seed(lambda s: "umbilical" in (_case(s, FISSURES)[2].liver_fissures or ()), 3000, 8)
    plain, plain_mask, plain_info = _case_arrays(seed, PLAIN)
    image, mask, info = _case_arrays(seed, FISSURES)
    assert info.size_xyz == plain_info.size_xyz and info.spacing_xyz == plain_info.spacing_xyz
    assert plain_info.liver_fissures is None and info.liver_fissures is not None
    for organ in ("kidney", "spleen", "pancreas"):
        np.testing.assert_array_equal(mask == LABEL[organ], plain_mask == LABEL[organ])
    liver, plain_liver = mask == LABEL["liver"], plain_mask == LABEL["liver"]
    assert not (liver & ~plain_liver).any()
    removed = plain_liver & ~liver
    voxel_ml = float(np.prod(info.spacing_xyz)) / 1000.0
    assert 1.0 < removed.sum() * voxel_ml < 0.03 * plain_liver.sum() * voxel_ml
    # in front of the liver's centre, and darker than liver: fat (blurred at the fissure's edges)
    assert np.nonzero(removed)[1].mean() < np.nonzero(plain_liver)[1].mean()
    assert np.median(image[removed]) < np.median(plain[removed]) - 60.0
    labels, _ = ndimage.label(liver)
    assert np.bincount(labels.ravel())[1:].max() > 0.99 * liver.sum()
    # outside the liver and its surroundings the image is the same
    far = ndimage.distance_transform_edt(~plain_liver) > 5
    np.testing.assert_array_equal(image[far], plain[far])


def test_the_option_is_on_the_command_line_and_recorded_in_dataset_json(tmp_path):
    from flare_seg.cli import main

    out = tmp_path / "ds"
    args = ["synth", str(out), "--cases", "2", "--seed", "3000", "--size", "small", "--liver-fissures"]
    assert main(args) == 0
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["options"]["liver_fissures"] is True
    recorded = [case["liver_fissures"] for case in dataset["case_info"].values()]
    assert all(isinstance(names, list) for names in recorded)
    assert set().union(*recorded) <= {"umbilical", "teres", "falciform", "venosum"}

"""Arms down beside the trunk: soft tissue and a humerus outside the body outline, background in
the mask."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from flare_seg.training.phantom import PhantomOptions, case_seed, generate_case_with_info
from flare_seg.training.phantom.arms import ARMS_DOWN_PROBABILITY, arms_rng

PLAIN = PhantomOptions(size="small", flip_probability=0.0)
ARMS = PhantomOptions(size="small", flip_probability=0.0, arms=True)


def _seed(down: bool) -> int:
    for i in range(40):
        seed = case_seed(4100, i)
        if (arms_rng(seed).random() < ARMS_DOWN_PROBABILITY) == down:
            return seed
    raise AssertionError("no such seed among 40")


def _body_components(image: np.ndarray, z: int) -> list[tuple[int, float]]:
    """(size, centre column) of each connected region above -500 HU on slice z."""
    from scipy import ndimage

    labels, n = ndimage.label(image[z] > -500)
    out = []
    for k in range(1, n + 1):
        cols = np.nonzero(labels == k)[1]
        out.append((int(cols.size), float(cols.mean())))
    return sorted(out, reverse=True)


def test_arms_down_lie_left_and_right_of_the_trunk_with_a_bone_and_no_label():
    from scipy import ndimage

    image, mask, info = generate_case_with_info(_seed(down=True), ARMS)
    assert info.arms_down is True
    a, m = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(mask)
    z = a.shape[0] // 2
    parts = _body_components(a, z)
    trunk, *others = parts
    arms = [p for p in others if p[0] > 0.03 * trunk[0]]
    assert len(arms) == 2, parts
    assert min(c for _, c in arms) < trunk[1] < max(c for _, c in arms)  # one on each side
    labels, _ = ndimage.label(a[z] > -500)
    trunk_id = np.bincount(labels.ravel())[1:].argmax() + 1
    limbs = (labels > 0) & (labels != trunk_id)
    assert not np.any(m[z][limbs])  # background in the mask
    assert a[z][limbs].max() > 250  # the humerus' cortex (blurred at this voxel size)
    assert np.median(a[z][limbs]) > -150  # soft tissue, not air


def test_without_arms_down_the_case_is_that_of_the_plain_options():
    seed = _seed(down=False)
    image, mask, info = generate_case_with_info(seed, ARMS)
    plain_image, plain_mask, plain_info = generate_case_with_info(seed, PLAIN)
    assert info.arms_down is False and plain_info.arms_down is None
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(plain_image))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(plain_mask))


def test_arms_are_recorded_and_on_the_command_line(tmp_path):
    from flare_seg.cli import main

    out = tmp_path / "ds"
    assert main(["synth", str(out), "--cases", "2", "--seed", "5", "--size", "small", "--arms"]) == 0
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["options"]["arms"] is True
    assert all(isinstance(info["arms_down"], bool) for info in dataset["case_info"].values())

"""Tests of the labelled organs: presence, volumes and anatomical sides."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from flare_seg.labels import LABELS
from flare_seg.training.phantom import PhantomOptions
from tests.training.phantom.helpers import (
    LABEL,
    SEEDS,
    SMALL,
    _case,
    _centroid_lps,
    _touches_top_or_bottom,
    _volume_ml,
)


def test_every_organ_appears_in_every_case() -> None:
    for seed in SEEDS:
        _, mask, _ = _case(seed)
        present = set(np.unique(sitk.GetArrayViewFromImage(mask)).tolist())
        assert present == set(LABELS), (seed, present)


def test_organ_volumes_are_plausible() -> None:
    ranges_ml = {"liver": (900, 2500), "kidney": (170, 480), "spleen": (100, 350), "pancreas": (40, 200)}
    checked = 0
    for seed in SEEDS:
        _, mask, _ = _case(seed)
        for name, (lo, hi) in ranges_ml.items():
            if _touches_top_or_bottom(mask, LABEL[name]):
                continue  # cut by the field of view
            checked += 1
            assert lo <= _volume_ml(mask, LABEL[name]) <= hi, (seed, name, _volume_ml(mask, LABEL[name]))
    assert checked >= 0.75 * len(SEEDS) * len(ranges_ml)


@pytest.mark.parametrize("options", [SMALL, PhantomOptions(size="small", flip_probability=1.0)])
def test_anatomy_sides_hold_in_physical_space(options: PhantomOptions) -> None:
    """Liver on the patient's right (smaller LPS x) of the spleen, kidneys posterior (larger LPS y)
    to the pancreas, whatever the direction matrix."""
    for seed in SEEDS[:4] if options == SMALL else SEEDS[:2]:
        _, mask, _ = _case(seed, options)
        liver, spleen = _centroid_lps(mask, LABEL["liver"]), _centroid_lps(mask, LABEL["spleen"])
        kidney, pancreas = _centroid_lps(mask, LABEL["kidney"]), _centroid_lps(mask, LABEL["pancreas"])
        assert liver[0] < spleen[0] - 50.0, seed
        assert kidney[1] > pancreas[1] + 10.0, seed
        assert spleen[2] > kidney[2], seed  # spleen above the kidneys

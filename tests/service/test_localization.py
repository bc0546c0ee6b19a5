"""The organs' box from heatmaps: main blobs, kidney pairs, cut-off organs and fallbacks."""

from __future__ import annotations

import numpy as np
import pytest

from flare_seg.service.localization import GROW_MM, TYPICAL_LENGTH_MM, plan_localization

SPACING = (6.0, 6.0, 6.0)
ORGAN_INDEX = {"liver": 0, "kidney": 1, "spleen": 2, "pancreas": 3}
# Boxes in voxels of the 6 mm grid, (z0, z1, y0, y1, x0, x1); canonical LPS: +x is the patient's left.
ABDOMEN = {
    "liver": (30, 50, 8, 30, 6, 30),
    "kidney": [(22, 40, 26, 34, 14, 22), (24, 42, 26, 34, 40, 48)],
    "spleen": (32, 48, 22, 34, 44, 54),
    "pancreas": (32, 38, 18, 24, 22, 42),
}


def heatmaps(shape_zyx=(60, 48, 64), organs=None) -> np.ndarray:
    heat = np.zeros((*shape_zyx, 4), np.float32)
    for name, boxes in (organs or ABDOMEN).items():
        for z0, z1, y0, y1, x0, x1 in boxes if isinstance(boxes, list) else [boxes]:
            heat[z0:z1, y0:y1, x0:x1, ORGAN_INDEX[name]] = 0.9
    return heat


def box_of(*boxes):
    z0 = min(b[0] for b in boxes)
    z1 = max(b[1] for b in boxes)
    y0 = min(b[2] for b in boxes)
    y1 = max(b[3] for b in boxes)
    x0 = min(b[4] for b in boxes)
    x1 = max(b[5] for b in boxes)
    return np.array([z0, y0, x0], float), np.array([z1, y1, x1], float)


def all_boxes(organs):
    out = []
    for boxes in organs.values():
        out.extend(boxes if isinstance(boxes, list) else [boxes])
    return out


def test_a_plausible_abdomen_gives_the_union_of_the_organs_and_no_warning():
    plan = plan_localization(heatmaps(), SPACING, 0.5)
    lo, hi = box_of(*all_boxes(ABDOMEN))
    assert plan.found and plan.warnings == () and plan.dropped == () and plan.missing == ()
    np.testing.assert_array_equal(plan.lo_zyx, lo)
    np.testing.assert_array_equal(plan.hi_zyx, hi)
    np.testing.assert_array_equal(plan.region_lo_zyx, lo)
    np.testing.assert_array_equal(plan.region_hi_zyx, hi)
    kidney = next(o for o in plan.organs if o.name == "kidney")
    assert kidney.lo_zyx[2] == 14 and kidney.hi_zyx[2] == 48  # both kidneys of the one label


def test_a_false_positive_blob_far_from_the_organ_does_not_stretch_the_box():
    """A pelvis mistaken for liver in a small blob below the kidneys: the liver's main blob wins."""
    heat = heatmaps()
    heat[2:10, 20:30, 10:20, 0] = 0.95  # liver false positive 120-170 mm below the liver
    heat[3:8, 30:34, 8:12, 1] = 0.9  # a kidney false positive in the pelvis, too small to be a kidney
    plan = plan_localization(heat, SPACING, 0.5)
    lo, hi = box_of(*all_boxes(ABDOMEN))
    np.testing.assert_array_equal(plan.lo_zyx, lo)
    np.testing.assert_array_equal(plan.hi_zyx, hi)
    assert plan.warnings == ()


def test_a_rival_blob_as_large_as_the_organ_is_told_apart_by_the_other_organs():
    """An oblique abdomen-pelvis scan: the liver's heatmap fires in the pelvis with slightly more
    mass than on the liver. Taken alone, the pelvic blob would win and the liver would then be
    dropped as a height outlier; chosen with the other organs, the real liver is kept."""
    heat = heatmaps(shape_zyx=(80, 48, 64), organs={k: v for k, v in ABDOMEN.items() if k != "liver"})
    heat[30:50, 8:30, 6:30, 0] = 0.9  # the liver, as in ABDOMEN (20 x 22 x 24 voxels)
    heat[0:14, 8:30, 2:40, 0] = 0.9  # the pelvis, 165 mm lower, a little larger (14 x 22 x 38)
    plan = plan_localization(heat, SPACING, 0.5)
    assert plan.dropped == () and plan.warnings == ()
    liver = next(o for o in plan.organs if o.name == "liver")
    assert liver.lo_zyx == (30.0, 8.0, 6.0) and liver.hi_zyx == (50.0, 30.0, 30.0)
    lo, hi = box_of(*all_boxes(ABDOMEN))
    np.testing.assert_array_equal(plan.lo_zyx, lo)
    np.testing.assert_array_equal(plan.hi_zyx, hi)


def test_rival_blobs_that_fit_the_layout_equally_leave_the_largest():
    """Two kidney pairs both within the layout's height range: the heavier pair is kept."""
    organs = dict(ABDOMEN, kidney=[(22, 40, 26, 34, 14, 22), (24, 42, 26, 34, 40, 48)])
    heat = heatmaps(organs=organs)
    heat[46:56, 26:34, 14:22, 1] = 0.9  # a smaller pair higher up, still within range
    heat[46:56, 26:34, 40:48, 1] = 0.9
    plan = plan_localization(heat, SPACING, 0.5)
    kidney = next(o for o in plan.organs if o.name == "kidney")
    assert kidney.lo_zyx[0] == 22 and kidney.hi_zyx[0] == 42


def test_an_organ_cut_off_at_the_top_of_the_scan_extends_the_box_but_not_the_region():
    """A scan that starts below the diaphragm: the liver (120 mm seen) and spleen reach the top face.
    The region to segment ends at the edge; the organs' box runs on to the liver's typical 150 mm,
    so its centre is where it would be had the scan shown the whole liver."""
    organs = dict(ABDOMEN, liver=(40, 60, 8, 30, 6, 30), spleen=(45, 60, 22, 34, 44, 54))
    plan = plan_localization(heatmaps(organs=organs), SPACING, 0.5)
    assert plan.found and plan.warnings == ()
    liver = next(o for o in plan.organs if o.name == "liver")
    assert liver.touches_edge and liver.hi_zyx[0] == 60
    assert plan.region_hi_zyx[0] == 60 and plan.region_lo_zyx[0] == 22
    assert plan.hi_zyx[0] == pytest.approx(40 + TYPICAL_LENGTH_MM["liver"] / 6.0)
    assert plan.lo_zyx[0] == 22


def test_an_organ_long_enough_or_inside_the_scan_is_not_extended():
    organs = dict(ABDOMEN, liver=(30, 60, 8, 30, 6, 30))  # 180 mm seen: longer than typical
    plan = plan_localization(heatmaps(organs=organs), SPACING, 0.5)
    assert plan.hi_zyx[0] == 60
    np.testing.assert_array_equal(
        plan_localization(heatmaps(), SPACING, 0.5).hi_zyx, box_of(*all_boxes(ABDOMEN))[1]
    )


def test_kidneys_cut_off_at_the_bottom_extend_the_box_downwards():
    """A scan that ends above the kidneys' lower poles (the organs above them where they lie)."""
    organs = {
        "liver": (12, 32, 8, 30, 6, 30),
        "kidney": [(0, 12, 26, 34, 14, 22), (0, 14, 26, 34, 40, 48)],
        "spleen": (14, 30, 22, 34, 44, 54),
        "pancreas": (12, 18, 18, 24, 22, 42),
    }
    heat = heatmaps(organs=organs)
    plan = plan_localization(heat, SPACING, 0.5)
    assert plan.region_lo_zyx[0] == 0
    assert plan.lo_zyx[0] == pytest.approx(14 - TYPICAL_LENGTH_MM["kidney"] / 6.0)


def test_a_heatmap_spanning_more_than_an_organ_can_is_dropped_and_the_region_grown():
    """A liver heatmap that runs from the abdomen down through the pelvis (one blob, 336 mm)."""
    heat = heatmaps(shape_zyx=(70, 48, 64))
    heat[0:56, 8:30, 6:30, 0] = 0.9
    plan = plan_localization(heat, SPACING, 0.5)
    assert plan.dropped == ("liver",) and plan.found
    assert any("liver" in w and "336 mm" in w for w in plan.warnings)
    assert any("grown" in w for w in plan.warnings)
    rest = {k: v for k, v in ABDOMEN.items() if k != "liver"}
    lo, hi = box_of(*all_boxes(rest))
    np.testing.assert_array_equal(plan.lo_zyx, lo)
    np.testing.assert_array_equal(plan.hi_zyx, hi)
    grow = GROW_MM / 6.0
    np.testing.assert_allclose(plan.region_lo_zyx, np.maximum(lo - grow, 0))
    np.testing.assert_allclose(plan.region_hi_zyx, np.minimum(hi + grow, (70, 48, 64)))


def test_a_spleen_on_the_patients_right_of_the_liver_is_dropped():
    organs = dict(ABDOMEN, spleen=(32, 48, 22, 34, 2, 8))
    plan = plan_localization(heatmaps(organs=organs), SPACING, 0.5)
    assert plan.dropped == ("spleen",)
    assert any("spleen" in w and "left" in w for w in plan.warnings)


def test_an_organ_far_in_height_from_the_others_is_dropped():
    heat = heatmaps(shape_zyx=(100, 48, 64))
    heat[..., 3] = 0.0
    heat[80:86, 18:24, 22:42, 3] = 0.9  # pancreas ~250 mm above the other organs
    plan = plan_localization(heat, SPACING, 0.5)
    assert plan.dropped == ("pancreas",)
    assert plan.hi_zyx[0] == 50


def test_a_spleen_in_the_pelvis_of_a_scan_that_starts_mid_liver_is_dropped():
    """The real failure: the top of the scan cuts the liver, and the spleen's only blob is a
    small one in the pelvis, ~180 mm below the others (the old check, against a median that
    counted the spleen itself and allowed 200 mm, kept it and stretched the box over the pelvis)."""
    organs = {
        "liver": (36, 48, 14, 29, 11, 26),
        "kidney": [(35, 48, 26, 34, 16, 24), (36, 48, 26, 34, 41, 49)],
        "spleen": (9, 16, 31, 37, 48, 54),
        "pancreas": (41, 46, 18, 22, 25, 29),
    }
    plan = plan_localization(heatmaps(shape_zyx=(48, 51, 61), organs=organs), SPACING, 0.5)
    assert plan.dropped == ("spleen",)
    assert any("spleen" in w and "in height" in w for w in plan.warnings)
    assert plan.lo_zyx[0] >= 35  # the box no longer reaches down into the pelvis
    assert plan.region_lo_zyx[0] == pytest.approx(35 - GROW_MM / 6.0)


def test_the_height_check_compares_each_organ_with_the_others_only():
    """With three organs, an outlier 160 mm below the other two is dropped, and the two are kept:
    compared with a median that counted the outlier, each of them would look 80 mm off."""
    organs = {
        "liver": (40, 56, 8, 30, 6, 30),
        "kidney": [(36, 50, 26, 34, 14, 22), (36, 50, 26, 34, 40, 48)],
        "spleen": (12, 20, 22, 34, 44, 54),
    }
    plan = plan_localization(heatmaps(shape_zyx=(60, 48, 64), organs=organs), SPACING, 0.5)
    assert plan.dropped == ("spleen",) and plan.missing == ("pancreas",)
    assert {o.name for o in plan.organs} == {"liver", "kidney"}


def test_low_kidneys_within_anatomical_range_are_kept():
    """Kidneys 110 mm below the median of the others (the lowest the phantoms hold, plus margin)
    are normal anatomy, not an outlier."""
    organs = dict(ABDOMEN, kidney=[(10, 26, 26, 34, 14, 22), (10, 26, 26, 34, 40, 48)])
    plan = plan_localization(heatmaps(organs=organs), SPACING, 0.5)
    assert plan.dropped == () and plan.warnings == ()


def test_no_heatmap_above_the_threshold_gives_the_whole_grid_without_a_plan_warning():
    plan = plan_localization(np.full((16, 20, 24, 4), 0.2, np.float32), SPACING, 0.5)
    assert (
        not plan.found and plan.warnings == () and plan.missing == ("liver", "kidney", "spleen", "pancreas")
    )
    np.testing.assert_array_equal(plan.lo_zyx, (0, 0, 0))
    np.testing.assert_array_equal(plan.hi_zyx, (16, 20, 24))


def test_only_implausible_heatmaps_fall_back_to_the_whole_grid_with_a_warning():
    heat = np.zeros((80, 48, 64, 4), np.float32)
    heat[..., 0] = 0.9  # the whole 480 mm scan is "liver"
    plan = plan_localization(heat, SPACING, 0.5)
    assert not plan.found and plan.dropped == ("liver",)
    assert any("whole image" in w for w in plan.warnings)
    np.testing.assert_array_equal(plan.region_hi_zyx, (80, 48, 64))


def test_a_missing_organ_grows_the_region_but_not_the_box():
    organs = {k: v for k, v in ABDOMEN.items() if k != "pancreas"}
    plan = plan_localization(heatmaps(organs=organs), SPACING, 0.5)
    assert plan.missing == ("pancreas",) and plan.warnings == ()
    assert np.all(plan.region_lo_zyx <= plan.lo_zyx) and np.any(plan.region_lo_zyx < plan.lo_zyx)


def test_anisotropic_spacing_is_used_for_the_anatomical_limits():
    """The same 40-voxel liver is plausible at 6 mm (240 mm) and not at 9 mm (360 mm) along z."""
    heat = heatmaps(shape_zyx=(60, 48, 64), organs={"liver": (5, 45, 8, 30, 6, 30)})
    assert plan_localization(heat, (6.0, 6.0, 6.0), 0.5).dropped == ()
    assert plan_localization(heat, (9.0, 6.0, 6.0), 0.5).dropped == ("liver",)


def test_heatmaps_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match="heatmaps"):
        plan_localization(np.zeros((4, 4, 4, 3), np.float32), SPACING, 0.5)

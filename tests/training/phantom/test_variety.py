"""The optional variety of the generator: a bony pelvis, wider soft-tissue intensities, and organ
size, shape and bone density beyond the textbook."""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import pytest
import SimpleITK as sitk

from flare_seg.training.phantom import PhantomInfo, PhantomOptions, case_seed, generate_case_with_info
from flare_seg.training.phantom.anatomy import AnatomyBuilder, OrganVariety
from flare_seg.training.phantom.appearance import HU_RANGES, sample_appearance
from flare_seg.training.phantom.organs import measure_ml
from flare_seg.training.phantom.params import case_rngs
from flare_seg.training.phantom.variety import SPREAD_TISSUES, organ_variety_rng, sample_organ_variety
from tests.training.phantom.helpers import LABEL, first_case_seed, synth_small_case

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


# ----------------------------------------------------------------------------- anatomy variety

VARIETY = PhantomOptions(size="small", flip_probability=0.0, anatomy_variety=True)


def _variety_case(seed: int):
    """A case drawn with anatomy_variety, and the same seed without it."""
    return _arrays(VARIETY, seed), _arrays(PLAIN, seed)


def _seed_where(predicate, draw=lambda seed: sample_organ_variety(organ_variety_rng(seed))) -> int:
    """The first case seed of dataset seed 3000 whose variety (``draw(seed)``: by default that of
    anatomy_variety) satisfies ``predicate``."""
    return first_case_seed(lambda seed: predicate(draw(seed)), 3000, 40)


def _plain_and_with(option: str, predicate, draw) -> tuple[np.ndarray, np.ndarray, PhantomInfo]:
    """For the first case seed whose ``draw(seed)`` satisfies ``predicate``: its mask without and
    with ``option`` on (small, no flips), after checking that the option keeps the seed's grid."""
    seed = _seed_where(predicate, draw)
    _, plain_mask, plain_info = _arrays(PLAIN, seed)
    _, mask, info = _arrays(PhantomOptions(size="small", flip_probability=0.0, **{option: True}), seed)
    assert info.size_xyz == plain_info.size_xyz and info.spacing_xyz == plain_info.spacing_xyz
    return plain_mask, mask, info


def _organ_ml(seed: int, variety: OrganVariety) -> dict[str, float]:
    """Each organ's volume (mL, on a 3 mm grid) in the anatomy of ``seed`` drawn with ``variety``."""
    rng_anatomy, _, rng_hu, _ = case_rngs(seed)
    anatomy = AnatomyBuilder(rng_anatomy, sample_appearance(rng_hu), variety).build()
    return {p.name: measure_ml(p.shape, p.lo, p.hi) for p in anatomy.parts if p.code in LABEL.values()}


def test_an_atrophic_pancreas_is_thinner_and_the_other_organs_keep_their_size():
    plain = _organ_ml(PELVIS_SEED, OrganVariety())
    atrophic = _organ_ml(PELVIS_SEED, OrganVariety(pancreas_thickness=0.6))
    # the cross-section shrinks by about the factor squared (less: the length stays)
    assert 0.15 * plain["pancreas"] < atrophic["pancreas"] < 0.6 * plain["pancreas"]
    # the organs drawn before it (same anatomy stream) keep their volume
    for name in ("liver", "spleen"):
        assert atrophic[name] == pytest.approx(plain[name], rel=0.02)
    seed = _seed_where(lambda v: v.pancreas_thickness < 0.65)
    _, _, info = _arrays(VARIETY, seed)
    assert info.organ_variety is not None and info.organ_variety["pancreas_thickness"] < 0.65
    assert _arrays(PLAIN, seed)[2].organ_variety is None


def test_osteopenic_bone_is_no_brighter_than_an_enhanced_kidney():
    infos = [generate_case_with_info(case_seed(3000, i), VARIETY)[2] for i in range(12)]
    cancellous = [i.hu_means["cancellous"] for i in infos]
    low, _ = HU_RANGES["cancellous"][0]
    assert min(cancellous) < 200 <= low  # some osteopenic cases, below the textbook range
    assert max(cancellous) >= low  # and some normal ones
    for i in infos:
        assert i.hu_means["cortical"] >= i.hu_means["cancellous"] + 100  # the cortex stays denser


def test_organ_variety_reaches_deeper_livers_and_spleens_and_is_deterministic():
    factors = [sample_organ_variety(organ_variety_rng(case_seed(3000, i))) for i in range(60)]
    assert max(f.liver_depth for f in factors) > 1.2 and max(f.spleen_depth for f in factors) > 1.3
    assert (
        min(f.pancreas_thickness for f in factors) < 0.6 and max(f.pancreas_thickness for f in factors) > 0.9
    )
    assert sample_organ_variety(organ_variety_rng(7)) == sample_organ_variety(organ_variety_rng(7))
    # the variety has its own stream: the bony pelvis and HU spread draws are unchanged by it
    both = PhantomOptions(size="small", flip_probability=0.0, hu_spread_hu=15.0, anatomy_variety=True)
    spread = PhantomOptions(size="small", flip_probability=0.0, hu_spread_hu=15.0)
    a, b = generate_case_with_info(PELVIS_SEED, both)[2], generate_case_with_info(PELVIS_SEED, spread)[2]
    assert {k: v for k, v in a.hu_means.items() if k not in ("cancellous", "cortical", "rib")} == {
        k: v for k, v in b.hu_means.items() if k not in ("cancellous", "cortical", "rib")
    }


def test_a_deeper_abdomen_holds_a_deeper_liver():
    (_, mask, info), (_, plain_mask, _) = _variety_case(_seed_where(lambda v: v.cavity_depth > 1.25))
    assert info.organ_variety is not None and info.organ_variety["cavity_depth"] > 1.25

    def depth_over_width(m: np.ndarray, label: int) -> float:
        _, y, x = np.nonzero(m == label)
        return float(np.ptp(y) / np.ptp(x))

    # (in-plane pixels are square, so the ratio is the same in mm)
    assert depth_over_width(mask, LABEL["liver"]) > depth_over_width(plain_mask, LABEL["liver"])


def test_anatomy_variety_is_recorded_and_on_the_command_line(tmp_path):
    (info,) = synth_small_case(tmp_path / "ds", "--anatomy-variety")["case_info"].values()
    assert set(info["organ_variety"]) == {
        "pancreas_thickness",
        "liver_depth",
        "spleen_depth",
        "spleen_tilt",
        "cavity_width",
        "cavity_depth",
        "spleen_flank_deg",
        "spleen_inset",
        "pancreas_fat_fraction",
        "pancreas_lobule_mm",
        "pancreas_lobule_seed",
        "liver_left_lobe",
        "liver_forward_mm",
        "kidney_rise_mm",
        "kidney_turn_deg",
        "kidney_lean",
        "spleen_volume",
        "spleen_rise_mm",
        "liver_left_lobe_drop_mm",
        "liver_left_lobe_thickness",
        "liver_left_lobe_height",
        "liver_left_lobe_front_mm",
        "pancreas_forward_mm",
        "pancreas_tail_drop_mm",
    }
    # the spleen's position stays the textbook one without --lateral-spleen, the pancreas without
    # fat, the organ layout without --organ-layout, the left liver lobe without --low-left-lobe
    # and --thin-left-lobe, the pancreas' distance from the aorta without --pancreas-forward
    assert info["organ_variety"]["spleen_flank_deg"] == 0.0 and info["organ_variety"]["spleen_inset"] == 1.0
    assert info["organ_variety"]["pancreas_fat_fraction"] == 0.0
    assert info["organ_variety"]["kidney_rise_mm"] == 0.0 and info["organ_variety"]["spleen_volume"] == 1.0
    assert info["organ_variety"]["liver_left_lobe_drop_mm"] == 0.0
    assert info["organ_variety"]["liver_left_lobe_thickness"] == 1.0
    assert info["organ_variety"]["pancreas_forward_mm"] == 0.0


def test_lateral_spleen_moves_the_spleen_out_to_the_flank_and_leaves_the_rest():
    """In cases it moves (60%), the spleen's centre lies further left (LPS +x) of the body's midline,
    with its volume calibrated as before; the liver and kidneys are unchanged (same anatomy stream)."""
    from flare_seg.training.phantom.variety import lateral_spleen_rng, lateral_spleen_variety

    draws = [lateral_spleen_variety(lateral_spleen_rng(s), None) for s in range(200)]
    moved = [v for v in draws if v.spleen_flank_deg > 0]
    assert 0.5 < len(moved) / len(draws) < 0.7
    assert all(5 <= v.spleen_flank_deg <= 20 and 0.5 <= v.spleen_inset <= 0.9 for v in moved)
    unmoved = [v for v in draws if v.spleen_flank_deg == 0]
    assert all(v == OrganVariety() for v in unmoved)
    # the other variety factors are kept
    kept = lateral_spleen_variety(lateral_spleen_rng(1), OrganVariety(liver_depth=1.2))
    assert kept.liver_depth == 1.2

    seed = _seed_where(
        lambda v: v.spleen_flank_deg > 12, lambda s: lateral_spleen_variety(lateral_spleen_rng(s), None)
    )
    _, plain_mask, _ = _arrays(PLAIN, seed)
    lateral = PhantomOptions(size="small", flip_probability=0.0, lateral_spleen=True)
    _, mask, info = _arrays(lateral, seed)
    assert info.organ_variety is not None and info.organ_variety["spleen_flank_deg"] > 12

    def spleen_x(m):
        return float(np.nonzero(m == LABEL["spleen"])[2].mean())

    # no flips: the x index grows to the patient's left; the spleen moves out by at least 2 voxels
    assert spleen_x(mask) > spleen_x(plain_mask) + 2
    for organ in ("liver", "kidney"):
        np.testing.assert_array_equal(mask == LABEL[organ], plain_mask == LABEL[organ])
    plain_ml, lateral_ml = ((m == LABEL["spleen"]).sum() for m in (plain_mask, mask))
    assert 0.8 < lateral_ml / plain_ml < 1.25


def test_a_fatty_pancreas_is_lobulated_darker_and_thinner_and_leaves_the_rest():
    """In cases it changes (60%), the pancreas holds fat between its lobules (so it averages near
    water, not at soft-tissue HU, with fat-dark voxels inside its label) and is thinner; the liver,
    kidneys and spleen are unchanged (the anatomy stream's draws are those of the seed)."""
    from flare_seg.training.phantom.variety import fatty_pancreas_rng, fatty_pancreas_variety

    draws = [fatty_pancreas_variety(fatty_pancreas_rng(s), None) for s in range(200)]
    fatty = [v for v in draws if v.pancreas_fat_fraction > 0]
    assert 0.5 < len(fatty) / len(draws) < 0.7
    assert all(0.2 <= v.pancreas_fat_fraction <= 0.5 and 0.6 <= v.pancreas_thickness <= 0.9 for v in fatty)
    assert all(v == OrganVariety() for v in draws if v.pancreas_fat_fraction == 0)
    assert len({v.pancreas_lobule_seed for v in fatty}) == len(fatty)
    # an atrophic pancreas of --anatomy-variety gets thinner still
    thinner = fatty_pancreas_variety(fatty_pancreas_rng(3), OrganVariety(pancreas_thickness=0.5))
    assert thinner.pancreas_thickness < 0.5

    seed = _seed_where(
        lambda v: v.pancreas_fat_fraction > 0.35,
        lambda s: fatty_pancreas_variety(fatty_pancreas_rng(s), None),
    )
    plain_image, plain_mask, _ = _arrays(PLAIN, seed)
    options = PhantomOptions(size="small", flip_probability=0.0, fatty_pancreas=True)
    image, mask, info = _arrays(options, seed)
    assert info.organ_variety is not None and info.organ_variety["pancreas_fat_fraction"] > 0.35
    pancreas, plain_pancreas = mask == LABEL["pancreas"], plain_mask == LABEL["pancreas"]
    assert pancreas.sum() < 0.9 * plain_pancreas.sum()
    assert np.median(image[pancreas]) < np.median(plain_image[plain_pancreas]) - 25
    assert np.percentile(image[pancreas], 10) < -40  # fat clefts inside the label
    for organ in ("liver", "kidney", "spleen"):
        changed = (mask == LABEL[organ]) != (plain_mask == LABEL[organ])
        assert changed.sum() <= 0.01 * (plain_mask == LABEL[organ]).sum()  # only where the pancreas let go


def test_fatty_pancreas_is_on_the_command_line_and_recorded(tmp_path):
    from flare_seg.cli import main

    out = tmp_path / "ds"
    args = ["synth", str(out), "--cases", "1", "--seed", "5", "--size", "small", "--fatty-pancreas"]
    assert main(args) == 0
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["options"]["fatty_pancreas"] is True
    (info,) = dataset["case_info"].values()
    assert "pancreas_fat_fraction" in info["organ_variety"]


def test_organ_layout_draws_its_factors_in_most_cases_and_keeps_the_others():
    from flare_seg.training.phantom.variety import organ_layout_rng, organ_layout_variety

    draws = [organ_layout_variety(organ_layout_rng(s), None) for s in range(200)]
    moved = [v for v in draws if v.spleen_volume > 1.0]
    assert 0.6 < len(moved) / len(draws) < 0.8
    assert all(v == OrganVariety() for v in draws if v.spleen_volume == 1.0)
    for v in moved:
        assert 1.0 <= v.liver_left_lobe <= 1.4 and 0 <= v.liver_forward_mm <= 20
        assert 0 <= v.kidney_rise_mm <= 20 and 0 <= v.kidney_turn_deg <= 25 and 0 <= v.kidney_lean <= 0.35
        assert 1.0 <= v.spleen_volume <= 1.6 and 0 <= v.spleen_rise_mm <= 15
    kept = organ_layout_variety(organ_layout_rng(1), OrganVariety(liver_depth=1.2, spleen_flank_deg=9.0))
    assert kept.liver_depth == 1.2 and kept.spleen_flank_deg == 9.0


def test_organ_layout_raises_the_kidneys_enlarges_the_spleen_and_the_left_liver_lobe(tmp_path):
    """Where it draws large factors, the kidneys lie higher (LPS +z: a higher slice index without
    flips), the spleen is larger, and the liver reaches further to the patient's left (+x); the
    case is otherwise the seed's (same grid). On the command line and recorded in dataset.json."""
    from flare_seg.cli import main
    from flare_seg.training.phantom.variety import organ_layout_rng, organ_layout_variety

    seed = _seed_where(
        lambda v: v.kidney_rise_mm > 12 and v.spleen_volume > 1.3 and v.liver_left_lobe > 1.2,
        lambda s: organ_layout_variety(organ_layout_rng(s), None),
    )
    _, plain_mask, plain_info = _arrays(PLAIN, seed)
    layout = PhantomOptions(size="small", flip_probability=0.0, organ_layout=True)
    _, mask, info = _arrays(layout, seed)
    assert info.size_xyz == plain_info.size_xyz and info.spacing_xyz == plain_info.spacing_xyz
    assert info.organ_variety is not None and info.organ_variety["kidney_rise_mm"] > 12
    dz = info.spacing_xyz[2]

    def centroid(m, organ, axis):
        return float(np.nonzero(m == LABEL[organ])[axis].mean())

    assert (centroid(mask, "kidney", 0) - centroid(plain_mask, "kidney", 0)) * dz > 8.0
    spleen_ml, plain_spleen_ml = ((m == LABEL["spleen"]).sum() for m in (mask, plain_mask))
    assert spleen_ml > 1.15 * plain_spleen_ml
    leftmost, plain_leftmost = (np.nonzero(m == LABEL["liver"])[2].max() for m in (mask, plain_mask))
    assert leftmost > plain_leftmost

    out = tmp_path / "ds"
    assert main(["synth", str(out), "--cases", "1", "--seed", "5", "--size", "small", "--organ-layout"]) == 0
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["options"]["organ_layout"] is True
    (case,) = dataset["case_info"].values()
    assert "kidney_rise_mm" in case["organ_variety"]


def test_low_left_lobe_draws_its_drop_in_most_cases_and_keeps_the_others():
    from flare_seg.training.phantom.variety import low_left_lobe_rng, low_left_lobe_variety

    draws = [low_left_lobe_variety(low_left_lobe_rng(s), None) for s in range(200)]
    dropped = [v.liver_left_lobe_drop_mm for v in draws if v.liver_left_lobe_drop_mm > 0]
    assert 0.5 < len(dropped) / len(draws) < 0.7
    assert all(10.0 <= d <= 35.0 for d in dropped)
    assert all(v == OrganVariety() for v in draws if v.liver_left_lobe_drop_mm == 0)
    kept = low_left_lobe_variety(low_left_lobe_rng(3), OrganVariety(liver_left_lobe=1.3, kidney_rise_mm=5.0))
    assert kept.liver_left_lobe == 1.3 and kept.kidney_rise_mm == 5.0


def test_low_left_lobe_lowers_the_liver_left_of_the_midline(tmp_path):
    """Where it draws a large drop, the liver's leftmost part (the 30% of its width furthest to
    the patient's left, +x: a higher column index without flips) reaches lower (LPS -z: a lower
    slice index), closer to the right lobe's lowest point; the grid is the seed's. On the command
    line and in dataset.json."""
    from flare_seg.training.phantom.variety import low_left_lobe_rng, low_left_lobe_variety

    plain_mask, mask, info = _plain_and_with(
        "low_left_lobe",
        lambda v: v.liver_left_lobe_drop_mm > 25.0,
        lambda s: low_left_lobe_variety(low_left_lobe_rng(s), None),
    )
    assert info.organ_variety is not None and info.organ_variety["liver_left_lobe_drop_mm"] > 25.0

    def left_lobe_bottom_mm(m):
        z, _, x = np.nonzero(m == LABEL["liver"])
        left = x > x.min() + 0.7 * (x.max() - x.min())
        return (z[left].min() - z.min()) * info.spacing_xyz[2]  # above the liver's lowest slice

    assert left_lobe_bottom_mm(mask) < left_lobe_bottom_mm(plain_mask) - 20.0

    (case,) = synth_small_case(tmp_path / "ds", "--low-left-lobe")["case_info"].values()
    assert "liver_left_lobe_drop_mm" in case["organ_variety"]


def test_thin_left_lobe_draws_its_plate_in_most_cases_and_keeps_the_others():
    from flare_seg.training.phantom.variety import thin_left_lobe_rng, thin_left_lobe_variety

    draws = [thin_left_lobe_variety(thin_left_lobe_rng(s), None) for s in range(200)]
    plates = [v for v in draws if v.liver_left_lobe_thickness < 1.0]
    assert 0.5 < len(plates) / len(draws) < 0.7
    assert all(0.3 <= v.liver_left_lobe_thickness <= 0.5 for v in plates)
    assert all(
        1.0 <= v.liver_left_lobe_height <= 1.3 and -4.0 <= v.liver_left_lobe_front_mm <= 4.0 for v in plates
    )
    assert all(v == OrganVariety() for v in draws if v.liver_left_lobe_thickness == 1.0)
    kept = thin_left_lobe_variety(thin_left_lobe_rng(3), OrganVariety(liver_left_lobe_drop_mm=20.0))
    assert kept.liver_left_lobe_drop_mm == 20.0


def _left_lobe_columns(mask: np.ndarray, spacing_zyx) -> tuple[float, float]:
    """Over the liver's leftmost 30% (+x without flips), the median antero-posterior thickness of
    its (z, x) columns and its front (the 10th percentile of y, LPS: from the grid's front), mm."""
    z, y, x = np.nonzero(mask == LABEL["liver"])
    left = x > x.min() + 0.7 * (x.max() - x.min())
    z, y, x = z[left], y[left], x[left]
    column = z * mask.shape[2] + x
    order = np.argsort(column)
    starts = np.r_[0, np.nonzero(np.diff(column[order]))[0] + 1]
    ys = y[order]
    thickness = np.maximum.reduceat(ys, starts) - np.minimum.reduceat(ys, starts) + 1
    return float(np.median(thickness)) * spacing_zyx[1], float(np.percentile(y, 10)) * spacing_zyx[1]


def test_thin_left_lobe_makes_a_plate_against_the_front_wall(tmp_path):
    """Where it draws a thin plate, the liver's leftmost part is less than half as thick from front
    to back, and its front does not move back from the front wall (the grid is the seed's). On the
    command line and in dataset.json."""
    from flare_seg.training.phantom.variety import thin_left_lobe_rng, thin_left_lobe_variety

    plain_mask, mask, info = _plain_and_with(
        "thin_left_lobe",
        lambda v: v.liver_left_lobe_thickness < 0.4,
        lambda s: thin_left_lobe_variety(thin_left_lobe_rng(s), None),
    )
    assert info.organ_variety is not None and info.organ_variety["liver_left_lobe_thickness"] < 0.4
    spacing = info.spacing_xyz[::-1]
    thickness, front = _left_lobe_columns(mask, spacing)
    plain_thickness, plain_front = _left_lobe_columns(plain_mask, spacing)
    assert thickness < 0.5 * plain_thickness
    assert front <= plain_front + spacing[1]
    # the rest of the liver keeps its volume (calibrated) within a tenth
    assert abs((mask == LABEL["liver"]).sum() / (plain_mask == LABEL["liver"]).sum() - 1.0) < 0.1

    synth_small_case(tmp_path / "ds", "--thin-left-lobe")


def test_pancreas_lipomatosis_draws_a_small_fatty_gland_in_half_the_cases_and_keeps_the_others():
    from flare_seg.training.phantom.variety import pancreas_lipomatosis_rng, pancreas_lipomatosis_variety

    draws = [pancreas_lipomatosis_variety(pancreas_lipomatosis_rng(s), None) for s in range(200)]
    fatty = [v for v in draws if v.pancreas_fat_fraction > 0]
    assert 0.4 < len(fatty) / len(draws) < 0.6
    for v in fatty:
        assert 0.3 <= v.pancreas_fat_fraction <= 0.6 and 0.4 <= v.pancreas_thickness <= 0.6
        assert 4.0 <= v.pancreas_lobule_mm <= 9.0
    assert all(v == OrganVariety() for v in draws if v.pancreas_fat_fraction == 0)
    # it replaces a --fatty-pancreas draw where it applies, and keeps every other factor
    seed = next(s for s, v in enumerate(draws) if v.pancreas_fat_fraction > 0)
    base = OrganVariety(pancreas_fat_fraction=0.25, pancreas_thickness=0.8, spleen_volume=1.3)
    kept = pancreas_lipomatosis_variety(pancreas_lipomatosis_rng(seed), base)
    assert kept.spleen_volume == 1.3 and kept.pancreas_thickness <= 0.6 and kept.pancreas_fat_fraction >= 0.3


def test_pancreas_lipomatosis_shrinks_the_pancreas_and_darkens_it(tmp_path):
    """Where it applies, the labelled pancreas is smaller and its median HU lower than the seed's
    textbook one (same grid); kidneys and spleen (drawn before it) keep their labels, and the
    liver (drawn after it, around it) its volume. On the command line and in dataset.json."""
    from flare_seg.training.phantom.variety import pancreas_lipomatosis_rng, pancreas_lipomatosis_variety

    seed = _seed_where(
        lambda v: v.pancreas_fat_fraction > 0.45,
        lambda s: pancreas_lipomatosis_variety(pancreas_lipomatosis_rng(s), None),
    )
    plain, plain_mask, plain_info = _arrays(PLAIN, seed)
    image, mask, info = _arrays(
        PhantomOptions(size="small", flip_probability=0.0, pancreas_lipomatosis=True), seed
    )
    assert info.size_xyz == plain_info.size_xyz
    pancreas, plain_pancreas = mask == LABEL["pancreas"], plain_mask == LABEL["pancreas"]
    assert pancreas.sum() < 0.7 * plain_pancreas.sum()
    assert np.median(image[pancreas]) < np.median(plain[plain_pancreas]) - 30.0
    for organ in ("kidney", "spleen"):
        assert np.array_equal(mask == LABEL[organ], plain_mask == LABEL[organ])
    liver, plain_liver = (int((m == LABEL["liver"]).sum()) for m in (mask, plain_mask))
    assert abs(liver / plain_liver - 1.0) < 0.03

    synth_small_case(tmp_path / "ds", "--pancreas-lipomatosis")


def test_pancreas_forward_draws_its_shift_in_most_cases_and_keeps_the_others():
    from flare_seg.training.phantom.variety import pancreas_forward_rng, pancreas_forward_variety

    draws = [pancreas_forward_variety(pancreas_forward_rng(s), None) for s in range(200)]
    moved = [v for v in draws if v.pancreas_forward_mm > 0.0]
    assert 0.5 < len(moved) / len(draws) < 0.7
    assert all(15.0 <= v.pancreas_forward_mm <= 45.0 for v in moved)
    assert all(v == OrganVariety() for v in draws if v.pancreas_forward_mm == 0.0)
    kept = pancreas_forward_variety(pancreas_forward_rng(3), OrganVariety(pancreas_thickness=0.5))
    assert kept.pancreas_thickness == 0.5


def _pancreas_neck(seed: int, variety: OrganVariety) -> tuple[float, float, float]:
    """The pancreas neck's y, the aorta's front y and the front cavity wall's y at the neck's
    height (LPS mm, the anatomy frame) in the anatomy of ``seed`` drawn with ``variety``."""
    rng_anatomy, _, rng_hu, _ = case_rngs(seed)
    b = AnatomyBuilder(rng_anatomy, sample_appearance(rng_hu), variety)
    b.build()
    z = float(b.pancreas_neck[2])
    return float(b.pancreas_neck[1]), b.aorta_y_at(z) - b.r_aorta, -b.body.front_wall_mm(z)


def test_pancreas_forward_moves_the_neck_as_far_as_the_abdomen_has_room():
    """A shift moves the neck by that much where there is room; a shift larger than the abdomen
    stops with the neck 55% of the way from the aorta to the front wall, inside the cavity."""
    plain, aorta, wall = _pancreas_neck(PELVIS_SEED, OrganVariety())
    assert wall < plain < aorta
    moved, _, _ = _pancreas_neck(PELVIS_SEED, OrganVariety(pancreas_forward_mm=5.0))
    assert moved == pytest.approx(plain - 5.0, abs=1e-6)
    far, _, _ = _pancreas_neck(PELVIS_SEED, OrganVariety(pancreas_forward_mm=300.0))
    assert far < plain
    assert (aorta - far) / (aorta - wall) == pytest.approx(0.55, abs=1e-6)


def test_pancreas_forward_moves_the_gland_to_the_front_and_leaves_the_kidneys(tmp_path):
    """Where it draws a large shift, the pancreas' centroid lies further to the front, by no more
    than the shift (LPS: smaller y; no flips, so the grid's y is LPS y), its volume stays within a fifth,
    and the kidneys, drawn before it, are voxel for voxel those of the seed. On the command line
    and in dataset.json."""
    from flare_seg.training.phantom.variety import pancreas_forward_rng, pancreas_forward_variety

    plain_mask, mask, info = _plain_and_with(
        "pancreas_forward",
        lambda v: v.pancreas_forward_mm > 25.0,
        lambda s: pancreas_forward_variety(pancreas_forward_rng(s), None),
    )
    assert info.organ_variety is not None
    shift = info.organ_variety["pancreas_forward_mm"]
    assert shift > 25.0
    spacing_y = info.spacing_xyz[1]
    pancreas, plain_pancreas = mask == LABEL["pancreas"], plain_mask == LABEL["pancreas"]
    assert pancreas.sum() > 100 and plain_pancreas.sum() > 100
    moved_mm = (np.nonzero(plain_pancreas)[1].mean() - np.nonzero(pancreas)[1].mean()) * spacing_y
    assert 3.0 < moved_mm < 1.1 * shift  # less where the abdomen has no room (below)
    assert abs(pancreas.sum() / plain_pancreas.sum() - 1.0) < 0.2
    np.testing.assert_array_equal(mask == LABEL["kidney"], plain_mask == LABEL["kidney"])

    synth_small_case(tmp_path / "ds", "--pancreas-forward")


def test_flat_pancreas_lowers_the_tail_and_body_but_not_below_the_neck():
    """The tail's and the body's control points (the splenic vein's, which run behind them) drop by
    the drawn amount and its half, never below 5 and 3 mm under the neck; head and neck stay."""
    from flare_seg.training.phantom.variety import flat_pancreas_rng, flat_pancreas_variety

    def curve(variety: OrganVariety) -> tuple[np.ndarray, float]:
        rng_anatomy, _, rng_hu, _ = case_rngs(PELVIS_SEED)
        b = AnatomyBuilder(rng_anatomy, sample_appearance(rng_hu), variety)
        b.build()
        return b.splenic_curve.copy(), float(b.z_pancreas)

    plain, z_p = curve(OrganVariety())
    for drop in (12.0, 200.0):
        flat, _ = curve(OrganVariety(pancreas_tail_drop_mm=drop))
        np.testing.assert_array_equal(flat[0], plain[0])  # behind the neck
        np.testing.assert_array_equal(flat[3], plain[3])  # the splenic hilum
        assert flat[2][2] == pytest.approx(max(plain[2][2] - drop, z_p - 5.0))
        assert flat[1][2] == pytest.approx(max(plain[1][2] - 0.5 * drop, z_p - 3.0))
    draws = [flat_pancreas_variety(flat_pancreas_rng(s), None) for s in range(200)]
    dropped = [v.pancreas_tail_drop_mm for v in draws if v.pancreas_tail_drop_mm > 0.0]
    assert 0.45 < len(dropped) / len(draws) < 0.75 and all(10.0 <= d <= 30.0 for d in dropped)


def test_flat_pancreas_moves_the_tail_down_and_leaves_the_kidneys(tmp_path):
    """Where it draws a large drop, the pancreas' leftmost part (its tail; no flips, so the grid's
    x is LPS x and z runs from feet to head) lies lower, the kidneys are those of the seed; on the
    command line and in dataset.json."""
    from flare_seg.training.phantom.variety import flat_pancreas_rng, flat_pancreas_variety

    plain_mask, mask, info = _plain_and_with(
        "flat_pancreas",
        lambda v: v.pancreas_tail_drop_mm > 20.0,
        lambda s: flat_pancreas_variety(flat_pancreas_rng(s), None),
    )

    def tail_z(m: np.ndarray) -> float:
        z, _, x = np.nonzero(m == LABEL["pancreas"])
        return float(z[x >= np.percentile(x, 80)].mean())

    assert (tail_z(plain_mask) - tail_z(mask)) * info.spacing_xyz[2] > 5.0
    # the kidneys, drawn first, gain nothing; the splenic vein behind the lowered tail may take a
    # few of the left kidney's voxels (it runs in front of it)
    kidney, plain_kidney = mask == LABEL["kidney"], plain_mask == LABEL["kidney"]
    assert not (kidney & ~plain_kidney).any()
    assert (plain_kidney & ~kidney).sum() <= 0.02 * plain_kidney.sum()
    synth_small_case(tmp_path / "ds", "--flat-pancreas")

"""The lesser pelvis and the hips (``PhantomOptions.true_pelvis``)."""

from __future__ import annotations

import numpy as np
import pytest

from flare_seg.training.phantom import PhantomOptions
from flare_seg.training.phantom.acquisition import MAX_PELVIS_EXTENT_MM, _sample_extent, sample_grid
from flare_seg.training.phantom.anatomy import AnatomyBuilder
from flare_seg.training.phantom.appearance import sample_appearance
from flare_seg.training.phantom.lesser_pelvis import (
    PELVIS_NARROWING,
    add_true_pelvis,
    hip_bottom_z,
    true_pelvis_rng,
)
from flare_seg.training.phantom.params import case_rngs
from flare_seg.training.phantom.pelvis import femoral_heads, is_pelvis_part
from flare_seg.training.phantom.variety import add_bony_pelvis, variety_rng
from tests.training.phantom.helpers import _case_arrays, synth_small_case

PELVIS = PhantomOptions(size="small", flip_probability=0.0, true_pelvis=True)
NEW_BONES = ("pubis_ischium_", "femoral_shaft_")
NEW_MUSCLES = ("thigh_", "gluteus_maximus_", "obturator_", "iliacus_")


def _anatomies(seed: int):
    """(builder, anatomy with the iliac-wing bones, the same with the lesser pelvis) of a seed."""
    rng_anatomy, _, rng_hu, _ = case_rngs(seed)
    builder = AnatomyBuilder(rng_anatomy, sample_appearance(rng_hu))
    wings = add_bony_pelvis(variety_rng(seed), builder, builder.build())
    return builder, wings, add_true_pelvis(true_pelvis_rng(seed), builder, wings)


def _column_axis(builder: AnatomyBuilder, z: np.ndarray):
    """Points on the vertebral column's axis at heights z (mm): (x, y, z) arrays."""
    return np.zeros_like(z), builder.spine.center_y(z).astype(np.float32), z.astype(np.float32)


@pytest.mark.parametrize("seed", [3, 11])
def test_the_column_ends_at_the_coccyx_above_the_hips_and_nothing_else_of_the_anatomy_moves(seed):
    builder, wings, pelvis = _anatomies(seed)
    head_z = float(np.mean([c[2] for c, _ in femoral_heads(pelvis.parts)]))
    z = np.arange(builder.sacrum_z - 130.0, builder.sacrum_z, 1.0, dtype=np.float32)
    before = next(p for p in wings.parts if p.name == "spine").shape(*_column_axis(builder, z))
    after = next(p for p in pelvis.parts if p.name == "spine").shape(*_column_axis(builder, z))
    assert (before < 0).all()  # without the option the column runs on below the hips
    lowest = float(z[after < 0].min())
    assert head_z + 4.0 <= lowest <= head_z + 31.0
    assert (after[z > lowest] < 0).all()
    # every part drawn before stays, in its order and unchanged
    old = [p for p in pelvis.parts if not p.name.startswith(NEW_BONES + NEW_MUSCLES)]
    assert [p.name for p in old] == [p.name for p in wings.parts]
    assert all(a is b for a, b in zip(old, wings.parts, strict=True) if a.name != "spine")


def test_muscles_come_after_the_organs_and_under_the_bones_and_keep_out_of_the_column():
    builder, wings, pelvis = _anatomies(5)
    names = [p.name for p in pelvis.parts]
    organs = [i for i, p in enumerate(pelvis.parts) if p in builder.organs]
    muscles = [i for i, n in enumerate(names) if n.startswith(NEW_MUSCLES)]
    wing_bones = [i for i, n in enumerate(names) if is_pelvis_part(n)]
    bones = [i for i, n in enumerate(names) if n.startswith(NEW_BONES)]
    assert len(muscles) == 8 and len(bones) == 4  # both sides; the wings give both iliaci
    assert max(organs) < min(muscles) and max(muscles) < min(wing_bones) and max(wing_bones) < min(bones)
    # nothing the muscles paint lies in the column (they are painted over what came before)
    z = np.linspace(builder.sacrum_z - 60.0, builder.sacrum_z + 40.0, 50, dtype=np.float32)
    x, y, zz = _column_axis(builder, z)
    for part in pelvis.parts:
        if part.name.startswith(NEW_MUSCLES):
            assert (part.shape(x, y, zz) > 0).all(), part.name
    assert PELVIS_NARROWING[0] <= pelvis.body.pelvis_narrowing <= PELVIS_NARROWING[1]
    assert wings.body.pelvis_narrowing < PELVIS_NARROWING[0]


def test_abdomen_pelvis_fields_of_view_end_below_the_hips():
    rng = np.random.default_rng(0)
    hip_z = -420.0
    for _ in range(200):
        top, bottom, extent = _sample_extent(rng, "abdomen_pelvis", -260.0, hip_z)
        assert top - bottom == pytest.approx(extent)
        assert 250.0 <= extent <= MAX_PELVIS_EXTENT_MM
        assert hip_z - 90.0 <= bottom <= hip_z - 20.0 or extent == MAX_PELVIS_EXTENT_MM
        assert bottom <= hip_z - 20.0
    # without a lesser pelvis, as before: at most 450 mm from 10-50 mm above the origin
    for _ in range(200):
        top, bottom, extent = _sample_extent(rng, "abdomen_pelvis", -260.0)
        assert 10.0 <= top <= 50.0 and extent <= 450.0


def test_a_painted_abdomen_pelvis_case_shows_both_hips_and_no_organ_there():
    for seed in range(40):
        _, _, pelvis = _anatomies(seed)
        _, rng_grid, _, _ = case_rngs(seed)
        grid, fov, _, _ = sample_grid(
            rng_grid, PELVIS, pelvis.in_plane_reach_mm(), pelvis.kidney_bottom_z, hip_bottom_z(pelvis)
        )
        if fov == "abdomen_pelvis":
            break
    else:
        raise AssertionError("no abdomen-pelvis case among 40 seeds")
    assert grid.anatomy_bounds()[0][2] <= hip_bottom_z(pelvis) - 20.0 + 1e-3
    image, mask, info = _case_arrays(seed, PELVIS)
    assert info.fov == "abdomen_pelvis" and info.size_xyz == grid.size_xyz
    # slices run from feet to head (no flips): the lowest ones cut both thighs' bones, and hold no organ
    lowest = image[:3]
    half = lowest.shape[2] // 2
    assert (lowest[..., :half] > 300).sum() > 5 and (lowest[..., half:] > 300).sum() > 5
    assert not mask[:3].any()


def test_synth_records_the_option(tmp_path):
    dataset = synth_small_case(tmp_path / "out", "--true-pelvis")
    assert dataset["options"]["iliac_wings"] is False  # implied, not rewritten

"""Training runs: checkpoints, resume, recorded config and data split; dataset checks."""

from __future__ import annotations

import json
import shutil

import pytest
import SimpleITK as sitk

from flare_seg.training.config import load_config
from flare_seg.training.data import DatasetError, list_cases, load_case
from flare_seg.training.train import train


def test_run_records_config_data_split_and_metrics(tiny_runs):
    loc, seg = tiny_runs
    for run in (loc, seg):
        assert (run / "config.yaml").is_file()
        data = json.loads((run / "data.json").read_text())
        assert len(data["val_cases"]) == 1 and len(data["train_cases"]) == 3
        assert not set(data["val_cases"]) & set(data["train_cases"])
        metrics = json.loads((run / "metrics.json").read_text())
        assert set(metrics["dice"]) == {"liver", "kidney", "spleen", "pancreas"}


def test_training_resumes_from_the_latest_checkpoint(tiny_runs, phantom_dataset, tmp_path):
    run = tmp_path / "loc"
    shutil.copytree(tiny_runs[0], run)
    config = load_config("localization", steps=3, filters=(4, 8, 8, 8), val_cases=1, log_every=1)
    result = train(phantom_dataset, run, config)
    assert result.steps == 3  # continued from step 2, not from 0
    import tensorflow as tf

    assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith("-3")


def test_load_case_reads_the_files_unchanged(phantom_dataset):
    import numpy as np

    from flare_seg.geometry import Geometry

    for case in list_cases(phantom_dataset)[:2]:
        image, mask = load_case(case)
        for loaded, path, pixel in (
            (image, case.image_path, sitk.sitkFloat32),
            (mask, case.mask_path, sitk.sitkUInt8),
        ):
            expected = sitk.ReadImage(str(path), pixel)
            assert loaded.GetPixelID() == pixel
            assert Geometry.of(loaded) == Geometry.of(expected)
            np.testing.assert_array_equal(
                sitk.GetArrayViewFromImage(loaded), sitk.GetArrayViewFromImage(expected)
            )


def test_dataset_errors_name_the_case(phantom_dataset, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(phantom_dataset, broken)
    case = list_cases(broken)[0]
    image = sitk.ReadImage(str(case.image_path))
    mask = sitk.ReadImage(str(case.mask_path))
    mask.SetOrigin(tuple(v + 5.0 for v in mask.GetOrigin()))
    sitk.WriteImage(mask, str(case.mask_path))
    with pytest.raises(DatasetError, match=f"case {case.name}: image origin"):
        load_case(case)
    assert image.GetSize() == mask.GetSize()
    whole = case.image_path.read_bytes()
    case.image_path.write_bytes(whole[: len(whole) // 2])  # an interrupted download
    with pytest.raises(DatasetError, match=f"case {case.name}: .*truncated"):
        load_case(case)
    case.image_path.write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=f"case {case.name}: .*not a NIfTI"):
        load_case(case)
    case.mask_path.unlink()
    with pytest.raises(DatasetError, match=f"case {case.name}: image .* has no mask"):
        list_cases(broken)
    with pytest.raises(DatasetError, match="TrainingImg/ is missing"):
        list_cases(tmp_path / "nowhere")


def test_compress_contrast_is_monotone_and_leaves_air_fat_and_bone():
    import numpy as np

    from flare_seg.training.train import compress_contrast

    hu = np.linspace(-1024, 1500, 5000).astype(np.float32)
    out = compress_contrast(hu, offset_hu=20.0, slope=0.2)
    assert np.all(np.diff(out) >= 0)
    np.testing.assert_array_equal(out[hu <= -100], hu[hu <= -100])
    np.testing.assert_array_equal(out[hu >= 600], hu[hu >= 600])
    # enhanced organs (100-200 HU) end up in the unenhanced range (about 40-70 HU)
    enhanced = compress_contrast(np.array([100.0, 200.0], np.float32), 20.0, 0.2)
    assert 40.0 < enhanced[0] < enhanced[1] < 80.0


def _block_case(labels, spacing_mm_zyx, organ_box_mm):
    """A prepared case for patch sampling: organs at 50 HU on -100 HU where ``labels`` has them."""
    import numpy as np

    from flare_seg.training.data import PreparedCase

    return PreparedCase(
        name="blocks",
        loc_image=np.zeros((4, 4, 4), np.float32),
        loc_target=np.zeros((4, 4, 4, 4), np.float32),
        seg_image=np.where(labels > 0, 50.0, -100.0).astype(np.float32),
        seg_labels=labels,
        seg_spacing_mm_zyx=np.array(spacing_mm_zyx),
        organ_box_mm=np.array(organ_box_mm),
    )


def test_organ_sampling_weights_choose_the_patch_centres():
    """Foreground patches are centred on organs in proportion to the weights (absent organs skipped)."""
    import numpy as np

    from flare_seg.contract import ModelContract
    from flare_seg.training.train import segmentation_patch

    labels = np.zeros((40, 40, 40), np.uint8)
    labels[2:8, 2:8, 2:8] = 1  # liver in one corner
    labels[30:36, 30:36, 30:36] = 4  # pancreas in the opposite one; kidney and spleen absent
    case = _block_case(labels, [2.0, 2.0, 2.0], [[4.0, 4.0, 4.0], [72.0, 72.0, 72.0]])

    def pancreas_share(weights: dict[str, float]) -> float:
        config = load_config(
            "segmentation", patch_size_vox=16, foreground_fraction=1.0, organ_sampling_weights=weights
        )
        rng = np.random.default_rng(0)
        # the organs lie 22 voxels apart: a 16-voxel patch holds one of them at most
        patches = [segmentation_patch(rng, case, config, ModelContract())[1] for _ in range(60)]
        assert all((p == 1).any() != (p == 4).any() for p in patches)
        return float(np.mean([(p == 4).any() for p in patches]))

    assert pancreas_share({"liver": 0.0}) == 1.0
    assert pancreas_share({"pancreas": 0.0}) == 0.0
    assert 0.3 < pancreas_share({}) < 0.7


def test_position_scale_jitter_scales_positions_about_the_box_centre():
    """The position channels are scaled per axis about the (jittered) box centre, within the range;
    the image channel and the labels stay as they are, and no jitter gives unscaled positions."""
    import numpy as np

    from flare_seg.contract import ModelContract
    from flare_seg.training.train import segmentation_patch

    labels = np.zeros((24, 24, 24), np.uint8)
    labels[8:16, 8:16, 8:16] = 1
    case = _block_case(labels, [2.0, 3.0, 1.5], [[16.0, 24.0, 12.0], [32.0, 48.0, 24.0]])
    contract = ModelContract()
    steps_mm = np.array([2.0, 3.0, 1.5]) / contract.coordinate_scale_mm
    plain = {
        "patch_size_vox": 16,
        "foreground_fraction": 1.0,
        "centre_jitter_mm": 0.0,
        "intensity_scale": 0.0,
        "intensity_shift_hu": 0.0,
        "noise_hu": 0.0,
    }
    for jitter in (0.0, 0.3):
        config = load_config("segmentation", position_scale_jitter=jitter, **plain)
        scales = []
        for seed in range(12):
            x, y = segmentation_patch(np.random.default_rng(seed), case, config, contract)
            pos = x[..., 1:]
            # per axis, the positions are linear in the index with slope spacing * scale
            slopes = np.array(
                [np.diff(pos[:, 0, 0, 0])[0], np.diff(pos[0, :, 0, 1])[0], np.diff(pos[0, 0, :, 2])[0]]
            )
            scales.append(slopes / steps_mm)
            # the image channel still shows the block where the labels have it
            inside = y == 1
            assert inside.any() and np.all(x[..., 0][inside] > x[..., 0][~inside].max())
        scales = np.array(scales)
        if jitter == 0.0:
            np.testing.assert_allclose(scales, 1.0, rtol=1e-5)
        else:
            assert np.all((scales > 1 - jitter - 1e-4) & (scales < 1 + jitter + 1e-4))
            assert scales.std() > 0.05  # drawn per patch and per axis


def test_position_scale_jitter_is_checked():
    with pytest.raises(ValueError, match="position_scale_jitter"):
        load_config("segmentation", position_scale_jitter=0.7)


def test_organ_sampling_weights_are_checked():
    with pytest.raises(ValueError, match="unknown"):
        load_config("segmentation", organ_sampling_weights={"pancraes": 2.0})
    with pytest.raises(ValueError, match=">= 0"):
        load_config("segmentation", organ_sampling_weights={"pancreas": -1.0})


def test_masks_with_other_label_sets_are_refused(phantom_dataset, tmp_path):
    """A mask with labels beyond FLARE21's (FLARE22 has 13 organs) would be trained on silently."""
    from flare_seg.contract import ModelContract
    from flare_seg.training.data import prepare_case
    from flare_seg.training.tf_utils import TfUtilsModule

    broken = tmp_path / "other_labels"
    shutil.copytree(phantom_dataset, broken)
    case = list_cases(broken)[0]
    mask = sitk.ReadImage(str(case.mask_path))
    mask[0, 0, 0] = 13
    sitk.WriteImage(mask, str(case.mask_path), useCompression=True)
    with pytest.raises(DatasetError, match=f"case {case.name}: the mask has label 13"):
        prepare_case(case, ModelContract(), TfUtilsModule(ModelContract()))


def test_field_of_view_crop_cuts_whole_slices_of_image_and_targets_alike():
    """A shorter scan: consecutive slices, at least the minimum, the same ones of the image and
    the targets; the top, the bottom and both get cut; a scan no longer than the minimum stays."""
    import numpy as np

    from flare_seg.training.train import crop_field_of_view

    d = 40
    image = np.broadcast_to(np.arange(d, dtype=np.float32)[:, None, None], (d, 5, 6)).copy()
    target = np.broadcast_to(np.arange(d, dtype=np.float32)[:, None, None, None], (d, 5, 6, 4)).copy()
    rng = np.random.default_rng(0)
    starts, stops = [], []
    for _ in range(200):
        im, tg = crop_field_of_view(rng, image, target, 12)
        first, n = int(im[0, 0, 0]), im.shape[0]
        assert 12 <= n <= d and im.shape[1:] == (5, 6) and tg.shape == (n, 5, 6, 4)
        np.testing.assert_array_equal(im[:, 0, 0], np.arange(first, first + n))
        np.testing.assert_array_equal(tg[:, 0, 0, 0], im[:, 0, 0])
        starts.append(first)
        stops.append(first + n)
    starts_, stops_ = np.array(starts), np.array(stops)
    assert ((starts_ > 0) & (stops_ == d)).any() and ((starts_ == 0) & (stops_ < d)).any()
    assert ((starts_ > 0) & (stops_ < d)).any()
    short = image[:10]
    assert crop_field_of_view(rng, short, target[:10], 12)[0] is short


def test_localization_samples_with_field_of_view_crops():
    """With fov_crop_prob 1, the samples are shorter scans that mostly cut the organ (it spans 40
    of 48 slices); with 0, every sample holds the whole volume's organ occupancy."""
    import numpy as np

    from flare_seg.contract import ModelContract
    from flare_seg.training.train import localization_samples

    d = 48
    occupancy = np.zeros((d, 16, 16, 4), np.float32)
    occupancy[4:44, 4:12, 4:12, 0] = 1.0
    case = _block_case(np.zeros((8, 8, 8), np.uint8), [2.0, 2.0, 2.0], [[0.0] * 3, [16.0] * 3])
    fields = {**case.__dict__, "loc_image": np.zeros((d, 16, 16), np.float32), "loc_target": occupancy}
    case = type(case)(**fields)
    contract = ModelContract()
    for prob, expect_whole in ((0.0, True), (1.0, False)):
        config = load_config("localization", fov_crop_prob=prob, fov_min_mm=60.0)
        samples = localization_samples([case], config, contract, seed=1)
        totals = [float(next(samples)[1][..., 0].sum()) for _ in range(12)]
        whole = float(occupancy[..., 0].sum())
        if expect_whole:
            assert totals == [whole] * 12
        else:
            assert sum(t < whole for t in totals) >= 8 and min(totals) < 0.8 * whole
            assert all(t >= 5 * 64 for t in totals)  # at least 60 mm / 6 mm = 10 slices, 5 of them organ


def test_field_of_view_settings_are_checked():
    with pytest.raises(ValueError, match="fov_crop_prob"):
        load_config("localization", fov_crop_prob=1.5)
    with pytest.raises(ValueError, match="fov_min_mm"):
        load_config("localization", fov_min_mm=0.0)


def _z_coded_case():
    """A 200-slice cached box at 2 mm whose HU tell each slice's index (-250 + z, inside the
    segmentation window), with an 80 mm liver on slices 80-120: shorter than a liver, so a face
    that cuts it extends its box to the typical length."""
    import numpy as np

    from flare_seg.training.data import PreparedCase

    d = 200
    labels = np.zeros((d, 80, 80), np.uint8)
    labels[80:120, 20:60, 20:60] = 1
    hu = np.broadcast_to((-250.0 + np.arange(d, dtype=np.float32))[:, None, None], labels.shape).copy()
    return PreparedCase(
        name="z-coded",
        loc_image=np.zeros((4, 4, 4), np.float32),
        loc_target=np.zeros((4, 4, 4, 4), np.float32),
        seg_image=hu,
        seg_labels=labels,
        seg_spacing_mm_zyx=np.array([2.0, 2.0, 2.0]),
        organ_box_mm=np.array([[160.0, 40.0, 40.0], [240.0, 120.0, 120.0]]),
    )


def test_scan_cuts_go_through_the_organs_and_keep_enough_of_them():
    import numpy as np

    from flare_seg.training.train import sample_scan_cut

    case = _z_coded_case()
    rng = np.random.default_rng(0)
    cuts = [sample_scan_cut(rng, case, 30.0) for _ in range(300)]
    for z0, z1 in cuts:
        assert 0 <= z0 < z1 <= 200 and z1 - z0 >= 16
        assert z0 >= 80 or z1 <= 120  # a face lies in the liver
        assert min(z1, 120) - max(z0, 80) >= 14  # about 30 mm of it (15 slices) stays
    kinds = {(z0 > 0, z1 < 200) for z0, z1 in cuts}
    assert kinds == {(False, True), (True, False), (True, True)}


def test_visible_organ_box_is_extended_past_a_face_like_at_inference():
    import numpy as np

    from flare_seg.service.localization import TYPICAL_LENGTH_MM
    from flare_seg.training.train import visible_organ_box_mm

    case = _z_coded_case()
    spacing = case.seg_spacing_mm_zyx
    typical = TYPICAL_LENGTH_MM["liver"]
    # the top face at slice 100 cuts the liver: its box runs from its bottom to the typical length
    box = visible_organ_box_mm(case.organ_slices, 0, 100, spacing)
    np.testing.assert_allclose(box[:, 0], [160.0, 160.0 + typical])
    np.testing.assert_allclose(box[:, 1:], [[40.0, 40.0], [120.0, 120.0]])
    # the bottom face at slice 100: from the typical length below its top
    box = visible_organ_box_mm(case.organ_slices, 100, 200, spacing)
    np.testing.assert_allclose(box[:, 0], [240.0 - typical, 240.0])
    # both faces cut it: nothing tells which way it goes on, so the box is what is seen
    box = visible_organ_box_mm(case.organ_slices, 90, 110, spacing)
    np.testing.assert_allclose(box[:, 0], [180.0, 220.0])
    # no face touches it: its own box
    np.testing.assert_allclose(visible_organ_box_mm(case.organ_slices, 0, 200, spacing), case.organ_box_mm)


def test_segmentation_patches_end_at_a_simulated_scan_face():
    """With fov_crop_prob 1: patch depths are multiples of 8 between 16 and the patch size; a
    shallower patch holds consecutive slices of the scan and no air beyond a face (its input ends
    there, as at inference); the position channels are centred on the box inference would compute
    (here with no centre jitter): 235 mm for a top cut of the liver, 165 mm for a bottom one."""
    import numpy as np

    from flare_seg.contract import ModelContract
    from flare_seg.training.train import segmentation_patch

    case = _z_coded_case()
    contract = ModelContract()
    config = load_config(
        "segmentation",
        patch_size_vox=64,
        foreground_fraction=1.0,
        centre_jitter_mm=0.0,
        intensity_scale=0.0,
        intensity_shift_hu=0.0,
        noise_hu=0.0,
        fov_crop_prob=1.0,
        fov_min_mm=30.0,
    )
    rng = np.random.default_rng(3)
    depths, centres = [], []
    for _ in range(80):
        x, labels = segmentation_patch(rng, case, config, contract)
        depth = x.shape[0]
        assert x.shape[1:] == (64, 64, 4) and labels.shape == (depth, 64, 64)
        assert depth % 8 == 0 and 16 <= depth <= 64
        z = np.round(x[:, 32, 32, 0] * 350.0 + 50.0 + 250.0)  # undo the window: the slice index
        inside = (z >= 0) & (z < 200)
        if depth < 64:
            assert inside.all()
            np.testing.assert_array_equal(np.diff(z), 1.0)
        first = z[inside][0] - np.flatnonzero(inside)[0]  # the patch's first slice in the box
        # position channel: ((i + 0.5) * 2 mm - centre in patch) / 100 mm
        centre_in_patch = (0.5 * 2.0) - x[0, 0, 0, 1] * contract.coordinate_scale_mm
        centres.append(round(float(centre_in_patch + first * 2.0)))
        depths.append(depth)
    assert min(depths) < 64 and max(depths) == 64
    assert centres.count(235) >= 10 and centres.count(165) >= 10


def test_organ_slices_give_each_organs_box_on_any_run_of_slices():
    """The per-slice index answers what scanning the labels answers: each organ's box on
    slices [z0, z1), z relative to z0, or None where it has no voxel."""
    import numpy as np

    from flare_seg.training.data import OrganSlices, organ_box_edges

    rng = np.random.default_rng(0)
    labels = np.zeros((30, 20, 25), np.uint8)
    for k in (1, 2, 3):  # blobs of random extent; label 4 absent
        z0, y0, x0 = rng.integers(0, 12, 3)
        dz, dy, dx = rng.integers(3, 9, 3)
        labels[z0 : z0 + dz, y0 : y0 + dy, x0 : x0 + dx] = k
    labels[rng.random(labels.shape) < 0.01] = 2  # scattered voxels too
    slices = OrganSlices.of(labels)
    assert slices.counts.sum() == np.count_nonzero(labels)
    for z0, z1 in ((0, 30), (5, 17), (20, 30), (29, 30)):
        for k in (1, 2, 3, 4):
            expected = organ_box_edges(labels[z0:z1] == k)
            got = slices.organ_box_edges(k, z0, z1)
            if expected is None:
                assert got is None
            else:
                np.testing.assert_array_equal(got[0], expected[0])
                np.testing.assert_array_equal(got[1], expected[1])

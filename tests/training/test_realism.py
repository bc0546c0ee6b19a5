"""Realism statistics on small synthetic volumes with known intensities, noise and shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from flare_seg.training.realism import main, measure


def _case(noise_sd: float, blur_vox: float, flip: bool, seed: int = 0) -> tuple[sitk.Image, sitk.Image]:
    """A 3 mm body with fat, a 'liver' block at 60 HU, a 'kidney' block at 150 HU, a 'vertebra' at
    400 HU behind them, and noise."""
    rng = np.random.default_rng(seed)
    hu = np.full((40, 60, 70), -1000.0, np.float32)
    hu[2:-2, 8:-8, 6:-6] = -100.0  # fat
    hu[2:-2, 46:52, 31:38] = 400.0  # vertebra: its front at y = 46 voxels, its midline at x = 34
    hu[5:35, 15:45, 12:40] = 60.0  # liver, 30 x 30 x 28 voxels
    hu[10:20, 30:40, 45:55] = 150.0  # kidney
    noise = rng.normal(0.0, 1.0, hu.shape)
    if blur_vox > 0:
        noise = ndimage.gaussian_filter(noise, (0, blur_vox, blur_vox))
    hu += (noise / noise.std() * noise_sd).astype(np.float32)
    labels = np.zeros(hu.shape, np.uint8)
    labels[5:35, 15:45, 12:40] = 1
    labels[10:20, 30:40, 45:55] = 2
    if flip:  # stored flipped in x with a direction that says so: the same anatomy
        hu, labels = hu[:, :, ::-1].copy(), labels[:, :, ::-1].copy()
    images = []
    for arr in (hu, labels):
        image = sitk.GetImageFromArray(arr)
        image.SetSpacing((3.0, 3.0, 3.0))
        if flip:
            image.SetDirection((-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
        images.append(image)
    return images[0], images[1]


def test_intensities_shapes_and_noise_are_measured():
    stats = measure(*_case(noise_sd=10.0, blur_vox=0.0, flip=False))
    assert stats["liver HU p50"] == pytest.approx(60.0, abs=1.5)
    assert stats["kidney HU p50"] == pytest.approx(150.0, abs=2.0)
    assert stats["fat HU p50"] == pytest.approx(-100.0, abs=2.0)
    assert stats["liver volume mL"] == pytest.approx(30 * 30 * 28 * 0.027, rel=1e-6)
    assert stats["liver extent x mm"] == pytest.approx(84.0)
    assert stats["kidney centroid x - body mm"] > 30.0  # the kidney block lies on the +x (left) side
    # white noise: the high-pass residual keeps (26/27)^0.5 of the SD; correlation under one voxel
    assert stats["noise SD (liver, high-pass)"] == pytest.approx(10.0 * np.sqrt(26 / 27), rel=0.05)
    assert stats["noise corr. length mm"] < 3.0
    assert "spleen volume mL" not in stats  # absent organs have no rows
    # relative to the vertebra's front (y 46 voxels) and midline (x 34): the kidney's centroid at
    # y 34.5 and x 49.5, the liver's at y 29.5 and x 25.5
    assert stats["kidney centroid y - vertebral body front mm"] == pytest.approx((34.5 - 46) * 3.0, abs=0.5)
    assert stats["kidney centroid x - spine mm"] == pytest.approx((49.5 - 34) * 3.0, abs=0.5)
    assert stats["liver centroid y - vertebral body front mm"] == pytest.approx((29.5 - 46) * 3.0, abs=0.5)
    assert stats["liver centroid x - spine mm"] == pytest.approx((25.5 - 34) * 3.0, abs=0.5)
    # the liver block is 30 voxels deep everywhere, and its left part reaches as low as the rest
    assert stats["liver left lobe thickness mm"] == pytest.approx(90.0)
    assert stats["liver left lobe bottom - liver's mm"] == pytest.approx(0.0)


def test_correlated_noise_has_a_longer_correlation_length_and_flips_do_not_matter():
    white = measure(*_case(noise_sd=10.0, blur_vox=0.0, flip=False))
    smooth = measure(*_case(noise_sd=10.0, blur_vox=1.5, flip=False))
    assert smooth["noise corr. length mm"] > white["noise corr. length mm"] + 1.0
    flipped = measure(*_case(noise_sd=10.0, blur_vox=0.0, flip=True))
    assert flipped["kidney centroid x - body mm"] == pytest.approx(
        white["kidney centroid x - body mm"], abs=1e-6
    )
    assert flipped["kidney centroid x - spine mm"] == pytest.approx(
        white["kidney centroid x - spine mm"], abs=1e-6
    )


def test_the_command_prints_a_table_of_real_against_phantoms(tmp_path: Path, capsys):
    real_image, real_labels = _case(noise_sd=20.0, blur_vox=0.0, flip=False, seed=1)
    sitk.WriteImage(real_image, str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(real_labels, str(tmp_path / "labels.nii.gz"))
    for sub in ("TrainingImg", "TrainingMask"):
        (tmp_path / "ph" / sub).mkdir(parents=True)
    for i in range(2):
        image, labels = _case(noise_sd=5.0, blur_vox=0.0, flip=bool(i), seed=10 + i)
        sitk.WriteImage(image, str(tmp_path / "ph" / "TrainingImg" / f"p{i}_0000.nii.gz"))
        sitk.WriteImage(labels, str(tmp_path / "ph" / "TrainingMask" / f"p{i}.nii.gz"))
    code = main(
        [
            "--real",
            str(tmp_path / "ct.nii.gz"),
            str(tmp_path / "labels.nii.gz"),
            "--phantoms",
            str(tmp_path / "ph"),
        ]
    )
    assert code == 0
    rows = {line[:34].strip(): line[34:].split() for line in capsys.readouterr().out.splitlines()[2:]}
    real, p50 = float(rows["noise SD (liver, high-pass)"][0]), float(rows["noise SD (liver, high-pass)"][1])
    assert real == pytest.approx(2 * np.sqrt(26 / 27) * 10, rel=0.1) and p50 < real / 2
    assert rows["noise SD (liver, high-pass)"][-1] == "100%"  # above every phantom


def test_an_empty_phantom_directory_is_a_usage_error(tmp_path: Path, capsys):
    assert main(["--real", "a.nii.gz", "b.nii.gz", "--phantoms", str(tmp_path)]) == 2
    assert "no phantom cases" in capsys.readouterr().err


def test_a_noiseless_volume_has_no_correlation_length():
    hu = np.full((20, 30, 30), -1000.0, np.float32)
    hu[2:-2, 4:-4, 4:-4] = -100.0
    labels = np.zeros(hu.shape, np.uint8)
    labels[4:16, 8:22, 8:22] = 1
    hu[labels == 1] = 60.0
    image, mask = sitk.GetImageFromArray(hu), sitk.GetImageFromArray(labels)
    for im in (image, mask):
        im.SetSpacing((3.0, 3.0, 3.0))
    stats = measure(image, mask)
    assert stats["noise SD (liver, high-pass)"] == pytest.approx(0.0, abs=1e-3)
    assert "noise corr. length mm" not in stats


def test_a_plate_like_left_lobe_is_thin_and_its_bottom_is_measured():
    """A liver whose left third (LPS +x) is an 8-voxel plate at the front, 10 slices above the
    right part's bottom: 24 mm thick, its lowest point 30 mm above the liver's."""
    hu = np.full((40, 60, 70), -1000.0, np.float32)
    hu[2:-2, 8:-8, 6:-6] = -100.0  # fat
    labels = np.zeros(hu.shape, np.uint8)
    labels[5:35, 15:45, 12:40] = 1  # the right part, 30 voxels front to back
    labels[15:35, 15:23, 40:60] = 1  # the left plate: 8 voxels, at the front (low y)
    hu[labels == 1] = 60.0
    hu += np.random.default_rng(0).normal(0.0, 5.0, hu.shape).astype(np.float32)
    image, mask = sitk.GetImageFromArray(hu), sitk.GetImageFromArray(labels)
    for im in (image, mask):
        im.SetSpacing((3.0, 3.0, 3.0))
    stats = measure(image, mask)
    assert stats["liver left lobe thickness mm"] == pytest.approx(24.0)
    assert stats["liver left lobe bottom - liver's mm"] == pytest.approx(30.0)


def test_the_pancreas_course_from_head_to_tail_is_measured():
    """A pancreas whose head (LPS -x: low x index) is a low block at the front and whose tail
    (high x) is 5 slices higher and 4 voxels further back: 15 mm above and 12 mm behind; stored
    flipped in x, the same anatomy gives the same figures."""
    hu = np.full((40, 60, 70), -1000.0, np.float32)
    hu[2:-2, 8:-8, 6:-6] = -100.0
    labels = np.zeros(hu.shape, np.uint8)
    labels[10:20, 20:26, 15:25] = 4  # head
    labels[14:22, 22:28, 25:45] = 4  # neck and body, in between
    labels[15:25, 24:30, 45:55] = 4  # tail
    hu[labels == 4] = 40.0
    for flip in (False, True):
        h, lab = (hu[:, :, ::-1].copy(), labels[:, :, ::-1].copy()) if flip else (hu, labels)
        image, mask = sitk.GetImageFromArray(h), sitk.GetImageFromArray(lab)
        for im in (image, mask):
            im.SetSpacing((3.0, 3.0, 3.0))
            if flip:
                im.SetDirection((-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
        stats = measure(image, mask)
        assert stats["pancreas tail - head height mm"] == pytest.approx(15.0, abs=1.0)
        assert stats["pancreas tail - head depth mm"] == pytest.approx(12.0, abs=1.0)

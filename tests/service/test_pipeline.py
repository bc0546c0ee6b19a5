"""The two-stage pipeline with tiny exported models: geometry, dtypes, slabs and failure modes."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from flare_seg.geometry import Geometry
from flare_seg.labels import ORGANS
from tests.conftest import ct_image, oblique_direction

DIRECTIONS = {
    "identity": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    "ras": (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0),
    "z_flipped": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
    "permuted": (0.0, 0.0, 1.0, -1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
    "oblique": oblique_direction(10.0),
}


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_mask_has_exactly_the_input_geometry(tiny_segmenter, name):
    image = ct_image(direction=DIRECTIONS[name])
    result = tiny_segmenter.segment_image(image)
    assert result.mask.GetPixelID() == sitk.sitkUInt8
    assert Geometry.of(result.mask) == Geometry.of(image)
    assert set(result.volumes_ml) == set(ORGANS.values())
    labels = sitk.GetArrayViewFromImage(result.mask)
    assert labels.max() <= max(ORGANS)
    vox_ml = np.prod(image.GetSpacing()) / 1000
    for k, organ in ORGANS.items():
        assert result.volumes_ml[organ] == pytest.approx(np.sum(labels == k) * vox_ml, abs=1e-3)


@pytest.mark.parametrize("pixel_type", [sitk.sitkInt16, sitk.sitkInt32, sitk.sitkFloat32, sitk.sitkFloat64])
def test_input_pixel_types_give_the_same_labels(tiny_segmenter, pixel_type):
    reference = tiny_segmenter.segment_image(ct_image())
    result = tiny_segmenter.segment_image(ct_image(pixel_type=pixel_type))
    np.testing.assert_array_equal(
        sitk.GetArrayViewFromImage(result.mask), sitk.GetArrayViewFromImage(reference.mask)
    )


def test_uint16_input_is_accepted(tiny_segmenter):
    image = sitk.Cast(sitk.Clamp(ct_image(), sitk.sitkInt16, 0, 3000), sitk.sitkUInt16)
    result = tiny_segmenter.segment_image(image)
    assert Geometry.of(result.mask) == Geometry.of(image)


def test_result_does_not_depend_on_the_memory_budget(tiny_models, tiny_segmenter):
    """Slab sizes follow the budget; the labels must not."""
    from flare_seg.service.pipeline import Segmenter

    tight = Segmenter(tiny_segmenter.models, memory_budget_mb=64)
    tight._slab_budget = lambda: 4096  # a handful of slices per slab
    image = ct_image(shape_zyx=(30, 48, 44))
    a = sitk.GetArrayFromImage(tiny_segmenter.segment_image(image).mask)
    b = sitk.GetArrayFromImage(tight.segment_image(image).mask)
    np.testing.assert_array_equal(a, b)


def test_segment_array_matches_segment_image(tiny_segmenter):
    image = ct_image(direction=DIRECTIONS["identity"], origin_mm_xyz=(0.0, 0.0, 0.0))
    arr = sitk.GetArrayFromImage(image)
    labels = tiny_segmenter.segment_array(arr, image.GetSpacing()[::-1])
    assert labels.shape == arr.shape and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, sitk.GetArrayFromImage(tiny_segmenter.segment_image(image).mask))
    with pytest.raises(ValueError, match="3D"):
        tiny_segmenter.segment_array(arr[0], (1.0, 1.0, 1.0))


def test_result_summary_is_json_serialisable(tiny_segmenter):
    import json

    result = tiny_segmenter.segment_image(ct_image())
    doc = json.loads(json.dumps(result.summary()))
    assert set(doc["timings_s"]) >= {
        "reorient_s",
        "localization_preprocess_s",
        "localization_forward_s",
        "crop_resample_s",
        "segmentation_forward_s",
        "postprocess_s",
    }
    lo, hi = doc["roi_box_mm"]
    assert all(a <= b for a, b in zip(lo, hi, strict=True))


def test_phantom_case_geometry_through_the_pipeline(tiny_segmenter, phantom_dataset):
    path = sorted((phantom_dataset / "TrainingImg").glob("*_0000.nii.gz"))[0]
    result = tiny_segmenter.segment_file(path)
    assert Geometry.of(result.mask) == Geometry.of(sitk.ReadImage(str(path)))


def test_models_dir_without_manifest_is_refused(tmp_path):
    from flare_seg.contract import ManifestError
    from flare_seg.service.pipeline import Segmenter

    with pytest.raises(ManifestError, match=r"manifest\.json"):
        Segmenter.load(tmp_path)


def test_release_input_gives_the_same_mask_and_drops_the_voxels(tiny_segmenter):
    from flare_seg.service.io import CtVolume

    image = ct_image()
    reference = sitk.GetArrayFromImage(tiny_segmenter.segment_image(image).mask)
    volume = CtVolume(sitk.GetArrayFromImage(image), Geometry.of(image))
    result = tiny_segmenter.segment_volume(volume, release_input=True)
    assert volume.array_zyx is None
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.mask), reference)
    assert Geometry.of(result.mask) == Geometry.of(image)


def test_float_input_with_nan_and_out_of_range_values(tiny_segmenter):
    image = ct_image(pixel_type=sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(image)
    arr[0, 0, 0] = np.nan
    arr[0, 0, 1] = 1e9
    arr[0, 0, 2] = -1e9
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(image)
    result = tiny_segmenter.segment_image(bad)
    assert Geometry.of(result.mask) == Geometry.of(image)

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


def _hu_warnings(warnings: tuple[str, ...] | list[str]) -> list[str]:
    """The warnings about the input's units (the tiny random-weight models also draw warnings
    about implausible heatmaps, which these tests do not look at)."""
    return [w for w in warnings if "Hounsfield" in w]


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
    hu = _hu_warnings(result.warnings)
    assert len(hu) == 1 and "no air" in hu[0]  # air clamped to 0


def test_an_image_that_is_not_in_hounsfield_units_gets_a_warning(tiny_segmenter):
    """A CT stored without its rescale intercept (air at 0 instead of -1000) is segmented, but the
    result says that its mask means nothing; a CT in HU gets no warning."""
    ct = ct_image()
    assert _hu_warnings(tiny_segmenter.segment_image(ct).warnings) == []
    shifted = tiny_segmenter.segment_image(sitk.Cast(ct + 1024, sitk.sitkInt16))
    hu = _hu_warnings(shifted.warnings)
    assert len(hu) == 1
    assert "lowest value is 24 " in hu[0] and "Hounsfield" in hu[0]
    assert shifted.summary()["warnings"] == list(shifted.warnings)


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


def test_release_input_frees_the_voxels_before_the_segmentation_forward(tiny_segmenter):
    """The full-resolution input is dropped once the box is cropped: the forward pass (the largest
    working set) never runs beside it."""
    import dataclasses
    import weakref

    from flare_seg.service.io import CtVolume
    from flare_seg.service.pipeline import Segmenter

    image = ct_image()
    array = sitk.GetArrayFromImage(image)
    alive = weakref.ref(array)
    seen: list[bool] = []

    def segmentation(x):
        seen.append(alive() is not None)
        return tiny_segmenter.models.segmentation(x)

    watched = Segmenter(dataclasses.replace(tiny_segmenter.models, segmentation=segmentation))
    volume = CtVolume(array, Geometry.of(image))
    del array
    result = watched.segment_volume(volume, release_input=True)
    assert seen and not any(seen)  # every forward pass (a second one over a grown region too)
    reference = tiny_segmenter.segment_image(image)
    np.testing.assert_array_equal(result.labels_zyx, reference.labels_zyx)


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


STREAM_DIRECTIONS = {
    "identity": DIRECTIONS["identity"],
    "z_flipped": DIRECTIONS["z_flipped"],
    "ras": DIRECTIONS["ras"],
    "yx_swapped": (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0),  # file slices are still axial
    "permuted": DIRECTIONS["permuted"],  # file slices are not axial: nothing to stream
    "oblique": DIRECTIONS["oblique"],  # resampled by the pipeline: nothing to stream
}


@pytest.mark.parametrize("name", sorted(STREAM_DIRECTIONS))
def test_localization_input_prepared_while_reading_is_the_same(tiny_segmenter, tmp_path, name):
    """``read_volume`` resamples the localization input from slabs as they are decompressed; it
    must equal what the pipeline computes from the whole volume, and give the same labels."""
    from flare_seg.geometry import canonical_axes
    from flare_seg.grid import resample_crop
    from flare_seg.service.io import read_ct_volume

    tiny_segmenter_small_slabs = type(tiny_segmenter)(tiny_segmenter.models, memory_budget_mb=64)
    tiny_segmenter_small_slabs._slab_budget = lambda: 36 * 40 * 12 * 5  # 5 slices a slab
    image = ct_image(shape_zyx=(33, 40, 36), direction=STREAM_DIRECTIONS[name])
    path = tmp_path / "ct_0000.nii.gz"
    sitk.WriteImage(image, str(path), useCompression=True)

    volume = tiny_segmenter_small_slabs.read_volume(path)
    prepared = volume.prepared.get("localization")
    assert (prepared is not None) == (name not in ("permuted", "oblique"))
    if prepared is not None:
        axes, canonical = canonical_axes(volume.geometry)
        vol = axes.view(volume.array_zyx)
        crop = tiny_segmenter._localization_crop(vol.shape, canonical.spacing_mm_zyx)
        whole = resample_crop(tiny_segmenter.models.tf_utils, vol, crop)
        np.testing.assert_array_equal(prepared.resampler.finish(), whole)
    streamed = tiny_segmenter_small_slabs.segment_volume(volume, release_input=True)
    plain = tiny_segmenter.segment_volume(read_ct_volume(path, 10**8))
    assert ("localization_during_read_s" in streamed.timings_s) == (prepared is not None)
    np.testing.assert_array_equal(streamed.labels_zyx, plain.labels_zyx)
    assert streamed.geometry == plain.geometry == Geometry.of(sitk.ReadImage(str(path)))
    assert streamed.roi_box_mm == plain.roi_box_mm


def test_reading_a_broken_file_leaves_no_stream_behind(tiny_segmenter, tmp_path):
    import threading

    from flare_seg.service.io import InputError

    path = tmp_path / "ct_0000.nii.gz"
    sitk.WriteImage(ct_image(shape_zyx=(40, 64, 64)), str(path), useCompression=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match="truncated"):
        tiny_segmenter.read_volume(path)
    assert not [t for t in threading.enumerate() if t.name == "flare-seg-localization-stream"]


def test_organ_boxes_and_counts_match_a_direct_count():
    from flare_seg.grid import GridCrop
    from flare_seg.service.pipeline import Segmenter, _box_mm

    rng = np.random.default_rng(3)
    labels = np.zeros((40, 50, 60), np.uint8)
    labels[5:30, 10:40, 3:20] = 1
    labels[12:14, 45:47, 50:58] = 2
    labels[rng.random(labels.shape) < 0.001] = 4  # scattered voxels: boxes span them all
    labels[0, 0, 0], labels[-1, -1, -1] = 4, 1  # organs touching the region's corners
    region = labels[:, 2:, 1:]  # a view, as the pipeline passes it
    crop = GridCrop((7, 2, 1), region.shape, region.shape, (2.0, 1.0, 1.5))
    geometry = Geometry((70, 60, 50), (1.5, 1.0, 2.0), (-3.0, 4.0, 5.0), DIRECTIONS["identity"])
    boxes, counts = Segmenter._organ_boxes(region, crop, geometry)
    for k, name in ORGANS.items():
        present = region == k
        assert counts[k] == np.count_nonzero(present)
        if not present.any():
            assert boxes[name] is None  # spleen (3) is absent
            continue
        where = np.argwhere(present)
        lo, hi = where.min(axis=0) + crop.start_zyx, where.max(axis=0) + 1 + crop.start_zyx
        assert boxes[name] == _box_mm(geometry, lo.astype(float), hi.astype(float))
    assert boxes["spleen"] is None and counts[3] == 0


def test_organ_subset_writes_only_those_labels_and_their_figures(tiny_segmenter, tmp_path):
    """``organs``: the mask holds only the chosen labels and the figures are only theirs."""
    from flare_seg.service.io import read_ct_volume

    path = tmp_path / "c_0000.nii.gz"
    sitk.WriteImage(ct_image(), str(path))
    full = tiny_segmenter.segment_volume(read_ct_volume(path, 10**9))
    volume = read_ct_volume(path, 10**9)
    part = tiny_segmenter.segment_volume(volume, organs=(1, 3))  # keeps volume.array_zyx
    assert set(np.unique(part.labels_zyx)) <= {0, 1, 3}
    assert list(part.volumes_ml) == ["liver", "spleen"] and list(part.organ_boxes_mm) == ["liver", "spleen"]
    chosen = np.isin(full.labels_zyx, (1, 3))
    np.testing.assert_array_equal(part.labels_zyx, np.where(chosen, full.labels_zyx, 0))
    voxel_ml = part.geometry.voxel_volume_ml
    for k, name in ((1, "liver"), (3, "spleen")):
        assert part.volumes_ml[name] == round(np.count_nonzero(part.labels_zyx == k) * voxel_ml, 3)
    stats = part.statistics(volume.array_zyx)  # the Python API's statistics and preview
    assert list(stats) == ["liver", "spleen"]
    counts = [int(np.count_nonzero(part.labels_zyx == k)) for k in (1, 3)]
    assert [s.voxel_count for s in stats.values()] == counts
    part.write_preview(tmp_path / "p.png", volume.array_zyx, title="c")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="organs must be labels"):
        tiny_segmenter.segment_volume(read_ct_volume(path, 10**9), organs=(9,))


def test_parse_organs():
    from flare_seg.labels import parse_organs

    assert parse_organs("spleen, Liver,liver") == (1, 3)
    with pytest.raises(ValueError, match="unknown organ 'livr'; choose from liver, kidney, spleen, pancreas"):
        parse_organs("livr")
    with pytest.raises(ValueError, match="no organ"):
        parse_organs(" , ")


def test_the_warm_up_volume_logs_no_warnings(tiny_models, caplog, monkeypatch):
    """The dummy warm-up volume's localization warnings would read as if they were the first case's."""
    import logging

    from flare_seg.service.pipeline import Segmenter

    segmenter = Segmenter.load(tiny_models)
    localize = segmenter._localize

    def localize_with_a_warning(vol, spacing, timings, warnings, prepared=None):
        warnings.append("the liver's localization was ignored")  # what random networks say of it
        return localize(vol, spacing, timings, warnings, prepared)

    monkeypatch.setattr(segmenter, "_localize", localize_with_a_warning)
    arr = np.full((16, 32, 32), -1000, np.int16)
    arr[2:14, 6:26, 4:28] = 40
    with caplog.at_level(logging.INFO):
        segmenter.segment_array(arr, (8.0, 4.0, 4.0))
        assert [r for r in caplog.records if r.levelno >= logging.WARNING]  # the same volume warns
        caplog.clear()
        segmenter.warm_up()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert logging.getLogger("flare_seg.service.pipeline").level == logging.NOTSET


@pytest.mark.parametrize("name", ["identity", "ras", "permuted"])
def test_organs_cut_by_the_region_are_looked_for_on_the_canonical_grid(tiny_segmenter, monkeypatch, name):
    """The check for organs cut off by the segmented region gets the region's labels on the
    canonical (LPS) grid, where its side names hold, whatever the input's direction, and what it
    finds reaches the result's warnings."""
    from flare_seg.geometry import to_canonical
    from flare_seg.service import pipeline

    seen = []

    def spy(region, start_zyx, shape_zyx, spacing_mm_zyx):
        seen.append((region.copy(), tuple(start_zyx), tuple(shape_zyx), tuple(spacing_mm_zyx)))
        return ["the liver reaches the edge of the segmented region (spy)"]

    monkeypatch.setattr(pipeline, "organs_cut_by_region", spy)
    image = ct_image(direction=DIRECTIONS[name])
    result = tiny_segmenter.segment_image(image)
    ((region, start, shape, spacing),) = seen
    canonical, _ = to_canonical(image)
    assert shape == canonical.GetSize()[::-1]
    assert spacing == pytest.approx(canonical.GetSpacing()[::-1])
    mask = sitk.GetImageFromArray(result.labels_zyx)
    mask.CopyInformation(image)
    labels, _ = to_canonical(mask)
    inside = tuple(slice(a, a + n) for a, n in zip(start, region.shape, strict=True))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels)[inside], region)
    assert "the liver reaches the edge of the segmented region (spy)" in result.warnings


LIVER = next(k for k, name in ORGANS.items() if name == "liver")
SPLEEN = next(k for k, name in ORGANS.items() if name == "spleen")


def _liver_between(x_lo: int, x_hi: int):
    """A stand-in for the segmentation network: liver wherever the canonical x index (the patient's
    right to left) lies in [x_lo, x_hi), background elsewhere, whatever the crop."""

    def forward(x, crop, timings):
        d, h, w = crop.out_shape_zyx
        centres = crop.start_zyx[2] + (np.arange(w) + 0.5) * crop.size_zyx[2] / w
        liver = (centres >= x_lo) & (centres < x_hi)
        scores = np.zeros((d, h, w, len(ORGANS) + 1), np.float32)
        scores[..., 0] = 1.0
        scores[:, :, liver, 0] = 0.0
        scores[:, :, liver, LIVER] = 1.0
        return scores

    return forward


def _fixed_box(lo_zyx, hi_zyx):
    """A stand-in for the localization: the organs' box (canonical edge coordinates)."""
    from flare_seg.service.localization import LocalizationPlan

    def localize(vol, spacing, timings, warnings, prepared=None):
        lo, hi = np.asarray(lo_zyx, float), np.asarray(hi_zyx, float)
        return LocalizationPlan(lo, hi, lo.copy(), hi.copy(), True, (), (), (), ())

    return localize


def _wide_image(direction: tuple[float, ...]) -> sitk.Image:
    """A CT 240 mm from the patient's right to left (2 mm voxels), 90 mm deep and 60 mm high."""
    return ct_image(shape_zyx=(12, 30, 120), spacing_mm_xyz=(2.0, 3.0, 5.0), direction=direction)


def _recorded(forward, crops: list):
    """``forward``, appending each crop it is called with to ``crops`` first."""

    def recording(x, crop, timings):
        crops.append(crop)
        return forward(x, crop, timings)

    return recording


def _with_stand_ins(tiny_models, monkeypatch, image, box, forward, regrow=True):
    """``image`` segmented by a fresh Segmenter of the tiny models whose localization is
    ``_fixed_box(*box)`` and segmentation network ``forward``."""
    from flare_seg.service.pipeline import Segmenter

    segmenter = Segmenter(Segmenter.load(tiny_models).models)
    segmenter.regrow = regrow
    monkeypatch.setattr(segmenter, "_localize", _fixed_box(*box))
    monkeypatch.setattr(segmenter, "_segmentation_forward", forward)
    return segmenter.segment_image(image)


@pytest.mark.parametrize(("name", "spacing_x"), [("identity", 2.0), ("ras", 0.9), ("permuted", 2.0)])
def test_an_organ_cut_by_the_region_is_segmented_again_over_a_grown_region(
    tiny_models, monkeypatch, name, spacing_x
):
    """A liver that goes on 40 voxels beyond the localization's box on the patient's right is cut
    by the first region; the pipeline grows the region there, segments again, and the mask holds
    the whole liver, with a warning that says so. Without the second pass it stops at the first
    region's face, with the warning that it is cut. The canonical x axis is the patient's right to
    left whatever the input's direction (``ras``: the file's x flipped; ``permuted``: its z axis),
    and 0.9 mm voxels are averaged in pairs in the copy kept for the second pass."""
    from flare_seg.geometry import to_canonical
    from flare_seg.service.pipeline import REGROW_MM

    width_mm = 240.0
    n = round(width_mm / spacing_x)
    if name == "permuted":  # the file's axes (x, y, z) are canonical (y, z, x), x and y flipped
        image = ct_image(
            shape_zyx=(n, 12, 30), spacing_mm_xyz=(3.0, 5.0, spacing_x), direction=DIRECTIONS[name]
        )
    else:
        image = ct_image(
            shape_zyx=(12, 30, n), spacing_mm_xyz=(spacing_x, 3.0, 5.0), direction=DIRECTIONS[name]
        )
    canonical, _ = to_canonical(image)
    assert canonical.GetSize()[0] == n and canonical.GetSpacing()[0] == pytest.approx(spacing_x)
    mm = 1.0 / spacing_x  # canonical x voxels per mm
    liver_lo, liver_hi = int(60 * mm), int(120 * mm)  # 60 to 120 mm from the patient's right edge
    box_lo, box_hi = (2, 5, int(100 * mm)), (10, 25, int(180 * mm))  # the liver's last 20 mm only

    def run(regrow: bool):
        forward = _liver_between(liver_lo, liver_hi)
        result = _with_stand_ins(tiny_models, monkeypatch, image, (box_lo, box_hi), forward, regrow)
        assert Geometry.of(result.mask) == Geometry.of(image)
        labels, _ = to_canonical(result.mask)
        columns = np.flatnonzero(np.any(sitk.GetArrayViewFromImage(labels) == LIVER, axis=(0, 1)))
        return result, columns

    result, columns = run(regrow=True)
    assert (columns[0], columns[-1] + 1) == (liver_lo, liver_hi)  # the whole liver, to the voxel
    (note,) = [w for w in result.warnings if "segmented again" in w]
    assert note.startswith(
        "the liver's mask reached the edge of the segmented region on the patient's right:"
    )
    assert f"grown by {REGROW_MM:.0f} mm" in note
    assert not [w for w in result.warnings if "reaches the edge" in w]  # nothing is cut any more
    assert "regrow_s" in result.timings_s

    first, columns = run(regrow=False)
    assert liver_lo + 10 * mm < columns[0] < liver_hi  # cut by the first region's face
    (cut,) = [w for w in first.warnings if "reaches the edge" in w]
    assert "on the patient's right" in cut
    assert not [w for w in first.warnings if "segmented again" in w]
    assert result.roi_box_mm[0][0] < first.roi_box_mm[0][0] - 20.0  # LPS x min: further right


def test_a_region_that_cuts_nothing_is_segmented_once(tiny_models, monkeypatch):
    """No organ at a face of the region inside the scan: one pass, and the same labels as
    without the second-pass machinery."""

    image = _wide_image(DIRECTIONS["identity"])
    masks = []
    for regrow in (True, False):
        box = ((2, 5, 30), (10, 25, 90))
        result = _with_stand_ins(tiny_models, monkeypatch, image, box, _liver_between(45, 75), regrow)
        assert "regrow_s" not in result.timings_s
        assert not [w for w in result.warnings if "segmented again" in w or "reaches the edge" in w]
        masks.append(sitk.GetArrayFromImage(result.mask))
    np.testing.assert_array_equal(masks[0], masks[1])
    assert np.count_nonzero(masks[0] == LIVER) > 0


def test_block_means_of_every_factor():
    from flare_seg.service.pipeline import _block_means

    rng = np.random.default_rng(1)
    for factor in [(1, 1, 1), (1, 2, 2), (2, 3, 1), (3, 1, 4)]:
        shape = tuple(f * n for f, n in zip(factor, (3, 4, 5), strict=True))
        part = rng.integers(-32768, 32767, size=shape, dtype=np.int16)[:, ::-1]  # a flipped view too
        expected = part.astype(float).reshape(3, factor[0], 4, factor[1], 5, factor[2]).mean(axis=(1, 3, 5))
        np.testing.assert_array_equal(_block_means(part, factor), np.floor(expected + 0.5).astype(np.int16))


def test_the_copy_kept_for_a_second_pass_holds_block_averages_around_the_crop(tiny_segmenter):
    from flare_seg.grid import GridCrop
    from flare_seg.service.pipeline import RESERVE_MM

    rng = np.random.default_rng(0)
    vol = rng.integers(-1000, 1000, size=(40, 70, 90), dtype=np.int16)
    spacing = (2.5, 0.7, 0.9)  # whole factors down to 2 mm: 1, 2 and 2
    crop = GridCrop((5, 30, 40), (20, 20, 20), (20, 8, 8), spacing)
    timings: dict[str, float] = {}
    reserve = tiny_segmenter._reserve(vol, crop, spacing, timings)
    assert reserve.factor_zyx == (1, 2, 2)
    grow = np.ceil(RESERVE_MM / np.asarray(spacing)).astype(int)
    assert reserve.start_zyx == (0, max(0, 30 - grow[1]), max(0, 40 - grow[2]))
    z0, y0, x0 = reserve.start_zyx
    d, h, w = reserve.voxels_zyx.shape
    assert z0 + d == 40  # the scan's edge, within the grown region
    expected = vol[z0 : z0 + d, y0 : y0 + 2 * h, x0 : x0 + 2 * w].astype(float)
    expected = expected.reshape(d, 1, h, 2, w, 2).mean(axis=(1, 3, 5))
    np.testing.assert_array_equal(reserve.voxels_zyx, np.floor(expected + 0.5).astype(np.int16))  # half up
    assert y0 + 2 * h > min(70, 50 + grow[1]) - 2 and x0 + 2 * w > min(90, 60 + grow[2]) - 2


def test_inside_the_first_region_the_first_pass_labels_stay(tiny_models, monkeypatch):
    """The second pass only adds what lies beyond the first region: a second pass that labels its
    whole crop liver changes nothing inside the first crop, and fills the rest of its own."""

    image = _wide_image(DIRECTIONS["identity"])
    first = _liver_between(20, 60)
    crops: list = []

    def liver_everywhere_the_second_time(x, crop, timings):
        scores = first(x, crop, timings)
        if len(crops) == 2:
            scores[..., 0], scores[..., LIVER] = 0.0, 1.0
        return scores

    forward = _recorded(liver_everywhere_the_second_time, crops)

    result = _with_stand_ins(tiny_models, monkeypatch, image, ((2, 5, 50), (10, 25, 90)), forward)
    labels = sitk.GetArrayFromImage(result.mask)  # identity: canonical
    one, two = crops
    inside = tuple(slice(a, b) for a, b in zip(one.start_zyx, one.stop_zyx, strict=True))
    expected = np.zeros_like(labels[inside])
    expected[..., : 60 - one.start_zyx[2]] = LIVER
    np.testing.assert_array_equal(labels[inside], expected)
    beyond = np.zeros(labels.shape, bool)
    beyond[tuple(slice(a, b) for a, b in zip(two.start_zyx, two.stop_zyx, strict=True))] = True
    beyond[inside] = False
    assert beyond.any() and (labels[beyond] == LIVER).all()
    assert two.start_zyx[2] < one.start_zyx[2]  # grown on the patient's right


def test_an_oblique_input_is_segmented_again_over_a_grown_region_on_its_own_grid(tiny_models, monkeypatch):
    """An oblique input is segmented on its resampled canonical grid: the second pass runs there,
    and the mask comes back with exactly the input's geometry, holding more liver than without it."""

    image = _wide_image(oblique_direction(8.0))
    volumes = {}
    for regrow in (True, False):
        box = ((2, 5, 50), (10, 25, 90))
        result = _with_stand_ins(tiny_models, monkeypatch, image, box, _liver_between(20, 60), regrow)
        assert Geometry.of(result.mask) == Geometry.of(image)
        assert any("segmented again" in w for w in result.warnings) == regrow
        volumes[regrow] = result.volumes_ml["liver"]
    assert volumes[True] > 1.5 * volumes[False] > 0


def test_a_face_that_cuts_two_organs_is_grown_once(tiny_models, monkeypatch):
    """Liver and spleen both across the region's right face: that face moves by 40 mm (20 voxels
    of 2 mm, plus at most half a valid-size step of 8 voxels from the crop's centred fit), not once
    per organ."""
    from flare_seg.service.pipeline import REGROW_MM

    image = _wide_image(DIRECTIONS["identity"])
    liver = _liver_between(10, 100)
    crops: list = []

    def liver_and_spleen(x, crop, timings):
        scores = liver(x, crop, timings)
        h = crop.out_shape_zyx[1]
        upper = scores[:, h // 2 :]  # the posterior half of the liver's columns becomes spleen
        spleen = upper[..., LIVER] == 1.0
        upper[..., LIVER][spleen], upper[..., SPLEEN][spleen] = 0.0, 1.0
        return scores

    forward = _recorded(liver_and_spleen, crops)

    result = _with_stand_ins(tiny_models, monkeypatch, image, ((2, 5, 80), (10, 25, 110)), forward)
    (note,) = [w for w in result.warnings if "segmented again" in w]
    assert "the liver's mask" in note and "the spleen's mask" in note
    one, two = crops
    moved = one.start_zyx[2] - two.start_zyx[2]
    assert REGROW_MM / 2.0 <= moved <= REGROW_MM / 2.0 + 4  # twice would be 28: the copy's edge

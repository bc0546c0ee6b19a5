"""The anatomical clean-up of the class scores: stray components of an organ are dropped, the organ
itself never."""

from __future__ import annotations

import numpy as np

from flare_seg.labels import LABELS
from flare_seg.service.postprocess import drop_stray_components

LABEL = {name: value for value, name in LABELS.items()}
SPACING = (2.0, 2.0, 2.0)
SHAPE = (40, 60, 120)  # (z, y, x) at 2 mm: 240 mm left to right


def _scores(*blobs: tuple[str, tuple[slice, slice, slice]]) -> np.ndarray:
    """Class scores (d, h, w, classes): background 0.5 everywhere, each blob's organ 0.9 in it, and
    the blob's second choice (background, then the other classes) well below."""
    scores = np.zeros((*SHAPE, len(LABELS)), np.float32)
    scores[..., 0] = 0.5
    for name, box in blobs:
        scores[(*box, LABEL[name])] = 0.9
    return scores


def _labels(scores: np.ndarray) -> np.ndarray:
    return np.argmax(scores, axis=-1)


def _box(
    x0: int, x1: int, y0: int = 20, y1: int = 40, z0: int = 10, z1: int = 30
) -> tuple[slice, slice, slice]:
    return (slice(z0, z1), slice(y0, y1), slice(x0, x1))


def test_a_small_stray_blob_of_an_organ_is_dropped_and_the_organ_kept():
    liver, stray = _box(10, 50), _box(100, 104, 5, 9, 2, 6)
    scores = _scores(("liver", liver), ("liver", stray))
    removed = drop_stray_components(scores, SPACING)
    labels = _labels(scores)
    assert removed == {"liver": 64}
    assert (labels[liver] == LABEL["liver"]).all()
    assert (labels[stray] == 0).all()


def test_a_large_second_piece_of_an_organ_stays():
    a, b = _box(10, 40), _box(50, 70)  # the second piece is 2/3 of the first: not a stray blob
    scores = _scores(("pancreas", a), ("pancreas", b))
    assert drop_stray_components(scores, SPACING) == {}
    assert (_labels(scores)[b] == LABEL["pancreas"]).all()


def test_a_blob_midway_between_the_kidneys_is_dropped():
    right, left, middle = _box(5, 25), _box(95, 115), _box(52, 68, 30, 50)  # a vertebral body
    scores = _scores(("kidney", right), ("kidney", left), ("kidney", middle))
    removed = drop_stray_components(scores, SPACING)
    labels = _labels(scores)
    assert set(removed) == {"kidney"}
    assert (labels[middle] == 0).all()
    assert (labels[right] == LABEL["kidney"]).all() and (labels[left] == LABEL["kidney"]).all()


def test_a_kidney_beside_a_blob_off_to_one_side_is_not_between_anything():
    # right kidney, left kidney and a blob 64 mm further left: the left kidney is not midway
    right, left, outer = _box(5, 25), _box(60, 80), _box(96, 108)
    scores = _scores(("kidney", right), ("kidney", left), ("kidney", outer))
    drop_stray_components(scores, SPACING)
    labels = _labels(scores)
    assert (labels[left] == LABEL["kidney"]).all() and (labels[right] == LABEL["kidney"]).all()


def test_a_horseshoe_kidney_is_one_component_and_stays():
    right, left, isthmus = _box(5, 25), _box(95, 115), _box(25, 95, 34, 40, 10, 14)
    scores = _scores(("kidney", right), ("kidney", left), ("kidney", isthmus))
    assert drop_stray_components(scores, SPACING) == {}
    assert (_labels(scores)[isthmus] == LABEL["kidney"]).all()


def test_a_dropped_component_takes_its_next_most_likely_class():
    spleen, stray = _box(80, 110), _box(10, 14, 5, 9, 2, 6)
    scores = _scores(("spleen", spleen), ("spleen", stray))
    scores[(*stray, LABEL["liver"])] = 0.7  # liver is the second choice there (above background)
    drop_stray_components(scores, SPACING)
    assert (_labels(scores)[stray] == LABEL["liver"]).all()
    assert (_labels(scores)[spleen] == LABEL["spleen"]).all()


def test_a_stray_piece_left_by_a_dropped_one_is_dropped_too():
    """A vertebral body labelled kidney between the kidneys, which the spleen scored next: dropped as
    kidney, it must not turn into a spleen island beside the spleen; it falls to background."""
    right, left, spine = _box(10, 30), _box(90, 110), _box(56, 64, 24, 32, 16, 24)
    spleen = _box(80, 118, 0, 18)
    scores = _scores(("kidney", right), ("kidney", left), ("kidney", spine), ("spleen", spleen))
    scores[(*spine, LABEL["spleen"])] = 0.7  # above background there
    removed = drop_stray_components(scores, SPACING)
    labels = _labels(scores)
    assert (labels[spine] == LABEL["background"]).all()
    assert (labels[spleen] == LABEL["spleen"]).all() and (labels[right] == LABEL["kidney"]).all()
    assert removed == {"kidney": 8 * 8 * 8, "spleen": 8 * 8 * 8}


def test_an_organ_across_a_face_of_the_region_inside_the_scan_is_reported_with_its_side():
    """The region starts 10 voxels into a 100-wide scan on the patient's right (-x) and ends at the
    scan's left face: a liver through its right face is reported (on the patient's right, with its
    area), a spleen through the left face, the scan's own edge, is not."""
    from flare_seg.service.postprocess import organs_cut_by_region

    region = np.zeros((20, 30, 90), np.uint8)
    region[2:18, 5:25, 0:30] = LABEL["liver"]  # 16 x 20 voxels on the face x = 0
    region[2:18, 5:25, 80:90] = LABEL["spleen"]  # on the face x = last, the scan's own
    (warning,) = organs_cut_by_region(region, (0, 0, 10), (20, 30, 100), (3.0, 1.0, 1.0))
    assert warning.startswith("the liver's mask reaches the edge of the segmented region on the patient's ")
    assert "on the patient's right" in warning
    assert "(10 cm²)" in warning  # 16 x 20 voxels of 3 x 1 mm
    # the same region ending one voxel before the scan's left face: the spleen is cut there too
    warnings = organs_cut_by_region(region, (0, 0, 10), (20, 30, 101), (3.0, 1.0, 1.0))
    assert [w.split("'s mask reaches")[0] for w in warnings] == ["the liver", "the spleen"]
    assert "on the patient's left (10 cm²)" in warnings[1]


def test_a_small_contact_or_a_region_that_is_the_whole_scan_is_not_reported():
    from flare_seg.service.postprocess import CUT_AREA_MM2, organs_cut_by_region

    region = np.zeros((20, 30, 40), np.uint8)
    region[0, 10:15, 10:15] = LABEL["kidney"]  # 25 voxels of 2 x 2 mm on the bottom face
    area = 25 * 4.0
    assert area < CUT_AREA_MM2
    assert organs_cut_by_region(region, (5, 0, 0), (30, 30, 40), (2.0, 2.0, 2.0)) == []
    region[0, 0:30, 0:40] = LABEL["kidney"]  # the whole bottom face, 4800 mm²
    (warning,) = organs_cut_by_region(region, (5, 0, 0), (30, 30, 40), (2.0, 2.0, 2.0))
    assert "below (48 cm²)" in warning
    assert organs_cut_by_region(region, (0, 0, 0), (20, 30, 40), (2.0, 2.0, 2.0)) == []  # the scan's face


def test_a_third_kidney_far_from_the_pair_is_dropped_and_a_piece_near_one_stays():
    """Beside a left and a right kidney, a blob 40 mm behind the left one (paraspinal muscle
    labelled kidney) goes, and so does a blob 13.9 mm from the right one's corner; a pole piece 8 mm
    from it stays."""
    right, left = _box(5, 25, 10, 30), _box(95, 115, 10, 30)
    behind = _box(80, 92, 50, 58)  # y 100-116 mm: 40 mm behind the kidneys' back (y 60 mm)
    pole = _box(8, 20, 10, 30, 33, 38)  # 8 mm (voxel centres) above the right kidney's top
    # 8 mm beyond the right kidney's corner along each of x, y and z: 13.9 mm away
    corner = _box(28, 48, 0, 7, 0, 7)
    blobs = [("kidney", box) for box in (right, left, behind, pole, corner)]
    scores = _scores(*blobs)
    removed = drop_stray_components(scores, SPACING)
    labels = _labels(scores)
    assert removed == {"kidney": 12 * 8 * 20 + 20 * 7 * 7}
    assert (labels[behind] == 0).all() and (labels[corner] == 0).all()
    for kept in (right, left, pole):
        assert (labels[kept] == LABEL["kidney"]).all()


def test_without_a_left_and_right_pair_no_third_kidney_is_dropped():
    """The two largest kidney components on the same side (46 mm apart: not a left and a right
    kidney): a third, far from both, is not judged by the pair rule."""
    a, b = _box(5, 25), _box(28, 48)  # centroids 46 mm apart along x
    far = _box(95, 110, 45, 55)
    scores = _scores(("kidney", a), ("kidney", b), ("kidney", far))
    assert drop_stray_components(scores, SPACING) == {}
    assert (_labels(scores)[far] == LABEL["kidney"]).all()

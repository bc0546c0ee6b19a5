"""The preview PNG: three panels at the physical aspect ratio, in radiological orientation, with
the organs' colours, from grids with anisotropic spacing and permuted, flipped or oblique axes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from flare_seg.geometry import Geometry
from flare_seg.preview import BACKGROUND, COLOURS, render_preview, write_preview

PERMUTED_FLIPPED = (0.0, 0.0, -1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
c, s = np.cos(0.1), np.sin(0.1)
OBLIQUE = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
LIVER_AT_MM = np.array([-40.0, 0.0, -25.0])  # patient right (LPS x < 0), inferior
SPLEEN_AT_MM = np.array([40.0, 0.0, 25.0])  # patient left, superior
RADIUS_MM = 22.0


def _phantom(direction: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, Geometry]:
    d = np.asarray(direction).reshape(3, 3)
    # Patient x, y, z: 200, 100 and 180 mm at 4.0, 1.0 and 1.5 mm, on whichever image axes.
    patient_axis = np.argmax(np.abs(d), axis=0)  # of each image axis
    spacing_xyz = np.array([4.0, 1.0, 1.5])[patient_axis]
    size_xyz = np.array([50, 100, 120])[patient_axis]
    origin = -(d @ (spacing_xyz * (size_xyz - 1) / 2))
    geometry = Geometry(tuple(int(n) for n in size_xyz), tuple(spacing_xyz), tuple(origin), direction)  # type: ignore[arg-type]
    zyx = np.indices(geometry.shape_zyx).reshape(3, -1).T
    points = geometry.index_to_physical_xyz(zyx[:, ::-1]).reshape(*geometry.shape_zyx, 3)
    labels = np.zeros(geometry.shape_zyx, np.uint8)
    labels[np.linalg.norm(points - LIVER_AT_MM, axis=-1) <= RADIUS_MM] = 1
    labels[np.linalg.norm(points - SPLEEN_AT_MM, axis=-1) <= RADIUS_MM] = 3
    ct = np.where(labels > 0, 60, 20).astype(np.int16)
    return ct, labels, geometry


def _panels(image: Image.Image) -> list[np.ndarray]:
    """The three panels, found as the column runs that differ from the background."""
    rgb = np.asarray(image)
    band = rgb[60:400]  # inside the panels' rows, below the captions
    busy = np.any(np.any(band != BACKGROUND, axis=2), axis=0)
    edges = np.flatnonzero(np.diff(np.r_[0, busy.astype(int), 0]))
    runs = [(a, b) for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a > 20]
    # Rows that are mostly not background (captions and the legend are thin text).
    a, b = runs[0]
    rows = np.flatnonzero(np.mean(np.any(rgb[:, a:b] != BACKGROUND, axis=2), axis=1) > 0.9)
    return [rgb[:, a:b][rows[0] : rows[-1] + 1] for a, b in runs[:3]]


def _outline_box(panel: np.ndarray, label: int) -> tuple[float, float, float, float] | None:
    """(row centre, column centre, height, width) in pixels of an organ's outline colour."""
    rows, cols = np.nonzero(np.all(panel == COLOURS[label], axis=2))
    if rows.size == 0:
        return None
    return (rows.mean(), cols.mean(), rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)


@pytest.mark.parametrize("direction", [PERMUTED_FLIPPED, OBLIQUE])
def test_views_keep_physical_proportions_and_radiological_orientation(direction) -> None:
    ct, labels, geometry = _phantom(direction)
    image = render_preview(ct, labels, geometry, title="phantom")
    axial, coronal, sagittal = _panels(image)
    for panel in (axial, coronal, sagittal):
        assert panel.shape[0] == 400  # every panel has the same height
    liver, spleen = _outline_box(coronal, 1), _outline_box(coronal, 3)
    assert liver is not None and spleen is not None
    # Balls stay round on screen although the voxels are 4.0 x 1.5 x 1.0 mm.
    for box in (liver, spleen):
        assert box[2] / box[3] == pytest.approx(1.0, abs=0.12)
    # Coronal: the patient's right (liver) on the screen's left, superior (spleen) at the top.
    assert liver[1] < coronal.shape[1] / 2 < spleen[1]
    assert spleen[0] < coronal.shape[0] / 2 < liver[0]
    # The axial and sagittal slices go through the organs (each holds one of the two balls).
    shown = [b for p in (axial, sagittal) for b in (_outline_box(p, 1), _outline_box(p, 3)) if b]
    assert len(shown) >= 2 and all(b[2] / b[3] == pytest.approx(1.0, abs=0.12) for b in shown)
    # A physical width of the coronal view (x: 200 mm) against its height (z: 180 mm), organ crop
    # with margins of 30 mm: the panel's aspect ratio is the physical one.
    assert coronal.shape[1] / coronal.shape[0] == pytest.approx(
        (80 + 2 * RADIUS_MM + 60) / (50 + 2 * RADIUS_MM + 60), abs=0.08
    )


def test_write_preview_png_and_legend(tmp_path) -> None:
    ct, labels, geometry = _phantom(PERMUTED_FLIPPED)
    path = tmp_path / "case_preview.png"
    write_preview(path, ct, labels, geometry, organs={1: "liver", 3: "spleen"}, volumes_ml={"liver": 44.6})
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        rgb = np.asarray(image)
    legend = rgb[-40:]
    for k in (1, 3):
        assert np.all(legend == COLOURS[k], axis=2).sum() > 300  # the legend's colour box
    assert not np.all(rgb == COLOURS[2], axis=2).any()  # kidney not asked for: not drawn
    assert not list(tmp_path.glob(".*.tmp"))


def test_no_organ_shows_the_middle_and_mismatch_is_an_error() -> None:
    ct, labels, geometry = _phantom(PERMUTED_FLIPPED)
    image = render_preview(ct, np.zeros_like(labels), geometry)
    assert len(_panels(image)) == 3
    with pytest.raises(ValueError, match="differ"):
        render_preview(ct[:-1], labels[:-1], geometry)


def test_a_thin_slab_keeps_its_physical_proportions() -> None:
    """20 slices of 2 mm (40 mm) under 350 mm in-plane, an organ 200 mm wide and 30 mm high: the
    coronal view is far wider than high; it is drawn lower, not squeezed into the panel's width."""
    geometry = Geometry((175, 175, 20), (2.0, 2.0, 2.0), (-174.0, -174.0, -19.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    zyx = np.indices(geometry.shape_zyx).reshape(3, -1).T
    points = geometry.index_to_physical_xyz(zyx[:, ::-1]).reshape(*geometry.shape_zyx, 3)
    labels = np.zeros(geometry.shape_zyx, np.uint8)
    inside = np.all(np.abs(points) <= np.array([100.0, 20.0, 15.0]), axis=-1)
    labels[inside] = 1
    ct = np.where(labels > 0, 60, 20).astype(np.int16)
    rgb = np.asarray(render_preview(ct, labels, geometry))
    rows, cols = np.nonzero(np.all(rgb == COLOURS[1], axis=2))
    # the coronal panel's outline: the middle third of the image
    middle = (cols > rgb.shape[1] / 3) & (cols < 2 * rgb.shape[1] / 3)
    height = rows[middle].max() - rows[middle].min() + 1
    width = cols[middle].max() - cols[middle].min() + 1
    assert height / width == pytest.approx(32.0 / 202.0, abs=0.05)

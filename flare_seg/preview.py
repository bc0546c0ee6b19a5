"""A preview PNG of a segmentation: axial, coronal and sagittal views through the organs with a
coloured overlay, a legend and orientation letters, made with Pillow.

Each view is a slice of the CT on the canonical (LPS) grid, in radiological convention (the
patient's right on the image's left, anterior and superior at the top), windowed to soft tissue
(W 400 / L 40 HU) and drawn at the same physical scale along both of its axes, so anisotropic
spacing keeps the anatomy's proportions. The slices are those showing the most organs (and, among those, the
most organ voxels), and
the views are cropped to the organs' box with a margin. Oblique images are shown on the nearest
axis-aligned grid (a preview, not a measurement).

    write_preview(Path("case_preview.png"), volume.array_zyx, result.labels_zyx, volume.geometry)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from flare_seg.geometry import Geometry, canonical_axes
from flare_seg.labels import ORGANS

WINDOW_HU = (-160.0, 240.0)  # abdominal soft-tissue window: level 40, width 400
PANEL_HEIGHT_PX = 400
MAX_PANEL_WIDTH_PX = 800
MARGIN_MM = 30.0
FILL_ALPHA = 0.35
COLOURS: dict[int, tuple[int, int, int]] = {
    1: (230, 85, 60),  # liver
    2: (250, 205, 40),  # kidney
    3: (80, 130, 255),  # spleen
    4: (60, 210, 110),  # pancreas
}
_FALLBACK_COLOURS = ((220, 60, 220), (60, 220, 220), (255, 255, 255))
BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)


@dataclass(frozen=True)
class _View:
    name: str
    ct: np.ndarray  # 2D, rows top to bottom, columns left to right on screen
    labels: np.ndarray
    height_mm: float
    width_mm: float
    caption: str
    letters: tuple[str, str, str, str]  # left, right, top, bottom


def render_preview(
    ct_zyx: np.ndarray,
    labels_zyx: np.ndarray,
    geometry: Geometry,
    organs: Mapping[int, str] = ORGANS,
    title: str = "",
    volumes_ml: Mapping[str, float] | None = None,
) -> Image.Image:
    """The preview as an RGB image: three panels side by side, a legend and a title beneath."""
    if ct_zyx.shape != labels_zyx.shape or tuple(labels_zyx.shape) != geometry.shape_zyx:
        raise ValueError(f"CT {ct_zyx.shape}, labels {labels_zyx.shape} and grid {geometry.shape_zyx} differ")
    axes, canonical = canonical_axes(_nearest_axis_aligned(geometry))
    ct, labels = axes.view(ct_zyx), axes.view(labels_zyx)
    views = _views(ct, labels, canonical, organs)
    panels = [_draw_panel(view, organs) for view in views]
    return _compose(panels, [v.caption for v in views], organs, title, volumes_ml)


def write_preview(
    path: Path,
    ct_zyx: np.ndarray,
    labels_zyx: np.ndarray,
    geometry: Geometry,
    organs: Mapping[int, str] = ORGANS,
    title: str = "",
    volumes_ml: Mapping[str, float] | None = None,
) -> None:
    """``render_preview`` saved as PNG, atomically (a temporary file renamed into place)."""
    path = Path(path)
    image = render_preview(ct_zyx, labels_zyx, geometry, organs, title, volumes_ml)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        image.save(tmp, format="PNG", optimize=True)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _nearest_axis_aligned(geometry: Geometry) -> Geometry:
    """The geometry with its direction snapped to the nearest signed permutation matrix."""
    if geometry.is_axis_aligned:
        return geometry
    d = geometry.direction_matrix
    snapped = np.zeros((3, 3))
    free_rows = [0, 1, 2]
    for col in np.argsort(-np.abs(d).max(axis=0)):  # most decided axis first
        row = max(free_rows, key=lambda r: abs(d[r, col]))
        free_rows.remove(row)
        snapped[row, col] = 1.0 if d[row, col] >= 0 else -1.0
    direction = tuple(float(v) for v in snapped.ravel())
    return Geometry(geometry.size_xyz, geometry.spacing_mm_xyz, geometry.origin_mm_xyz, direction)


def _organ_profiles(labels: np.ndarray, organs: Mapping[int, str]) -> list[np.ndarray]:
    """Voxels of each organ per canonical z, y and x index: three arrays (organs, n), counted
    slab by slab on the organ voxels only (no full-size temporary)."""
    order = list(organs)
    row = np.full(256, -1, np.int64)
    row[order] = np.arange(len(order))
    profiles = [np.zeros((len(order), n), np.int64) for n in labels.shape]
    step = max(1, 2**22 // max(1, labels.shape[1] * labels.shape[2]))
    for z0 in range(0, labels.shape[0], step):
        slab = np.ascontiguousarray(labels[z0 : z0 + step])
        rows = row[slab.reshape(-1)]
        where = np.flatnonzero(rows >= 0)
        if where.size == 0:
            continue
        rows = rows[where]
        coords = np.unravel_index(where, slab.shape)
        for axis, (c, n) in enumerate(zip(coords, slab.shape, strict=True)):
            counts = np.bincount(rows * n + c, minlength=len(order) * n).reshape(len(order), n)
            if axis == 0:
                profiles[0][:, z0 : z0 + n] += counts
            else:
                profiles[axis] += counts
    return profiles


def _best_slice(profile: np.ndarray) -> int:
    """The index showing the most organs, and among those the most organ voxels."""
    present = np.count_nonzero(profile, axis=0)
    total = profile.sum(axis=0)
    return int(np.lexsort((total, present))[-1])


def _views(ct: np.ndarray, labels: np.ndarray, geometry: Geometry, organs: Mapping[int, str]) -> list[_View]:
    """Axial, coronal and sagittal slices (canonical LPS arrays in, screen orientation out)."""
    per_organ = _organ_profiles(labels, organs)
    profiles = [p.sum(axis=0) for p in per_organ]
    spacing = geometry.spacing_mm_zyx
    found = profiles[0].any()
    centre, window = [], []
    for p, organ_p, n, s in zip(profiles, per_organ, labels.shape, spacing, strict=True):
        if not found:
            centre.append(n // 2)
            window.append(slice(0, n))
            continue
        nz = np.flatnonzero(p)
        pad = int(np.ceil(MARGIN_MM / s))
        centre.append(_best_slice(organ_p))
        window.append(slice(max(0, int(nz[0]) - pad), min(n, int(nz[-1]) + 1 + pad)))
    wz, wy, wx = window
    cz, cy, cx = centre
    origin = np.asarray(geometry.index_to_physical_xyz(np.array([cx, cy, cz], float)))
    extent = [(w.stop - w.start) * s for w, s in zip(window, spacing, strict=True)]
    # Screen: axial rows = y (anterior on top), columns = x (patient right on the left);
    # coronal and sagittal rows = z reversed (superior on top).
    return [
        _View("axial", ct[cz, wy, wx], labels[cz, wy, wx], extent[1], extent[2],
              f"axial  z = {origin[2]:.1f} mm", ("R", "L", "A", "P")),
        _View("coronal", ct[wz, cy, wx][::-1], labels[wz, cy, wx][::-1], extent[0], extent[2],
              f"coronal  y = {origin[1]:.1f} mm", ("R", "L", "S", "I")),
        _View("sagittal", ct[wz, wy, cx][::-1], labels[wz, wy, cx][::-1], extent[0], extent[1],
              f"sagittal  x = {origin[0]:.1f} mm", ("A", "P", "S", "I")),
    ]  # fmt: skip


def _colour(label: int) -> tuple[int, int, int]:
    return COLOURS.get(label, _FALLBACK_COLOURS[label % len(_FALLBACK_COLOURS)])


def _draw_panel(view: _View, organs: Mapping[int, str]) -> Image.Image:
    """One view windowed, scaled to its physical aspect ratio and overlaid with the organs: a
    ``PANEL_HEIGHT_PX`` high panel, or, for a view wider than ``MAX_PANEL_WIDTH_PX`` at that height
    (the coronal or sagittal view of a thin slab of slices), that wide and less high."""
    aspect = view.width_mm / max(view.height_mm, 1e-6)
    height = PANEL_HEIGHT_PX
    if height * aspect > MAX_PANEL_WIDTH_PX:
        height = max(1, round(MAX_PANEL_WIDTH_PX / aspect))
    width = max(1, min(MAX_PANEL_WIDTH_PX, round(height * aspect)))
    lo, hi = WINDOW_HU
    grey = np.clip((np.asarray(view.ct, np.float32) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    base = Image.fromarray(grey).resize((width, height), Image.Resampling.BILINEAR)
    labels = np.asarray(
        Image.fromarray(np.ascontiguousarray(view.labels)).resize((width, height), Image.Resampling.NEAREST)
    )
    rgb = np.repeat(np.asarray(base, np.float32)[..., None], 3, axis=2)
    edge = np.zeros(labels.shape, bool)
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    edge[:-1, :] |= labels[1:, :] != labels[:-1, :]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    for k in organs:
        inside = labels == k
        if not inside.any():
            continue
        colour = np.asarray(_colour(k), np.float32)
        rgb[inside] = (1 - FILL_ALPHA) * rgb[inside] + FILL_ALPHA * colour
        rgb[inside & edge] = colour
    panel = Image.fromarray(rgb.astype(np.uint8), "RGB")
    _draw_letters(panel, view.letters)
    return panel


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # a Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _draw_letters(panel: Image.Image, letters: tuple[str, str, str, str]) -> None:
    draw = ImageDraw.Draw(panel)
    font = _font(16)
    w, h = panel.size
    left, right, top, bottom = letters
    spots = ((left, (6, h // 2), "lm"), (right, (w - 6, h // 2), "rm"), (top, (w // 2, 4), "mt"),
             (bottom, (w // 2, h - 4), "mb"))  # fmt: skip
    for text, xy, anchor in spots:
        draw.text(xy, text, fill=(255, 255, 0), font=font, anchor=anchor, stroke_width=2, stroke_fill=0)


def _compose(
    panels: list[Image.Image],
    captions: list[str],
    organs: Mapping[int, str],
    title: str,
    volumes_ml: Mapping[str, float] | None,
) -> Image.Image:
    """Title, captioned panels side by side, then the legend (organ colours, volumes if given)."""
    gap, caption_h, legend_h = 10, 26, 40
    font, small = _font(18), _font(15)
    legend = [
        (k, name if volumes_ml is None or name not in volumes_ml else f"{name}  {volumes_ml[name]:.0f} mL")
        for k, name in organs.items()
    ]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    legend_w = sum(58 + int(measure.textlength(text, font=font)) for _, text in legend) + gap
    slots = [
        max(p.width, int(measure.textlength(c, font=small)) + gap)
        for p, c in zip(panels, captions, strict=True)
    ]
    width = max(sum(slots) + gap * (len(panels) + 1), legend_w)
    height = gap + caption_h + PANEL_HEIGHT_PX + gap + legend_h + (30 if title else 0)
    out = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(out)
    y = gap
    if title:
        draw.text((gap, y), title, fill=TEXT, font=font)
        y += 30
    x = gap
    for panel, caption, slot in zip(panels, captions, slots, strict=True):
        draw.text((x, y + 2), caption, fill=TEXT, font=small)
        out.paste(
            panel, (x + (slot - panel.width) // 2, y + caption_h + (PANEL_HEIGHT_PX - panel.height) // 2)
        )
        x += slot + gap
    y += caption_h + PANEL_HEIGHT_PX + gap
    x = gap
    for k, text in legend:
        draw.rectangle((x, y + 8, x + 22, y + 30), fill=_colour(k), outline=TEXT)
        draw.text((x + 30, y + 9), text, fill=TEXT, font=font)
        x += 58 + int(draw.textlength(text, font=font))
    return out

"""The labelled organs: kidneys, spleen, pancreas and liver.

Each organ is a template shape (a warped ellipsoid, bean, crescent or swept tube, in its own frame)
scaled to a sampled volume, clipped to the cavity (and below the diaphragm), and kept clear of the
organs placed before it. Organs claim only free voxels, in the order they are added, and reserve a
fat halo around themselves.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.special import ndtri

from flare_seg.training.phantom.appearance import Waves
from flare_seg.training.phantom.body import THETA
from flare_seg.training.phantom.canvas import HuFn, PaintContext, Part, const, constant_part
from flare_seg.training.phantom.coarse import Coarse, ShapeFn
from flare_seg.training.phantom.lesions import Lesion, each_lesion_sdf, lesion_hu, lesion_sdf
from flare_seg.training.phantom.params import KIDNEY, LIVER, PANCREAS, SPLEEN
from flare_seg.training.phantom.shapes import (
    Frame,
    Sampled,
    Tube,
    Warp,
    around,
    ellipsoid,
    ellipsoid_fn,
    orthonormal,
    rotation,
    smax,
    smin,
    sub_box_eval,
    unit,
)

if TYPE_CHECKING:
    from flare_seg.training.phantom.anatomy import AnatomyBuilder, OrganVariety

Exclusion = tuple[ShapeFn, np.ndarray, np.ndarray, float]  # (shape, lo, hi, clearance in mm)


class Organ:
    """An organ implicit: a template shape at scale k, clipped (to the cavity, below the diaphragm),
    and kept clear of the organs placed before it by their halo."""

    def __init__(
        self,
        template: Callable[[float], ShapeFn],
        scale: float,
        clips: Sequence[ShapeFn],
        exclusions: Sequence[Exclusion],
    ) -> None:
        self.own = template(scale)
        self.clips = list(clips)
        self.exclusions = list(exclusions)

    def clipped(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """The template at its scale, clipped, before the exclusions."""
        f = self.own(x, y, z)
        for clip in self.clips:
            f = np.maximum(f, clip(x, y, z))
        return f

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        f = self.clipped(x, y, z)
        for fn, lo, hi, clearance in self.exclusions:
            f = np.maximum(f, clearance - sub_box_eval(fn, (x, y, z), lo, hi))
        return f


def calibrated(
    template: Callable[[float], ShapeFn],
    bbox: Callable[[float], tuple[np.ndarray, np.ndarray]],
    target_ml: float,
    clips: Sequence[ShapeFn],
    exclusions: Sequence[Exclusion],
    iterations: int = 3,
) -> tuple[Organ, float]:
    """The organ and its scale k such that the clipped, excluded shape has about `target_ml` mL.

    Volumes are measured on a grid of about 4000 voxels per organ (3-6 mm); k is updated with the
    volume's exponent in k estimated from the last two measurements (3 for a free shape, less where
    it is clipped).
    """
    h = float(np.clip((target_ml * 1000.0 / 4000.0) ** (1.0 / 3.0), 3.0, 6.0))
    k, exponent = 1.0, 3.0
    previous: tuple[float, float] | None = None
    for _ in range(iterations):
        volume = measure_ml(Organ(template, k, clips, exclusions), *bbox(k), h=h)
        if volume <= 0:
            k = min(k * 1.3, 1.8)
            continue
        if previous is not None and abs(math.log(k / previous[0])) > 1e-3:
            exponent = float(np.clip(math.log(volume / previous[1]) / math.log(k / previous[0]), 1.5, 3.0))
        previous = (k, volume)
        k = float(np.clip(k * (target_ml / volume) ** (1.0 / exponent), 0.5, 1.8))
    return Organ(template, k, clips, exclusions), k


def measure_ml(fn: ShapeFn, lo: np.ndarray, hi: np.ndarray, h: float = 3.0) -> float:
    """Volume (mL) of fn < 0 inside the box [lo, hi] (mm), counted on a grid of spacing h mm."""
    coarse = Coarse.covering(lo, hi, h)
    return float(np.count_nonzero(coarse.evaluate(fn) < 0)) * h**3 / 1000.0


def add_organ(
    b: AnatomyBuilder,
    name: str,
    label: int,
    organ: Organ,
    lo: np.ndarray,
    hi: np.ndarray,
    hu: HuFn,
    halo: float,
) -> None:
    """Adds an organ part (label `label`, box [lo, hi] mm) and makes later organs keep `halo` mm from it."""
    b.organs.append(Part(name, organ, lo, hi, hu, code=label, halo_mm=halo, normalize=True))
    b.exclusions.append((Sampled(organ.clipped, lo, hi, 3.0), lo, hi, halo))


def add_kidneys(b: AnatomyBuilder) -> None:
    """Bean-shaped kidneys beside the spine at L1-L2 (the right one lower), hilum anteromedial,
    with renal pelvis and renal vein; both get the kidney label. Sets `b.left_kidney_z`,
    `b.left_kidney` and `b.kidney_bottom_z`."""
    b.left_kidney_z = b.l1_z - b.u(5, 25) + b.variety.kidney_rise_mm
    bottoms = []
    for side in (1, -1):
        z_k = b.left_kidney_z if side > 0 else b.left_kidney_z - b.u(10, 20)
        bottoms.append(_add_kidney(b, side, z_k))
    b.kidney_bottom_z = float(min(bottoms))


def _add_kidney(b: AnatomyBuilder, side: int, z_k: float) -> float:
    """One kidney (side +1: left, -1: right) centred at height z_k (mm) with its renal pelvis and
    vein; returns the height (mm) of its lower pole."""
    name = "left_kidney" if side > 0 else "right_kidney"
    frame = _kidney_frame(b, side, z_k)
    center, axes = frame.center, frame.axes
    semi = np.array([b.u(27, 31), b.u(20, 24), b.u(52, 58)])  # template semi-axes (u, v, w), mm
    bend = b.u(100, 160)
    warp = Warp.random(b.rng, 3, (60, 140), b.u(0.2, 0.5))
    halo = b.u(3, 9)  # perirenal fat
    reach = float(semi.max()) * 1.15 + warp.max_mm + 2.0
    target = 145.0 * b.u(0.85, 1.15) ** 3
    cysts = b.lesions.kidney(side)
    organ, k = calibrated(
        _kidney_template(frame, semi, bend, warp, cysts),
        lambda k: around(center, reach * k),
        target,
        [b.cavity_clip(halo)],
        b.exclusions,
    )
    cortex_mm = b.u(5, 8)
    texture = b.texture(b.u(2, 5))
    paint = _kidney_hu(
        b.hu, cortex_mm, texture, _lesion_paint(b.hu["kidney_cortex"], cysts, frame, warp, semi, k)
    )
    add_organ(b, name, KIDNEY, organ, *around(center, reach * k), paint, halo)
    if side > 0:
        b.left_kidney = (center, semi * k, halo)
    _add_renal_pelvis_and_vein(b, name, side, Frame(center, axes), semi * k)
    return z_k - semi[2] * k * 0.95


def _kidney_frame(b: AnatomyBuilder, side: int, z_k: float) -> Frame:
    """Position and orientation: centre beside the spine at height z_k; axes u toward the hilum
    (anteromedial), v across the thickness, w along the long axis (tilted medially at the top)."""
    medial = np.array([-side, 0.0, 0.0])
    y_k = float(b.spine.center_y(np.float32(z_k))) + b.u(2, 14)
    center = np.array([side * b.u(62, 75), y_k, z_k])
    lean = b.u(0.1, 0.3) + b.variety.kidney_lean  # the lower pole to the front (along the psoas)
    long_axis = unit(0.25 * medial + np.array([0, lean, 1.0]) + b.rng.normal(0, 0.05, 3))
    turn = 0.6 + math.radians(b.variety.kidney_turn_deg)  # hilum from medial towards the front
    hilum_dir = unit(np.cos(turn) * medial + np.sin(turn) * np.array([0, -1.0, 0]) + b.rng.normal(0, 0.05, 3))
    return Frame(center, orthonormal(hilum_dir, long_axis))


def _kidney_template(
    frame: Frame, semi: np.ndarray, bend: float, warp: Warp, cysts: tuple[Lesion, ...] = ()
) -> Callable[[float], ShapeFn]:
    """Shape at scale k: a warped bean (poles bent medially with radius `bend` mm) with a notch at
    the hilum, joined by its cysts (which may bulge out of it)."""

    def template(k: float) -> ShapeFn:
        cyst_fn = lesion_sdf(cysts, frame, warp, semi, k)

        def fn(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
            u, v, w = warp.warped(frame, k, x, y, z)
            bean = ellipsoid(u - w * w / (2 * bend), v, w, *semi)  # poles bend medially
            notch = ellipsoid(u - semi[0] * 0.95, v, w, semi[0] * 0.55, semi[1] * 0.6, semi[2] * 0.35)
            kidney = k * smax(bean, -notch, 4.0)
            return kidney if cyst_fn is None else np.minimum(kidney, cyst_fn(x, y, z))

        return fn

    return template


LesionPaint = Callable[[PaintContext, np.ndarray], None]


def _lesion_paint(
    organ_hu: float, lesions: tuple[Lesion, ...], frame: Frame, warp: Warp, semi: np.ndarray, k: float
) -> LesionPaint | None:
    """Writes each lesion's HU (``lesions.lesion_hu``) into an organ's painted HU; None without lesions."""
    if not lesions:
        return None
    fns = each_lesion_sdf(lesions, frame, warp, semi, k)

    def paint(ctx: PaintContext, out: np.ndarray) -> None:
        for lesion, fn in zip(lesions, fns, strict=True):
            sdf = ctx.field(fn)
            if lesion.texture is None and lesion.core_fraction == 0.0:
                np.copyto(out, np.float32(lesion_hu(lesion, organ_hu)), where=sdf < 0)
                continue
            value = np.full(sdf.shape, lesion_hu(lesion, organ_hu), np.float32)
            if lesion.texture is not None:
                value += ctx.field(lesion.texture)
            if lesion.core_fraction > 0.0:
                core = sdf < -(1.0 - lesion.core_fraction) * lesion.radius_mm
                np.copyto(value, np.float32(lesion.core_hu), where=core)
            np.copyto(out, value, where=sdf < 0)

    return paint


def _kidney_hu(
    hu: dict[str, float], cortex_mm: float, texture: Waves, lesions: LesionPaint | None = None
) -> HuFn:
    """Cortex within `cortex_mm` of the surface, medulla deeper, plus texture; then the cysts."""

    def kidney_hu(ctx: PaintContext) -> np.ndarray:
        medulla = ctx.sdf < -cortex_mm
        out = np.where(medulla, np.float32(hu["kidney_medulla"]), np.float32(hu["kidney_cortex"]))
        out = out + ctx.field(texture)
        if lesions is not None:
            lesions(ctx, out)
        return out

    return kidney_hu


def _add_renal_pelvis_and_vein(
    b: AnatomyBuilder, name: str, side: int, frame: Frame, semi_mm: np.ndarray
) -> None:
    """Renal pelvis in the hilum of the kidney (`frame`, scaled semi-axes `semi_mm`), and the renal
    vein to the IVC (the left one in front of the aorta)."""
    hu, center, axes = b.hu, frame.center, frame.axes
    pelvis = Frame(center + axes[0] * semi_mm[0] * 0.8, axes)
    r_p = semi_mm[2] * 0.3
    shape = ellipsoid_fn(pelvis, (semi_mm[0] * 0.3, semi_mm[1] * 0.35, semi_mm[2] * 0.22))
    b.force.append(Part(f"{name}_pelvis", shape, *around(pelvis.center, r_p), const(hu["urine"]), force=True))
    hilum = center + axes[0] * semi_mm[0] * 1.05
    r_vein = b.u(4, 6)
    z_v = center[2] + 10
    ivc = np.array([b.x_ivc, float(np.interp(z_v, b.ivc_z, b.ivc_y)), z_v])
    if side > 0:
        front = np.array([b.x_aorta, b.aorta_y_at(z_v) - b.r_aorta - r_vein - 1.5, z_v])
        curve = np.stack([hilum, 0.5 * (hilum + front), front, ivc])
    else:
        curve = np.stack([hilum, 0.5 * (hilum + ivc), ivc])
    b.force.append(constant_part(f"{name}_vein", Tube([curve], [np.full(len(curve), r_vein)]), hu["vein"]))


def add_spleen(b: AnatomyBuilder) -> None:
    """Crescent under the left dome, posterolateral, long axis along the ribs, hilum anteromedial."""
    body, rng = b.body, b.rng
    theta = math.radians(b.u(22, 40) - b.variety.spleen_flank_deg)  # angle behind the left flank
    semi = np.array([b.u(19, 23), b.u(35, 41) * b.variety.spleen_depth, b.u(56, 64)])
    rho = float(np.interp(theta, THETA, body.cavity_lut)) - semi[0] * b.u(0.7, 1.0) * b.variety.spleen_inset
    x, y = rho * math.cos(theta), rho * math.sin(theta)
    drop = b.u(40, 55) - b.variety.spleen_rise_mm
    center = np.array([x, y, float(body.diaphragm_z(np.float32(x), np.float32(y))) - drop])
    long_axis = unit(np.array([b.u(0.15, 0.35), -b.u(0.3, 0.55) * b.variety.spleen_tilt, -1.0]))
    to_hilum = unit(np.array([-math.cos(theta) - 0.2, -math.sin(theta) - 0.7, 0.0]))
    frame = Frame(center, orthonormal(to_hilum, long_axis))
    bend = b.u(70, 110)
    warp = Warp.random(rng, 3, (60, 150), b.u(0.3, 0.7))

    def template(k: float) -> ShapeFn:
        def fn(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
            u, v, w = warp.warped(frame, k, x, y, z)
            return k * ellipsoid(u - (v * v + w * w) / (2 * bend), v, w, *semi)  # hilum side concave

        return fn

    reach = float(semi.max()) * 1.15 + warp.max_mm + 2.0
    halo = b.u(0.0, 3.0)
    clips = [b.cavity_clip(0.5), b.below_diaphragm]
    target = 200.0 * b.u(0.85, 1.15) ** 3 * b.variety.spleen_volume
    organ, k = calibrated(template, lambda k: around(center, reach * k), target, clips, b.exclusions)
    mottled = b.phase == "arterial"  # the arterial-phase spleen is mottled
    texture = b.texture(12.0, (15, 40), waves=4) if mottled else b.texture(3.0)
    spleen_hu = b.hu["spleen"]
    add_organ(
        b,
        "spleen",
        SPLEEN,
        organ,
        *around(center, reach * k),
        lambda ctx: spleen_hu + ctx.field(texture),
        halo,
    )
    b.spleen_center, b.spleen_halo = center, halo
    b.spleen_hilum = center + frame.axes[0] * semi[0] * k
    b.to_spleen_hilum = frame.axes[0]


MAX_NECK_DEPTH = 0.55  # a pancreas moved forward keeps its neck this far from the aorta to the front wall


def add_pancreas(b: AnatomyBuilder) -> None:
    """Head on the right (lower), neck in front of the aorta, tail at the splenic hilum: a tube
    with elliptic cross-section, at least 25 mm thick (times the variety's pancreas_thickness),
    swept along a spline, plus the head."""
    z_p = b.z_pancreas = b.left_kidney_z + b.u(15, 35)
    thick = b.variety.pancreas_thickness
    r_neck = b.u(12.5, 14.0) * thick
    gap = b.u(14, 22)  # SMA and fat between the aorta and the neck
    aorta_front = b.aorta_y_at(z_p) - b.r_aorta
    forward = 0.0
    if b.variety.pancreas_forward_mm > 0:  # more fat in front of the aorta, as far as the abdomen has room
        room = aorta_front + b.body.front_wall_mm(z_p)
        forward = min(b.variety.pancreas_forward_mm, max(0.0, MAX_NECK_DEPTH * room - gap - r_neck))
    gap += forward
    neck = np.array([b.u(-8, 8), aorta_front - gap - r_neck, z_p])
    head = np.array([-b.u(30, 40), neck[1] + b.u(5, 15), z_p - b.u(8, 18)])
    body_pt = np.array([b.u(30, 45), neck[1] + b.u(2, 10), z_p + b.u(3, 12)])
    r_tail = b.u(12.5, 14.0) * thick
    tail = b.spleen_hilum + b.to_spleen_hilum * (r_tail + b.spleen_halo + b.u(6, 14))
    tail[1] -= forward / 3.0
    kidney_center, kidney_semi, kidney_halo = b.left_kidney
    tail[1] = min(tail[1], kidney_center[1] - kidney_semi[1] * 1.1 - kidney_halo - r_tail - 2.0)  # in front
    tail[2] = float(np.clip(tail[2], z_p, z_p + 40))
    if b.variety.pancreas_tail_drop_mm > 0:  # a flatter gland: tail and body lower
        drop = b.variety.pancreas_tail_drop_mm
        tail[2] = max(tail[2] - drop, z_p - 5.0)
        body_pt[2] = max(body_pt[2] - 0.5 * drop, z_p - 3.0)
    tail[0] = min(tail[0], body_pt[0] + 70)
    r_ap = np.array([b.u(14, 16) * thick, r_neck, b.u(13, 15) * thick, r_tail])
    r_si = np.array([b.u(16, 20), b.u(14, 17), b.u(15, 18), b.u(13, 16)]) * thick
    tube = Tube([np.stack([head, neck, body_pt, tail])], [r_ap], [r_si])
    head_semi = (b.u(16, 20) * thick, b.u(14, 17) * thick, b.u(22, 28) * thick)
    head_frame = Frame(head - np.array([b.u(0, 6), 0.0, b.u(8, 14)]), np.eye(3))
    head_fn = ellipsoid_fn(head_frame, head_semi)

    def shape(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return smin(tube(x, y, z), head_fn(x, y, z), 6.0)

    lo = np.minimum(tube.lo, head_frame.center - max(head_semi)) - 2
    hi = np.maximum(tube.hi, head_frame.center + max(head_semi)) + 2
    halo = b.u(1.5, 4.0)
    organ = Organ(lambda k: shape, 1.0, [b.cavity_clip(2.0)], b.exclusions)
    texture = b.texture(b.u(2, 5), (30, 80))
    pancreas_hu = b.hu["pancreas"]
    paint: HuFn = lambda ctx: pancreas_hu + ctx.field(texture)  # noqa: E731
    if b.variety.pancreas_fat_fraction > 0:
        paint = _lobulated_hu(paint, b.hu["visceral_fat"], b.variety)
    add_organ(b, "pancreas", PANCREAS, organ, lo, hi, paint, halo)
    b.pancreas_head, b.pancreas_head_semi, b.pancreas_halo = head, head_semi, halo
    b.pancreas_neck = neck
    # the splenic vein runs along the back of the body and tail; the portal confluence is behind the neck
    posterior = np.array([0.0, 1.0, 0.0])
    b.r_splenic = r_sv = b.u(3.5, 5.0)
    b.splenic_curve = np.stack(
        [
            neck + posterior * (r_neck + r_sv + 1),
            body_pt + posterior * (r_ap[2] + r_sv + 1),
            tail + posterior * (r_tail + r_sv + 1),
            b.spleen_hilum,
        ]
    )
    b.confluence = neck + posterior * (r_neck + b.u(7, 9)) + np.array([-5.0, 0.0, 3.0])


def _lobulated_hu(parenchyma: HuFn, fat_hu: float, variety: OrganVariety) -> HuFn:
    """``parenchyma`` with fat between lobules: a sum of eight plane waves (wavelengths 1-2.5
    times the lobule size) thresholded so that ``variety.pancreas_fat_fraction`` of the organ is
    fat, with a 1 mm soft edge (partial volume). Evaluated on the fine grid: lobules are smaller
    than the coarse grid the other textures are sampled on."""
    lobule = variety.pancreas_lobule_mm
    # its own stream (the variety's seed), so the anatomy stream's draws stay those of the seed
    rng = np.random.default_rng(variety.pancreas_lobule_seed)
    waves = Waves.random(rng, 8, (lobule, 2.5 * lobule), 1.0)  # about N(0, 1)
    threshold = float(ndtri(1.0 - variety.pancreas_fat_fraction))
    slope = 2.0 * np.pi / lobule  # field units per mm near a crossing, roughly

    def paint(ctx: PaintContext) -> np.ndarray:
        hu = np.asarray(parenchyma(ctx), np.float32)
        fat = np.clip((waves(*ctx.coords()) - threshold) * slope + 0.5, 0.0, 1.0)
        return (hu * (1.0 - fat) + np.float32(fat_hu) * fat).astype(np.float32)

    return paint


def add_liver(b: AnatomyBuilder) -> None:
    """Right upper quadrant under the diaphragm: a large right lobe smoothly joined to a wedge-like
    left lobe that crosses the midline, cut below by an oblique plane, with intrahepatic vessels.
    Sets `b.liver_center`, `b.liver_scale`, `b.liver_hilum` and `b.liver_shape`."""
    shape = _sample_liver_shape(b)
    halo = b.u(0.0, 2.0)
    # ~7% is carved out later by the IVC, portal vein and gallbladder; a larger left lobe adds to it
    target = 1650.0 * b.u(0.87, 1.13) ** 3 * (1.0 + 0.3 * (b.variety.liver_left_lobe - 1.0))
    target += sum(4.0 / 3.0 * math.pi * m.radius_mm**3 / 1000.0 for m in shape.lesions if m.grows_organ)
    clips = [b.cavity_clip(0.5), b.below_diaphragm]
    organ, k = calibrated(shape.template, shape.bbox, target, clips, b.exclusions)
    center = shape.frame.center
    b.liver_center, b.liver_scale = center, k
    # intrahepatic vessels (inside the liver label): portal branches from the hilum, hepatic veins
    b.liver_hilum = center + np.array([b.u(20, 30), -b.u(5, 15), -b.u(25, 40)]) * k
    portal_tree = _portal_branches(b, b.liver_hilum, k)
    hepatic_tree = _hepatic_veins(b, k)
    texture = b.texture(b.u(2, 5), (50, 150))
    trees = ((portal_tree, "portal_vein"), (hepatic_tree, "vein"))
    lesions = _lesion_paint(b.hu["liver"], shape.lesions, shape.frame, shape.warp, shape.right, k)
    lo, hi = shape.bbox(k)
    b.liver_shape = (organ, lo, hi)
    add_organ(b, "liver", LIVER, organ, lo, hi, _liver_hu(b.hu, texture, trees, lesions), halo)


@dataclass(frozen=True)
class _LiverShape:
    """The liver template in its frame (local axes u, v, w; mm at scale 1): right lobe semi-axes
    `right`, left lobe semi-axes `left` at offset `left_off`, thinning by `taper` to the left, cut
    by the plane n . (u, v, w) = d; `limit_lo`/`limit_hi` bound its box (anatomy mm). With
    `left_front_y` (anatomy mm), the left lobe's antero-posterior offset is set at each scale so
    that its front lies at that y."""

    frame: Frame
    right: np.ndarray
    left_off: np.ndarray
    left: np.ndarray
    taper: float
    plane_n: np.ndarray
    plane_d: float
    warp: Warp
    limit_lo: tuple[float, float, float]
    limit_hi: tuple[float, float, float]
    lesions: tuple[Lesion, ...] = ()  # placed in the right lobe's semi-axes; masses may bulge out
    left_front_y: float | None = None

    def left_offset(self, k: float) -> np.ndarray:
        """The left lobe's offset (local axes, mm at scale 1) at scale k."""
        if self.left_front_y is None:
            return self.left_off
        axes = self.frame.axes  # anatomy = centre + k * local @ axes
        reach = float(np.sqrt(np.sum((self.left * axes[:, 1]) ** 2)))  # the lobe's half extent along y
        off = self.left_off.copy()
        want = (self.left_front_y - self.frame.center[1]) / k + reach  # the lobe centre's y, local mm
        off[1] = (want - off[0] * axes[0, 1] - off[2] * axes[2, 1]) / axes[1, 1]
        return off

    def template(self, k: float) -> ShapeFn:
        """The shape at scale k."""
        frame, right, left_off, left, taper = (
            self.frame,
            self.right,
            self.left_offset(k),
            self.left,
            self.taper,
        )
        plane_n, plane_d, warp = self.plane_n, self.plane_d, self.warp
        lesion_fn = lesion_sdf(self.lesions, frame, warp, right, k)

        def fn(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
            u, v, w = warp.warped(frame, k, x, y, z)
            right_lobe = ellipsoid(u, v, w, *right)
            s = 1.0 - taper * np.clip((u - left_off[0]) / left[0], 0.0, 1.0)  # thinner to the left
            left_lobe = ellipsoid(u - left_off[0], (v - left_off[1]) / s, (w - left_off[2]) / s, *left) * s
            plane = plane_n[0] * u + plane_n[1] * v + plane_n[2] * w - plane_d
            liver = k * np.maximum(smin(right_lobe, left_lobe, 20.0), plane)
            return liver if lesion_fn is None else np.minimum(liver, lesion_fn(x, y, z))

        return fn

    def bbox(self, k: float) -> tuple[np.ndarray, np.ndarray]:
        """Anatomy box (lo, hi), mm, around both lobes at scale k, warp included."""
        left_off = self.left_offset(k)
        t_lo = np.minimum(-self.right, left_off - self.left)  # template box (mm, local axes)
        t_hi = np.maximum(self.right, left_off + self.left)
        for lesion in (m for m in self.lesions if m.grows_organ):  # a large mass may bulge beyond both lobes
            centre, r = np.asarray(lesion.position) * self.right, lesion.radius_mm / k
            t_lo, t_hi = np.minimum(t_lo, centre - r), np.maximum(t_hi, centre + r)
        corners = np.array(list(itertools.product(*zip(t_lo, t_hi, strict=True))))
        pts = self.frame.center + (corners * k) @ self.frame.axes
        pad = self.warp.max_mm * k + 4.0
        return np.maximum(pts.min(0) - pad, self.limit_lo), np.minimum(pts.max(0) + pad, self.limit_hi)


def _sample_liver_shape(b: AnatomyBuilder) -> _LiverShape:
    """Position, lobe sizes, lower cut, orientation and warp of the liver."""
    rng = b.rng
    center = np.array([-b.cav_a * b.u(0.40, 0.50), b.u(-10, 15) - b.variety.liver_forward_mm, -b.u(70, 85)])
    right = np.array([70.0, 82.0 * b.variety.liver_depth, 92.0]) * np.exp(rng.normal(0, 0.04, 3))
    lobe = b.variety.liver_left_lobe
    left_off = np.array([b.u(70, 85) * lobe, -b.u(30, 45), b.u(20, 35) - b.variety.liver_left_lobe_drop_mm])
    left = np.array([b.u(65, 80) * lobe, b.u(36, 46) * math.sqrt(lobe), b.u(32, 42)])
    v = b.variety
    left *= np.array([1.0, v.liver_left_lobe_thickness, v.liver_left_lobe_height])
    taper = b.u(0.3, 0.5)
    plane_n = unit([b.u(0.25, 0.45), -b.u(0.25, 0.45), -1.0])
    plane_d = b.u(72, 88) * abs(plane_n[2])
    tilt = rotation(rng.normal(size=3), math.radians(b.u(0, 6)))
    frame = Frame(center, (rotation([0, 0, 1], math.radians(b.u(-10, 10))) @ tilt).T)
    warp = Warp.random(rng, 4, (120, 250), b.u(0.4, 0.9)) + Warp.random(rng, 3, (40, 80), b.u(0.1, 0.25))
    limit_lo = (-b.cav_a * 1.2, -b.cav_ant * 1.2, -400.0)
    limit_hi = (b.cav_a * 1.2, 200.0, 20.0)
    left_front_y = None
    if v.liver_left_lobe_thickness < 1.0:  # a plate against the front wall, at the lobe's height
        left_front_y = -b.body.front_wall_mm(np.float32(center[2] + left_off[2])) + v.liver_left_lobe_front_mm
    return _LiverShape(
        frame,
        right,
        left_off,
        left,
        taper,
        plane_n,
        plane_d,
        warp,
        limit_lo,
        limit_hi,
        b.lesions.liver,
        left_front_y,
    )


def _portal_branches(b: AnatomyBuilder, hilum: np.ndarray, k: float) -> Tube:
    """4-6 portal vein branches from the liver hilum, tapering to 2 mm."""
    rng = b.rng
    branches, branch_r = [], []
    for _ in range(int(rng.integers(4, 7))):
        d = unit(rng.normal(size=3) + np.array([-0.6, 0.0, 0.5]))
        length = b.u(50, 90) * k
        branches.append(np.stack([hilum, hilum + d * length * 0.5 + rng.normal(0, 8, 3), hilum + d * length]))
        r0 = b.u(4.5, 6.5)
        branch_r.append(np.array([r0, r0 * 0.6, 2.0]))
    return Tube(branches, branch_r)


def _hepatic_veins(b: AnatomyBuilder, k: float) -> Tube:
    """Three hepatic veins from the top of the intrahepatic IVC, tapering to 2 mm."""
    rng = b.rng
    ivc_top = np.array([b.x_ivc, float(np.interp(-15.0, b.ivc_z, b.ivc_y)), -15.0])
    veins, vein_r = [], []
    for _ in range(3):
        d = unit(np.array([b.u(-1.0, 0.7), -b.u(0.6, 1.2), -b.u(0.1, 0.6)]))
        length = b.u(60, 100) * k
        veins.append(
            np.stack([ivc_top, ivc_top + d * length * 0.5 + rng.normal(0, 6, 3), ivc_top + d * length])
        )
        vein_r.append(np.array([b.u(5, 7), 4.0, 2.0]))
    return Tube(veins, vein_r)


def _liver_hu(
    hu: dict[str, float],
    texture: Waves,
    trees: Sequence[tuple[Tube, str]],
    lesions: LesionPaint | None = None,
) -> HuFn:
    """Liver HU plus texture, with the vessel trees painted inside in their tissues' HU, then the
    lesions (which displace the vessels)."""

    def liver_hu(ctx: PaintContext) -> np.ndarray:
        out = hu["liver"] + ctx.field(texture)
        for tree, tissue in trees:
            np.copyto(out, np.float32(hu[tissue]), where=ctx.field(tree, tree.lo, tree.hi) < 0)
        if lesions is not None:
            lesions(ctx, out)
        return out

    return liver_hu

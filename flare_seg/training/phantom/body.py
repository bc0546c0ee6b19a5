"""The body layer: outline, wall layers, diaphragm, lungs, ribs, iliac wings and table, painted
analytically slab by slab on the whole grid.

Angles theta = atan2(y, x) about the anatomy origin (+y posterior); the outline and wall thicknesses
are tabulated on `THETA`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flare_seg.training.phantom.acquisition import Box, Grid
from flare_seg.training.phantom.canvas import Canvas
from flare_seg.training.phantom.coarse import upsample
from flare_seg.training.phantom.params import RESERVED

THETA = np.linspace(-np.pi, np.pi, 1441)


@dataclass(frozen=True)
class Body:
    """Body and cavity geometry. Angles theta = atan2(y, x) about the anatomy origin (+y posterior)."""

    cavity_lut: np.ndarray  # cavity radius (mm) on THETA at scale 1
    muscle_lut: np.ndarray  # muscle wall thickness (mm)
    fat_lut: np.ndarray  # subcutaneous fat thickness (mm)
    skin_mm: float
    scale_amp: float
    scale_wavelength: float
    scale_phase: float
    pelvis_z: float  # below this the cavity narrows laterally (true pelvis)
    pelvis_narrowing: float
    domes: tuple[tuple[float, float, float, float], ...]  # (x, y, z, curvature radius) per dome
    dome_posterior: float  # posterior steepening of the domes
    recess_z: float  # lowest point of the costophrenic recesses
    diaphragm_mm: float
    mediastinum_x: float
    mediastinum_half_width: float
    rib_lowest_z: float  # z of the lowest rib at the spine
    rib_slope: float  # mm of descent per radian away from the spine
    rib_pitch: float
    rib_height: float
    rib_thickness: float
    xiphoid_z: float
    crest_z: float  # iliac crest
    ilium_thickness: float
    table_y: float | None
    table_thickness: float

    def scale(self, z: np.ndarray) -> np.ndarray:
        """Cavity scale factor at heights z (mm): a slow modulation of the outline along z."""
        return (
            1.0 + self.scale_amp * np.sin(2 * np.pi * z / self.scale_wavelength + self.scale_phase)
        ).astype(np.float32)

    def narrowing(self, z: np.ndarray) -> np.ndarray:
        """Lateral narrowing (0 to pelvis_narrowing) of the cavity below `pelvis_z`, at heights z (mm)."""
        t = np.clip((self.pelvis_z - z) / 80.0, 0.0, 1.0)
        return (self.pelvis_narrowing * t * t * (3 - 2 * t)).astype(np.float32)

    def cavity_radius(self, theta: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Cavity radius (mm) at angles theta (rad) and heights z (mm)."""
        e = np.interp(theta, THETA, self.cavity_lut).astype(np.float32)
        c2 = np.cos(theta).astype(np.float32) ** 2
        return e * self.scale(z) * (1.0 - self.narrowing(z) * c2)

    def front_wall_mm(self, z: float | np.floating) -> float:
        """Distance (mm) from the cavity's axis to its front wall (LPS -y) at height ``z`` (mm),
        computed in ``z``'s precision."""
        heights = np.atleast_1d(z)
        return float(self.cavity_radius(np.full(1, -np.pi / 2, heights.dtype), heights)[0])

    def cavity_sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Radial distance (mm) outside the abdominal/thoracic cavity (negative inside)."""
        return np.hypot(x, y) - self.cavity_radius(np.arctan2(y, x), z)

    def diaphragm_z(self, x: np.ndarray | np.floating, y: np.ndarray | np.floating) -> np.ndarray:
        """z (mm) of the diaphragm's lower surface above the point (x, y)."""
        out: np.ndarray | float = self.recess_z
        for dx0, dy0, dz0, rc in self.domes:
            dx = x - dx0
            dy = (y - dy0) * np.where(y > dy0, self.dome_posterior, 1.0).astype(np.float32)
            out = np.maximum(out, dz0 - (dx * dx + dy * dy) / (2 * rc))
        return np.asarray(out, np.float32)

    def skin_radius_max(self) -> float:
        """Largest distance (mm) of the skin from the anatomy z axis, over all angles and heights."""
        s = 1.0 + abs(self.scale_amp)
        return float(np.max(self.cavity_lut * s + self.muscle_lut + self.fat_lut) + self.skin_mm)

    def skin_posterior_max(self) -> float:
        """Largest posterior (y) reach of the skin, mm, over all angles and heights."""
        s = 1.0 + abs(self.scale_amp)
        r = self.cavity_lut * s + self.muscle_lut + self.fat_lut + self.skin_mm
        return float(np.max(r * np.sin(THETA)))


def sample_body(
    rng: np.random.Generator,
    spine_y: float,
    crest_z: float,
    l1_z: float,
    width: float = 1.0,
    depth: float = 1.0,
) -> Body:
    """Draws the body outline, wall thicknesses, diaphragm, ribs, pelvis and table from landmarks of
    the skeleton (spine body centre y, iliac crest z and L1 z, mm); ``width`` and ``depth`` scale
    the abdominal cavity's half-width and its depth in front of the spine."""
    a, radius = _sample_cavity_outline(rng, spine_y, width, depth)
    muscle, fat = _sample_wall(rng)
    domes = (
        (-a * rng.uniform(0.4, 0.5), -rng.uniform(0, 20), 0.0, rng.uniform(65, 90)),
        (a * rng.uniform(0.4, 0.5), rng.uniform(-10, 10), -rng.uniform(10, 30), rng.uniform(65, 90)),
    )
    skin = rng.uniform(1.5, 2.5)
    table_y = None
    scale_amp = rng.uniform(0, 0.05)
    if rng.random() < 0.75:
        r = radius * (1.0 + scale_amp) + muscle + fat + skin
        table_y = float(np.max(r * np.sin(THETA))) - rng.uniform(0, 6)  # the patient's back rests on it
    return Body(
        cavity_lut=radius.astype(np.float32),
        muscle_lut=muscle.astype(np.float32),
        fat_lut=fat.astype(np.float32),
        skin_mm=skin,
        scale_amp=scale_amp,
        scale_wavelength=rng.uniform(400, 800),
        scale_phase=rng.uniform(0, 2 * np.pi),
        pelvis_z=crest_z - rng.uniform(30, 60),
        pelvis_narrowing=rng.uniform(0.15, 0.3),
        domes=domes,
        dome_posterior=math.sqrt(rng.uniform(1.5, 2.2)),
        recess_z=-rng.uniform(120, 150),
        diaphragm_mm=rng.uniform(3, 5),
        mediastinum_x=rng.uniform(0, 10),
        mediastinum_half_width=rng.uniform(25, 38),
        rib_lowest_z=l1_z + rng.uniform(20, 35),
        rib_slope=rng.uniform(28, 38),
        rib_pitch=rng.uniform(28, 34),
        rib_height=rng.uniform(9, 13),
        rib_thickness=rng.uniform(6, 9),
        xiphoid_z=-rng.uniform(40, 70),
        crest_z=crest_z,
        ilium_thickness=rng.uniform(6, 10),
        table_y=table_y,
        table_thickness=rng.uniform(4, 8),
    )


def _sample_cavity_outline(
    rng: np.random.Generator, spine_y: float, width: float = 1.0, depth: float = 1.0
) -> tuple[float, np.ndarray]:
    """(half-width mm, cavity radius mm on THETA at scale 1): a superellipse, flatter and deeper
    behind (reaching past the spine centre at y = spine_y mm), with mild low-order modulation;
    the half-width is scaled by ``width``, the depth in front by ``depth``."""
    a = rng.uniform(115, 145) * width
    b_ant = rng.uniform(70, 100) * depth
    b_post = spine_y + rng.uniform(25, 35)
    n_ant, n_post = rng.uniform(2.0, 2.4), rng.uniform(2.3, 3.0)
    c, s = np.cos(THETA), np.sin(THETA)
    post = s > 0
    n = np.where(post, n_post, n_ant)
    b = np.where(post, b_post, b_ant)
    radius = (np.abs(c / a) ** n + np.abs(s / b) ** n) ** (-1.0 / n)
    modulation: np.ndarray | float = 1.0
    for m in (2, 3, 4):
        modulation = modulation + rng.uniform(0, 0.025) * np.cos(m * THETA + rng.uniform(0, 2 * np.pi))
    return a, radius * modulation


def _sample_wall(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(muscle, subcutaneous fat) thicknesses, mm on THETA: thick back muscles, a thin linea alba."""
    c, s = np.cos(THETA), np.sin(THETA)
    pos, neg = np.maximum(s, 0), np.maximum(-s, 0)
    m_lat, m_ant, m_post = rng.uniform(8, 14), rng.uniform(7, 12), rng.uniform(45, 62)
    muscle = m_lat + (m_post - m_lat) * pos**4 + (m_ant - m_lat) * neg**2
    f0 = rng.uniform(6, 35)
    fat = f0 * (0.75 + 0.35 * neg + 0.25 * np.abs(c)) * (1 + 0.15 * np.cos(2 * THETA + rng.uniform(0, 6.3)))
    alba = 0.7 * muscle * np.exp(-(((THETA + np.pi / 2) / 0.05) ** 2))  # thin linea alba; fat fills in
    return muscle - alba, fat + alba


# Tissue classes of the body layer, painted with one table lookup per slab.
BODY_TISSUES = (
    "visceral_fat",  # 0: abdominal cavity (free for organs)
    "muscle",  # 1: muscle wall
    "fat",  # 2: subcutaneous fat
    "skin",  # 3
    "air",  # 4
    "muscle",  # 5: diaphragm
    "lung",  # 6
    "visceral_fat",  # 7: mediastinum
    "rib",  # 8: ribs, sternum, iliac wings
    "cartilage",  # 9: costal cartilage
    "table",  # 10
)


def _body_fields(body: Body, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Per-pixel quantities of the body layer that depend on (x, y) only (anatomy mm)."""
    theta = np.arctan2(y, x)
    return {
        "rho": np.hypot(x, y),
        "cavity": np.interp(theta, THETA, body.cavity_lut).astype(np.float32),
        "muscle": np.interp(theta, THETA, body.muscle_lut).astype(np.float32),
        "fat": np.interp(theta, THETA, body.fat_lut).astype(np.float32),
        "cos2": (np.cos(theta) ** 2).astype(np.float32),
        "alpha": np.abs(np.mod(theta - np.pi / 2 + np.pi, 2 * np.pi) - np.pi).astype(
            np.float32
        ),  # from spine
        "diaphragm": body.diaphragm_z(x, y),
    }


def _body_fields_oblique(grid: Grid, box: Box, body: Body) -> dict[str, np.ndarray]:
    """_body_fields for a box of an oblique grid: evaluated on every f-th voxel in-plane (f * spacing
    <= 2 mm) and upsampled linearly; the fields are smooth where it matters."""
    f = [max(1, int(2.0 / s)) for s in grid.spacing_xyz[1::-1]]  # (y, x)
    n = [box[1].stop - box[1].start, box[2].stop - box[2].start]
    m = [math.ceil((nn - 1) / ff) + 1 for nn, ff in zip(n, f, strict=True)]
    sub = (
        box[0],
        slice(box[1].start, box[1].start + f[0] * (m[0] - 1) + 1, f[0]),
        slice(box[2].start, box[2].start + f[1] * (m[1] - 1) + 1, f[1]),
    )
    x, y, _ = grid.coords(sub)
    fields = _body_fields(body, x, y)
    for name, value in fields.items():
        value = np.broadcast_to(value, np.broadcast_shapes(value.shape, (1, m[0], m[1])))
        fields[name] = upsample(upsample(value, f[0], n[0], 1), f[1], n[1], 2)
    return fields


def paint_body(canvas: Canvas, body: Body, hu: dict[str, float], slab: int = 16) -> None:
    """Air, skin, fat, muscle wall, cavity fat, diaphragm, lungs, mediastinum, ribs, ilia and table.

    Works slab by slab on the whole grid. Everything outside the abdominal cavity below the
    diaphragm is marked reserved in the mask, so organs and bowel stay inside it.
    """
    grid = canvas.grid
    nz, ny, nx = grid.shape_zyx
    lut = np.array([hu[t] for t in BODY_TISSUES], np.float32)
    cached: dict[str, np.ndarray] | None = None
    for k0 in range(0, nz, slab):
        box = (slice(k0, min(k0 + slab, nz)), slice(0, ny), slice(0, nx))
        x, y, z = grid.coords(box)
        planar = x.shape[0] == 1 and y.shape[0] == 1  # axis-aligned: (x, y) the same on every slice
        if planar:
            f = cached = cached if cached is not None else _body_fields(body, x, y)
        else:
            f = _body_fields_oblique(grid, box, body)
        cls = _body_classes(body, f, x, y, z)
        canvas.hu[box] = lut[cls]
        np.multiply(cls > 0, np.uint8(RESERVED), out=canvas.mask[box], casting="unsafe")


def _body_classes(
    body: Body, f: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, z: np.ndarray
) -> np.ndarray:
    """uint8 indices into BODY_TISSUES for one slab, from its fields `f` and anatomy coordinates."""
    radius = f["cavity"] * body.scale(z)
    muscle = f["muscle"]
    zmin, zmax = float(np.min(z)), float(np.max(z))
    if zmin < body.pelvis_z:  # the true pelvis narrows the cavity; hip muscles fill the gap
        narrowed = radius * (1.0 - body.narrowing(z) * f["cos2"])
        muscle = muscle + (radius - narrowed)
        radius = narrowed
    e = f["rho"] - radius  # mm outside the cavity
    outside = e >= 0
    cls = outside.view(np.uint8) + (e >= muscle)
    wall = muscle + f["fat"]
    cls += e >= wall
    cls += e >= wall + body.skin_mm
    if zmax > body.recess_z:  # thorax above the diaphragm
        above = (z > f["diaphragm"]) & ~outside
        lung = above & (z > f["diaphragm"] + body.diaphragm_mm)
        cls += above.view(np.uint8) * np.uint8(5)
        cls += lung
        cls += lung & (np.abs(x - body.mediastinum_x) < body.mediastinum_half_width)
    _paint_bones(body, f, z, e, cls)
    if body.table_y is not None:
        table = (y >= body.table_y) & (y < body.table_y + body.table_thickness) & (np.abs(x) < 230.0)
        cls[np.broadcast_to(table, cls.shape)] = 10
    return cls


def _paint_bones(body: Body, f: dict[str, np.ndarray], z: np.ndarray, e: np.ndarray, cls: np.ndarray) -> None:
    """Ribs, costal cartilage, sternum and iliac wings in the muscle wall just outside the cavity
    (`e`: mm outside the cavity), written into the class array `cls` in place."""
    zmin, zmax = float(np.min(z)), float(np.max(z))
    ribs = zmax > body.rib_lowest_z - body.rib_slope * 2.6
    ilia = zmin < body.crest_z and zmax > body.crest_z - 150.0
    if not (ribs or ilia):
        return
    thickness = max(body.rib_thickness, body.ilium_thickness)
    idx = np.nonzero((e >= 1.0) & (e < 1.0 + thickness))
    depth = e[idx]
    zz = np.broadcast_to(z, e.shape)[idx]
    alpha = np.broadcast_to(f["alpha"], e.shape)[idx]
    code = np.zeros(len(depth), np.uint8)
    if ribs:
        phase = (zz + body.rib_slope * alpha - body.rib_lowest_z) / body.rib_pitch
        number = np.floor(phase)
        rib = (depth < 1.0 + body.rib_thickness) & (phase >= 0)
        rib &= phase - number < body.rib_height / body.rib_pitch
        reach = np.where(number < 2, 1.4, 2.3)  # the two lowest (floating) ribs are short
        code[rib & (alpha < reach)] = 8
        code[rib & (alpha >= reach) & (alpha < 2.95)] = 9
        code[(depth < 1.0 + body.rib_thickness) & (alpha >= 2.95) & (zz > body.xiphoid_z)] = 8
    if ilia:
        wing = (depth < 1.0 + body.ilium_thickness) & (zz < body.crest_z) & (zz > body.crest_z - 150.0)
        code[wing & (alpha > 0.35) & (alpha < 1.9)] = 8
    hit = code > 0
    cls[tuple(i[hit] for i in idx)] = code[hit]

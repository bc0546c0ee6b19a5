"""The skeleton other than the body layer's ribs and iliac wings: the vertebral column with the
sacrum, and the femoral heads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from flare_seg.training.phantom.canvas import PaintContext, Part, layers
from flare_seg.training.phantom.shapes import FAR, Frame, around, ellipsoid_fn

if TYPE_CHECKING:
    from flare_seg.training.phantom.anatomy import AnatomyBuilder


@dataclass(frozen=True)
class Spine:
    """Vertebral column: bodies, discs, canal with cord, posterior elements; sacrum below S1."""

    z0: float  # centre of L1
    pitch: float
    disc: float
    y_l1: float  # vertebral body centre y at L1
    lordosis: float
    sacrum_z: float
    rx_lumbar: float
    ry_lumbar: float
    canal_r: float
    arch: float
    spinous_len: float
    transverse_len: float

    def center_y(self, z: np.ndarray | np.floating) -> np.ndarray:
        """y (mm) of the vertebral body centres at heights z (mm): lordosis, kyphosis, sacral tilt."""
        l3 = self.z0 - 2 * self.pitch
        y = self.y_l1 - self.lordosis * np.exp(-(((z - l3) / 110.0) ** 2))
        y = y + 0.12 * np.maximum(z - self.z0 - 60.0, 0.0)  # thoracic kyphosis
        return np.asarray(y + 0.55 * np.maximum(self.sacrum_z - z, 0.0), np.float32)

    def radii(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vertebral body semi-axes (rx, ry), mm, at heights z (mm): smaller in the chest, sacral alae."""
        t = np.clip((z - (self.z0 + 20.0)) / 150.0, 0.0, 1.0)  # thoracic bodies are smaller
        below = np.clip((self.sacrum_z - z) / 40.0, 0.0, 1.0)
        ala = 1.0 + 0.7 * below * np.clip(1.0 - (self.sacrum_z - z - 40.0) / 80.0, 0.0, 1.0)
        rx = self.rx_lumbar * (1.0 - 0.25 * t) * ala
        ry = self.ry_lumbar * (1.0 - 0.15 * t) * (1.0 - 0.3 * below)
        return rx.astype(np.float32), ry.astype(np.float32)

    def _local_z(self, z: np.ndarray) -> np.ndarray:
        """Height (mm) relative to the nearest vertebral body centre."""
        u = (z - self.z0) / self.pitch
        return ((u - np.round(u)) * self.pitch).astype(np.float32)

    def body(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Vertebral bodies without the discs (mm)."""
        rx, ry = self.radii(z)
        q = np.sqrt((x / rx) ** 2 + ((y - self.center_y(z)) / ry) ** 2)
        radial = (q - 1.0) * np.minimum(rx, ry)
        half = 0.5 * (self.pitch - self.disc)
        vertical = np.where(z < self.sacrum_z, -FAR, np.abs(self._local_z(z)) - half).astype(np.float32)
        return np.maximum(radial, vertical)

    def column(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Bodies and discs together."""
        rx, ry = self.radii(z)
        q = np.sqrt((x / rx) ** 2 + ((y - self.center_y(z)) / ry) ** 2)
        return (q - 1.0) * np.minimum(rx, ry) * 0.97

    def canal(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Spinal canal (mm)."""
        _, ry = self.radii(z)
        cy = self.center_y(z) + ry + self.arch * 0.6 + self.canal_r
        return np.hypot(x, y - cy) - self.canal_r

    def posterior(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Posterior elements: neural arch ring, spinous and transverse processes (mm)."""
        _, ry = self.radii(z)
        cy = self.center_y(z) + ry + self.arch * 0.6 + self.canal_r
        r = np.hypot(x, y - cy)
        ring = np.maximum(r - self.canal_r - self.arch, self.canal_r - r)
        dy = y - cy
        spinous = np.maximum(
            np.abs(x) - 3.5, np.abs(dy - self.canal_r - 0.5 * self.spinous_len) - 0.5 * self.spinous_len
        )
        transverse = np.maximum(
            np.abs(np.abs(x) - self.canal_r - 0.5 * self.transverse_len) - 0.5 * self.transverse_len,
            np.abs(dy) - 4.0,
        )
        # Each element spans part of its vertebra's height (gaps are the facet joints and foramina).
        height = np.abs(self._local_z(z))
        sacral = z < self.sacrum_z
        ring = np.maximum(ring, np.where(sacral, -FAR, height - 0.4 * self.pitch))
        spinous = np.maximum(spinous, np.where(sacral, FAR, height - 0.25 * self.pitch))
        transverse = np.maximum(transverse, np.where(sacral, FAR, height - 0.15 * self.pitch))
        return np.minimum(ring, np.minimum(spinous, transverse)).astype(np.float32)

    def union(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """The whole column: bodies, discs, arch and processes (mm)."""
        return np.minimum(
            np.minimum(self.column(x, y, z), self.canal(x, y, z) - self.arch), self.posterior(x, y, z)
        )


def sample_spine(b: AnatomyBuilder) -> Spine:
    """The vertebral column at the builder's skeleton landmarks (L1 height, pitch, sacrum)."""
    return Spine(
        z0=b.l1_z,
        pitch=b.pitch,
        disc=b.u(7, 10),
        y_l1=b.u(30, 48),
        lordosis=b.u(0, 15),
        sacrum_z=b.sacrum_z,
        rx_lumbar=b.u(21, 26),
        ry_lumbar=b.u(15, 18),
        canal_r=b.u(8, 10),
        arch=b.u(5, 7),
        spinous_len=b.u(28, 38),
        transverse_len=b.u(20, 35),
    )


def add_spine(b: AnatomyBuilder) -> None:
    """The vertebral column, painted cortical/cancellous bone, discs, CSF and cord."""
    spine, hu = b.spine, b.hu
    z = np.linspace(b.sacrum_z - 130.0, b.top_z, 200)
    cy = spine.center_y(z)
    rx, ry = spine.radii(z)
    reach_x = max(float(rx.max()), spine.canal_r + spine.arch + spine.transverse_len) + 3.0
    behind = 1.6 * spine.arch + 2 * spine.canal_r + spine.spinous_len + 3.0
    lo = np.array([-reach_x, float(np.min(cy - ry)) - 3.0, z[0]])
    hi = np.array([reach_x, float(np.max(cy + ry)) + behind, z[-1]])
    cortex_mm = b.u(1.5, 2.5)

    def spine_hu(ctx: PaintContext) -> np.ndarray:
        out = np.full(ctx.sdf.shape, hu["cortical"] * 0.55, np.float32)  # posterior elements
        np.copyto(out, np.float32(hu["disc"]), where=ctx.field(spine.column) < 0)
        vertebral_body = ctx.field(spine.body)
        np.copyto(out, np.float32(hu["cortical"]), where=vertebral_body < 0)
        np.copyto(out, np.float32(hu["cancellous"]), where=vertebral_body < -cortex_mm)
        canal = ctx.field(spine.canal)
        np.copyto(out, np.float32(hu["csf"]), where=canal < 0)
        np.copyto(out, np.float32(hu["cord"]), where=canal < -spine.canal_r * 0.45)
        return out

    b.force.append(Part("spine", spine.union, lo, hi, spine_hu, force=True))


def add_femoral_heads(b: AnatomyBuilder) -> None:
    """Two spheres of cortical bone around cancellous bone, below the iliac crest."""
    hu = b.hu
    for side in (-1, 1):
        center = np.array([side * b.cav_a * b.u(0.6, 0.7), b.u(-20, 5), b.crest_z - b.u(150, 175)])
        r = b.u(22, 26)
        head = ellipsoid_fn(Frame(center, np.eye(3)), (r, r, r))
        bone = layers(hu["cortical"], (3.0, hu["cancellous"]))
        b.force.append(Part(f"femoral_head_{side}", head, *around(center, r), bone, force=True))

"""Appearance randomization of training samples (SynthSeg-style): the networks should learn the
organs' shape and context, not the phantoms' exact intensities, noise or sharpness.

Applied on the resampled training grid (~6 mm for localization, ~2 mm for segmentation patches),
to HU values, before windowing. With probability ``appearance_prob`` a sample gets, in order:

1. a random HU offset per organ (inside its label), so that no organ is known by its HU alone;
2. a random monotone HU curve over the soft-tissue range (knots from -150 to 700 HU moved by up to
   ``tissue_curve_hu``), which changes every tissue's contrast with its neighbours at once, as
   contrast phases, scanners and kernels do;
3. a Gaussian blur of up to ``blur_sigma_vox`` voxels (in-plane and, independently, along z: thick
   slices, soft kernels, partial volume);
4. a smooth additive bias field (up to ``bias_field_hu``; beam hardening, cupping) on the body;
5. correlated noise: white noise blurred in-plane (a reconstruction kernel's texture) with an SD
   of up to ``correlated_noise_hu`` after the blur;
6. darker bone: HU above 150 compressed towards 150 by up to ``bone_darkening`` (a fraction), as in
   osteopenic or thick-slice scans, where a vertebral body is no brighter than an enhanced kidney
   (applied first, on the clean sample);
7. a coarser acquisition: the sample averaged onto a grid up to ``low_resolution_factor`` times
   coarser (in-plane and, independently, along z) and interpolated back linearly, as a scan
   reconstructed at 3-5 mm and resampled to the network's grid looks (partial volume at organ
   borders, linear-interpolation blur); after the blur, before the bias field and noise;
8. a sharper reconstruction kernel: in-plane unsharp masking (the sample plus up to ``sharpen``
   times its difference from an in-plane Gaussian blur of 0.7-1.5 voxels), which steepens organ
   borders and overshoots at them, as edge-enhancing kernels do; after 7, before the bias field.

Air (below -500 HU) is left out of 1, 2 and 4, so the body outline and the lungs stay where they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

# Curve knots (HU). The ends stay fixed so air, dense bone and padding are not moved.
_CURVE_KNOTS_HU = np.array([-1100.0, -150.0, -60.0, 0.0, 40.0, 80.0, 130.0, 200.0, 320.0, 700.0, 3100.0])
_AIR_BELOW_HU = -500.0
_BONE_FROM_HU = 150.0


@dataclass(frozen=True)
class Appearance:
    """How strongly samples are randomized (all zero: unchanged)."""

    prob: float = 0.0
    organ_shift_hu: float = 0.0  # SD of the per-organ offset
    tissue_curve_hu: float = 0.0  # largest move of a curve knot
    blur_sigma_vox: float = 0.0  # largest Gaussian blur, in voxels of the sample's grid
    bias_field_hu: float = 0.0  # largest amplitude of the smooth bias field
    correlated_noise_hu: float = 0.0  # largest SD of the correlated noise
    bone_darkening: float = 0.0  # largest fraction by which HU above 150 are compressed towards 150
    low_resolution_factor: float = 1.0  # coarsest acquisition grid, as a factor on the sample's spacing
    sharpen: float = 0.0  # largest unsharp-masking amount (in-plane)

    def __post_init__(self) -> None:
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"appearance prob must lie in [0, 1], not {self.prob}")
        for name in (
            "organ_shift_hu",
            "tissue_curve_hu",
            "blur_sigma_vox",
            "bias_field_hu",
            "correlated_noise_hu",
            "sharpen",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"appearance {name} must be >= 0, not {getattr(self, name)}")
        if not 0.0 <= self.bone_darkening < 1.0:
            raise ValueError(f"appearance bone_darkening must lie in [0, 1), not {self.bone_darkening}")
        if not 1.0 <= self.low_resolution_factor <= 4.0:
            raise ValueError(
                f"appearance low_resolution_factor must lie in [1, 4], not {self.low_resolution_factor}"
            )


def random_tissue_curve(rng: np.random.Generator, amplitude_hu: float) -> tuple[np.ndarray, np.ndarray]:
    """Knots (x, y) of a random monotone (non-decreasing) HU curve with fixed ends."""
    x = _CURVE_KNOTS_HU
    y = x.copy()
    y[1:-1] += rng.uniform(-amplitude_hu, amplitude_hu, len(x) - 2)
    y = np.maximum.accumulate(y)  # monotone: tissue order is kept
    return x, y


def smooth_field(
    rng: np.random.Generator, shape: tuple[int, ...], amplitude: float, nodes: int = 4
) -> np.ndarray:
    """A smooth random field in [-amplitude, amplitude] over ``shape``: uniform noise on a coarse
    grid of ``nodes`` per axis, interpolated cubically (``ndimage.zoom``'s cubic spline, applied
    as one small interpolation matrix per axis: the spline is separable, and the matrices make it
    about a hundred times faster on a training patch than interpolating in 3-D)."""
    field = rng.uniform(-1.0, 1.0, (nodes,) * len(shape))
    for axis, n in enumerate(shape):
        field = np.moveaxis(np.tensordot(_cubic_zoom_matrix(nodes, n), field, axes=(1, axis)), 0, axis)
    peak = float(np.abs(field).max()) or 1.0
    return (field / peak * amplitude).astype(np.float32)


@lru_cache(maxsize=64)
def _cubic_zoom_matrix(nodes: int, n: int) -> np.ndarray:
    """(n, nodes): column i is unit node i interpolated to ``n`` samples as ``smooth_field`` did
    with ``ndimage.zoom`` (cubic, mode "nearest", grid_mode=True; the first ``n`` samples)."""
    eye = np.eye(nodes)
    cols = [
        ndimage.zoom(eye[i], n / nodes, order=3, mode="nearest", grid_mode=True)[:n] for i in range(nodes)
    ]
    matrix = np.stack(cols, axis=1)
    matrix.setflags(write=False)
    return matrix


def correlated_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sd_hu: float, sigma_vox: float
) -> np.ndarray:
    """Gaussian noise blurred in-plane by ``sigma_vox`` (axes 1 and 2), rescaled to SD ``sd_hu``."""
    noise = rng.standard_normal(shape).astype(np.float32)
    if sigma_vox > 0:
        noise = ndimage.gaussian_filter(noise, (0.0, sigma_vox, sigma_vox), truncate=3.0)
    sd = float(noise.std()) or 1.0
    return noise * np.float32(sd_hu / sd)


def coarser_acquisition(hu: np.ndarray, factors_zyx: tuple[float, float, float]) -> np.ndarray:
    """``hu`` (3-D) as seen through a grid ``factors_zyx`` times coarser: averaged onto that grid
    (each coarse voxel about the mean of the fine voxels it covers, as a thick slice integrates)
    and interpolated back linearly to ``hu``'s exact shape."""
    shape = np.array(hu.shape)
    coarse_shape = np.maximum(np.round(shape / np.asarray(factors_zyx)).astype(int), 2)
    if np.array_equal(coarse_shape, shape):
        return hu
    # area averaging: a Gaussian with the variance of a box one coarse voxel wide (less a fine
    # voxel's own), symmetric so that borders do not shift, then linear sampling at its centres
    width = shape / coarse_shape
    smooth = ndimage.gaussian_filter(hu, np.sqrt(np.maximum(width**2 - 1.0, 0.0) / 12.0), mode="nearest")
    coarse = ndimage.zoom(smooth, coarse_shape / shape, order=1, mode="nearest", grid_mode=True)
    back = ndimage.zoom(coarse, shape / np.array(coarse.shape), order=1, mode="nearest", grid_mode=True)
    return back[tuple(slice(0, n) for n in shape)].astype(np.float32)


def sharpened(hu: np.ndarray, amount: float, sigma_vox: float) -> np.ndarray:
    """``hu`` (z, y, x) through an edge-enhancing kernel: plus ``amount`` times its difference from
    an in-plane Gaussian blur of ``sigma_vox`` voxels (flat regions keep their HU)."""
    soft = ndimage.gaussian_filter(hu, (0.0, sigma_vox, sigma_vox), truncate=3.0, mode="nearest")
    return (hu + np.float32(amount) * (hu - soft)).astype(np.float32)


def randomize_appearance(
    rng: np.random.Generator, hu: np.ndarray, labels: np.ndarray | None, appearance: Appearance
) -> np.ndarray:
    """``hu`` (float32, any 3-D shape) with a random appearance; ``labels`` (same shape, organ
    labels > 0) for the per-organ offsets. Returns a new array; see the module docstring."""
    if appearance.prob <= 0.0 or rng.random() >= appearance.prob:
        return hu
    out = np.asarray(hu, np.float32).copy()
    if appearance.bone_darkening > 0:
        keep = np.float32(1.0 - rng.uniform(0.0, appearance.bone_darkening))
        dense = out > _BONE_FROM_HU
        out[dense] = _BONE_FROM_HU + (out[dense] - _BONE_FROM_HU) * keep
    tissue = out > _AIR_BELOW_HU
    if labels is not None and appearance.organ_shift_hu > 0:
        for k in np.unique(labels):
            if k > 0:
                out[labels == k] += np.float32(rng.normal(0.0, appearance.organ_shift_hu))
    if appearance.tissue_curve_hu > 0:
        x, y = random_tissue_curve(rng, appearance.tissue_curve_hu)
        out[tissue] = np.interp(out[tissue], x, y).astype(np.float32)
    if appearance.blur_sigma_vox > 0:
        s_xy = rng.uniform(0.0, appearance.blur_sigma_vox)
        s_z = rng.uniform(0.0, appearance.blur_sigma_vox)
        out = ndimage.gaussian_filter(out, (s_z, s_xy, s_xy), truncate=3.0)
    if appearance.low_resolution_factor > 1.0 and out.ndim == 3:
        f_xy = rng.uniform(1.0, appearance.low_resolution_factor)
        f_z = rng.uniform(1.0, appearance.low_resolution_factor)
        out = coarser_acquisition(out, (f_z, f_xy, f_xy))
    if appearance.sharpen > 0 and out.ndim == 3:
        out = sharpened(out, rng.uniform(0.0, appearance.sharpen), rng.uniform(0.7, 1.5))
    if appearance.bias_field_hu > 0:
        amplitude = rng.uniform(0.0, appearance.bias_field_hu)
        out += smooth_field(rng, out.shape, amplitude) * tissue
    if appearance.correlated_noise_hu > 0:
        sd = rng.uniform(0.0, appearance.correlated_noise_hu)
        out += correlated_noise(rng, out.shape, sd, rng.uniform(0.0, 1.2))
    return out

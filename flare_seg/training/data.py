"""Datasets in the FLARE21 layout and their preparation for the two networks.

Layout: ``DATA/TrainingImg/<case>_0000.nii.gz`` and ``DATA/TrainingMask/<case>.nii.gz``.
Preparation runs the same traced resampling as inference (``tf_utils``) on each case once and
caches the result: the whole volume at ~6 mm for localization (with per-organ occupancy
fractions as targets) and the organ box plus a margin at ~2 mm for segmentation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from flare_seg.contract import ModelContract
from flare_seg.geometry import Geometry, array_zyx, to_canonical
from flare_seg.grid import GridCrop, ResampleFunctions, crop_around_box, plan_shape, resample_crop
from flare_seg.labels import ORGANS

log = logging.getLogger(__name__)

IMAGE_DIR = "TrainingImg"
MASK_DIR = "TrainingMask"
IMAGE_SUFFIX = "_0000.nii.gz"
MASK_SUFFIX = ".nii.gz"
SEGMENTATION_CACHE_MARGIN_MM = 48.0  # box margin kept around the organs for crop jitter
GEOMETRY_TOLERANCE = 1e-3
MAX_CASE_VOXELS = 2**32  # larger than any CT; the header is refused beyond it


class DatasetError(ValueError):
    """A dataset that does not follow the FLARE21 layout, or a case whose files disagree."""


@dataclass(frozen=True)
class Case:
    name: str
    image_path: Path
    mask_path: Path


def list_cases(data_dir: Path) -> list[Case]:
    """Cases of a FLARE21-layout dataset, sorted by name; raises DatasetError naming what is missing."""
    data_dir = Path(data_dir)
    img_dir, mask_dir = data_dir / IMAGE_DIR, data_dir / MASK_DIR
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise DatasetError(f"{data_dir} is not a FLARE21-layout dataset: {d.name}/ is missing")
    cases = []
    for image_path in sorted(img_dir.glob(f"*{IMAGE_SUFFIX}")):
        name = image_path.name[: -len(IMAGE_SUFFIX)]
        mask_path = mask_dir / f"{name}{MASK_SUFFIX}"
        if not mask_path.is_file():
            raise DatasetError(
                f"case {name}: image {image_path.name} has no mask {MASK_DIR}/{mask_path.name}"
            )
        cases.append(Case(name, image_path, mask_path))
    if not cases:
        raise DatasetError(f"no images matching {IMAGE_DIR}/*{IMAGE_SUFFIX} in {data_dir}")
    return cases


def check_same_geometry(name: str, image: sitk.Image, mask: sitk.Image) -> None:
    """Raise DatasetError naming the case and the field when image and mask grids differ."""
    gi, gm = Geometry.of(image), Geometry.of(mask)
    if gi.size_xyz != gm.size_xyz:
        raise DatasetError(f"case {name}: image size {gi.size_xyz} != mask size {gm.size_xyz}")
    for field in ("spacing_mm_xyz", "origin_mm_xyz", "direction"):
        a, b = np.asarray(getattr(gi, field)), np.asarray(getattr(gm, field))
        if not np.allclose(a, b, atol=GEOMETRY_TOLERANCE):
            raise DatasetError(f"case {name}: image {field} {tuple(a)} != mask {field} {tuple(b)}")


def _read_checked(path: Path, case: str, pixel_id: int) -> sitk.Image:
    """A case file read with the service's NIfTI validation (a truncated download is an error,
    not an image that ITK zero-filled), as ``pixel_id``."""
    from flare_seg.service.io import read_ct_volume

    try:
        image = read_ct_volume(path, MAX_CASE_VOXELS).to_image()
    except ValueError as exc:  # InputError: not a readable, complete 3-D NIfTI image
        raise DatasetError(f"case {case}: {exc}") from None
    return sitk.Cast(image, pixel_id)


def load_case(case: Case) -> tuple[sitk.Image, sitk.Image]:
    """Read a case's image (float32 HU) and mask (uint8), checked to share one grid."""
    image = _read_checked(case.image_path, case.name, sitk.sitkFloat32)
    mask = _read_checked(case.mask_path, case.name, sitk.sitkUInt8)
    check_same_geometry(case.name, image, mask)
    mask.CopyInformation(image)  # tolerated rounding differences: one grid from here on
    return image, mask


@dataclass(frozen=True)
class PreparedCase:
    """One case resampled for training; arrays (z, y, x), HU float32, spacings in mm."""

    name: str
    loc_image: np.ndarray  # (D, H, W) HU at ~6 mm, whole volume
    loc_target: np.ndarray  # (D, H, W, organs) occupancy fraction in [0, 1]
    seg_image: np.ndarray  # (D, H, W) HU at ~2 mm around the organs
    seg_labels: np.ndarray  # (D, H, W) uint8 labels on the same grid
    seg_spacing_mm_zyx: np.ndarray  # (3,)
    organ_box_mm: np.ndarray  # (2, 3): organs' box, mm from the seg grid's leading edge, (lo, hi)

    @cached_property
    def organ_slices(self) -> OrganSlices:
        """Where each organ lies on each slice of ``seg_labels`` (computed on first use, once per
        case): what patch sampling asks of every patch without scanning the labels again."""
        return OrganSlices.of(self.seg_labels)


# The column of each organ label in ``OrganSlices``' arrays.
ORGAN_COLUMNS: dict[int, int] = {k: j for j, k in enumerate(ORGANS)}


@dataclass(frozen=True)
class OrganSlices:
    """Per slice z of a label volume (D, H, W) and organ (column ``ORGAN_COLUMNS[k]`` for label
    k): the voxel count, and the in-plane box [lo, hi) in edge coordinates (y, x) of its voxels on
    that slice (0, 0 where it has none)."""

    counts: np.ndarray  # (D, organs) int64
    lo_yx: np.ndarray  # (D, organs, 2) int64
    hi_yx: np.ndarray  # (D, organs, 2) int64

    @classmethod
    def of(cls, labels_zyx: np.ndarray) -> OrganSlices:
        d, h, w = labels_zyx.shape
        n = len(ORGANS)
        counts = np.zeros((d, n), np.int64)
        lo, hi = np.zeros((d, n, 2), np.int64), np.zeros((d, n, 2), np.int64)
        for k, j in ORGAN_COLUMNS.items():
            mask = labels_zyx == k
            counts[:, j] = mask.sum(axis=(1, 2))
            for a, (rows, size) in enumerate(((mask.any(axis=2), h), (mask.any(axis=1), w))):
                has = rows.any(axis=1)
                lo[has, j, a] = np.argmax(rows[has], axis=1)
                hi[has, j, a] = size - np.argmax(rows[has, ::-1], axis=1)
        return cls(counts, lo, hi)

    def organ_box_edges(self, k: int, z0: int, z1: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Edge-coordinate box [lo, hi) (z, y, x; z relative to ``z0``) of label ``k`` on slices
        [z0, z1), or None when it has no voxel there (as ``organ_box_edges(labels[z0:z1] == k)``)."""
        j = ORGAN_COLUMNS[k]
        rows = np.flatnonzero(self.counts[z0:z1, j])
        if rows.size == 0:
            return None
        zs = rows + z0
        lo = np.array([rows[0], *self.lo_yx[zs, j].min(axis=0)], float)
        hi = np.array([rows[-1] + 1, *self.hi_yx[zs, j].max(axis=0)], float)
        return lo, hi


def nearest_labels(labels_zyx: np.ndarray, crop: GridCrop) -> np.ndarray:
    """Labels on ``crop``'s resampled grid: each output voxel takes the source voxel holding its centre."""
    idx = []
    for axis in range(3):
        m, n, a = crop.out_shape_zyx[axis], crop.size_zyx[axis], crop.start_zyx[axis]
        centres = (np.arange(m) + 0.5) * n / m
        idx.append(a + np.minimum(np.floor(centres).astype(int), n - 1))
    return labels_zyx[np.ix_(*idx)]


def organ_box_edges(labels_zyx: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Edge-coordinate box [lo, hi) of all organ voxels, or None when there are none."""
    nz = [np.flatnonzero(np.any(labels_zyx > 0, axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))]
    if any(len(v) == 0 for v in nz):
        return None
    return np.array([v[0] for v in nz], float), np.array([v[-1] + 1 for v in nz], float)


def prepare_case(case: Case, contract: ModelContract, fns: ResampleFunctions) -> PreparedCase:
    image, mask = load_case(case)
    canonical, _ = to_canonical(image)
    canonical_mask, _ = to_canonical(mask, labels=True)
    vol = array_zyx(canonical)
    labels = array_zyx(canonical_mask)
    spacing = Geometry.of(canonical).spacing_mm_zyx
    shape = vol.shape

    loc_shape = plan_shape(
        shape, spacing, contract.localization_spacing_mm, contract.localization_max_size_vox
    )
    loc_crop = GridCrop((0, 0, 0), shape, loc_shape, spacing)
    loc_image = resample_crop(fns, vol, loc_crop)
    loc_target = np.stack(
        [resample_crop(fns, (labels == k).astype(np.float32), loc_crop) for k in sorted(ORGANS)], axis=-1
    ).clip(0.0, 1.0)

    high = int(labels.max())
    if high > max(ORGANS):
        names = ", ".join(f"{k} {n}" for k, n in ORGANS.items())
        raise DatasetError(
            f"case {case.name}: the mask has label {high}; expected 0 background, {names} "
            f"(FLARE21 labels: remap other label sets first)"
        )
    box = organ_box_edges(labels)
    if box is None:
        raise DatasetError(f"case {case.name}: the mask has no organ voxels")
    start, size = crop_around_box(box[0], box[1], shape, spacing, SEGMENTATION_CACHE_MARGIN_MM)
    seg_shape = plan_shape(size, spacing, contract.segmentation_spacing_mm, 10_000)
    seg_crop = GridCrop(start, size, seg_shape, spacing)
    seg_image = resample_crop(fns, vol, seg_crop)
    seg_labels = nearest_labels(labels, seg_crop)
    organ_box_mm = np.stack([seg_crop.source_edge_to_out_mm(box[0]), seg_crop.source_edge_to_out_mm(box[1])])
    return PreparedCase(
        case.name,
        loc_image.astype(np.float32),
        loc_target.astype(np.float32),
        seg_image.astype(np.float32),
        seg_labels.astype(np.uint8),
        np.asarray(seg_crop.out_spacing_mm_zyx, np.float32),
        organ_box_mm.astype(np.float32),
    )


def prepare_dataset(
    data_dir: Path,
    cache_dir: Path,
    contract: ModelContract,
    fns: ResampleFunctions,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[PreparedCase]:
    """Prepare every case (cached as ``cache_dir/<case>.npz``, reused when newer than its files)."""
    cases = list_cases(data_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    prepared = []
    for i, case in enumerate(cases):
        cache = cache_dir / f"{case.name}.npz"
        newest = max(case.image_path.stat().st_mtime, case.mask_path.stat().st_mtime)
        if cache.is_file() and cache.stat().st_mtime >= newest:
            with np.load(cache) as z:
                prepared.append(PreparedCase(name=case.name, **{k: z[k] for k in z.files}))
        else:
            p = prepare_case(case, contract, fns)
            tmp = cache.with_suffix(".tmp.npz")
            np.savez(tmp, **{k: getattr(p, k) for k in PreparedCase.__dataclass_fields__ if k != "name"})
            tmp.replace(cache)
            prepared.append(p)
        if progress:
            progress(i + 1, len(cases), case.name)
    return prepared

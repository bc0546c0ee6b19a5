"""Per-organ statistics of a label mask on its CT: volume, voxel count, HU mean and standard
deviation, bounding box and centroid in patient (LPS) millimetres.

The labels (uint8) and the CT are read z-slab by z-slab in their own (z, y, x) layout, so no float
copy of the whole volume is ever made: each slab adds its voxel counts, HU sums and per-axis
profiles to a few small accumulators, and the boxes and centroids come from the profiles.

    stats = organ_statistics(result.labels_zyx, volume.array_zyx, volume.geometry)
    write_statistics_json(Path("case_statistics.json"), stats)
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flare_seg.geometry import Geometry
from flare_seg.labels import ORGANS

BoxMM = tuple[tuple[float, float, float], tuple[float, float, float]]
# Voxels per slab: the slab's float64 HU copy is then at most 32 MiB.
SLAB_VOXELS = 4 * 2**20
CSV_COLUMNS = (
    "case",
    "organ",
    "label",
    "voxel_count",
    "volume_ml",
    "hu_mean",
    "hu_std",
    "box_min_x_mm",
    "box_min_y_mm",
    "box_min_z_mm",
    "box_max_x_mm",
    "box_max_y_mm",
    "box_max_z_mm",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
)


@dataclass(frozen=True)
class OrganStatistics:
    """One organ's figures. Positions are LPS (x, y, z) mm; ``box_mm`` is the (min, max) corners of
    the box holding the organ's voxels (voxel edges, not centres); absent organs have count 0 and
    ``None`` for everything that needs a voxel. ``hu_*`` are ``None`` when no CT was given."""

    organ: str
    label: int
    voxel_count: int
    volume_ml: float
    hu_mean: float | None
    hu_std: float | None
    box_mm: BoxMM | None
    centroid_mm: tuple[float, float, float] | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "voxel_count": self.voxel_count,
            "volume_ml": self.volume_ml,
            "hu_mean": self.hu_mean,
            "hu_std": self.hu_std,
            "box_mm": None
            if self.box_mm is None
            else {"min_mm_xyz": list(self.box_mm[0]), "max_mm_xyz": list(self.box_mm[1])},
            "centroid_mm_xyz": None if self.centroid_mm is None else list(self.centroid_mm),
        }


class _Accumulator:
    """Running sums for one label over the slabs."""

    def __init__(self, shape_zyx: tuple[int, ...]) -> None:
        self.count = 0
        self.hu_sum = 0.0
        self.hu_sum_sq = 0.0
        self.profiles = [np.zeros(n, np.int64) for n in shape_zyx]  # voxels per z, per y, per x


def organ_statistics(
    labels_zyx: np.ndarray,
    ct_zyx: np.ndarray | None,
    geometry: Geometry,
    organs: Mapping[int, str] = ORGANS,
    slab_voxels: int = SLAB_VOXELS,
) -> dict[str, OrganStatistics]:
    """Statistics of every organ of ``organs`` (label -> name) in ``labels_zyx``, with HU from
    ``ct_zyx`` (same shape, any numeric dtype; ``None``: no HU figures), on ``geometry``'s grid.

    Each slab costs one pass to find its organ voxels; everything else is done on those alone
    (slabs without any are skipped), so the time grows with the organs' size, not the image's.

    Raises:
        ValueError: the arrays' shapes differ from each other or from the geometry.
    """
    shape = tuple(int(n) for n in labels_zyx.shape)
    if labels_zyx.ndim != 3 or shape != geometry.shape_zyx:
        raise ValueError(f"labels of shape {labels_zyx.shape} do not match the grid {geometry.shape_zyx}")
    if ct_zyx is not None and tuple(ct_zyx.shape) != shape:
        raise ValueError(f"CT of shape {ct_zyx.shape} does not match the labels' {shape}")
    accumulators = {k: _Accumulator(shape) for k in organs}
    wanted = np.zeros(256, bool)
    wanted[list(organs)] = True
    step = max(1, slab_voxels // max(1, shape[1] * shape[2]))
    for z0 in range(0, shape[0], step):
        labels = np.ascontiguousarray(labels_zyx[z0 : z0 + step])
        flat = labels.reshape(-1)
        where = np.flatnonzero(wanted[flat])
        if where.size == 0:
            continue
        ct = None if ct_zyx is None else np.ascontiguousarray(ct_zyx[z0 : z0 + step]).reshape(-1)[where]
        _add_slab(accumulators, flat[where], where, labels.shape, z0, ct)
    has_ct = ct_zyx is not None
    return {name: _finish(name, k, accumulators[k], geometry, has_ct) for k, name in organs.items()}


def _add_slab(
    accumulators: dict[int, _Accumulator],
    labels: np.ndarray,
    where: np.ndarray,
    slab_shape: tuple[int, ...],
    z0: int,
    ct: np.ndarray | None,
) -> None:
    """Add one slab's organ voxels: their ``labels``, flat indices ``where`` in the slab of shape
    ``slab_shape`` (starting at slice ``z0``) and HU ``ct`` (None: no CT)."""
    size = max(accumulators) + 1
    counts = np.bincount(labels, minlength=size)
    if ct is not None:
        hu = ct.astype(np.float64)
        sums = np.bincount(labels, weights=hu, minlength=size)
        sums_sq = np.bincount(labels, weights=hu * hu, minlength=size)
    coords = np.unravel_index(where, slab_shape)
    profiles = [
        np.bincount(labels.astype(np.int64) * n + c, minlength=size * n).reshape(size, n)
        for c, n in zip(coords, slab_shape, strict=True)
    ]
    for k, acc in accumulators.items():
        if counts[k] == 0:
            continue
        acc.count += int(counts[k])
        if ct is not None:
            acc.hu_sum += float(sums[k])
            acc.hu_sum_sq += float(sums_sq[k])
        acc.profiles[0][z0 : z0 + slab_shape[0]] += profiles[0][k]
        acc.profiles[1] += profiles[1][k]
        acc.profiles[2] += profiles[2][k]


def _finish(name: str, label: int, acc: _Accumulator, geometry: Geometry, has_ct: bool) -> OrganStatistics:
    volume = round(acc.count * geometry.voxel_volume_ml, 3)
    if acc.count == 0:
        return OrganStatistics(name, label, 0, 0.0, None, None, None, None)
    mean = std = None
    if has_ct:
        m = acc.hu_sum / acc.count
        var = max(0.0, acc.hu_sum_sq / acc.count - m * m)
        mean, std = round(m, 2), round(math.sqrt(var), 2)
    centre_zyx = [float(np.dot(np.arange(p.size), p)) / acc.count for p in acc.profiles]
    centroid = geometry.index_to_physical_xyz(np.asarray(centre_zyx[::-1]))
    nonzero = [np.flatnonzero(p) for p in acc.profiles]
    lo_xyz = np.array([n[0] for n in nonzero[::-1]], float) - 0.5  # voxel edges
    hi_xyz = np.array([n[-1] for n in nonzero[::-1]], float) + 0.5
    corners = np.array([[(lo_xyz, hi_xyz)[(i >> a) & 1][a] for a in range(3)] for i in range(8)])
    points = geometry.index_to_physical_xyz(corners)
    box = (_rounded(points.min(axis=0)), _rounded(points.max(axis=0)))
    return OrganStatistics(name, label, acc.count, volume, mean, std, box, _rounded(centroid))


def _rounded(v: Iterable[float]) -> tuple[float, float, float]:
    return tuple(round(float(x), 2) for x in v)  # type: ignore[return-value]


def statistics_document(stats: Mapping[str, OrganStatistics]) -> dict[str, Any]:
    """The JSON form: organ name -> figures (see ``OrganStatistics.as_dict``)."""
    return {name: s.as_dict() for name, s in stats.items()}


def write_statistics_json(path: Path, stats: Mapping[str, OrganStatistics]) -> None:
    """One case's statistics as JSON, written atomically."""
    _atomic_write_text(Path(path), json.dumps(statistics_document(stats), indent=2) + "\n")


def statistics_csv_text(cases: Iterable[tuple[str, Mapping[str, OrganStatistics]]]) -> str:
    """CSV text, one row per case and organ (columns ``CSV_COLUMNS``; empty cells for ``None``)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    for case, stats in cases:
        for s in stats.values():
            box = s.box_mm or ((None,) * 3, (None,) * 3)
            centroid = s.centroid_mm or (None,) * 3
            row = [case, s.organ, s.label, s.voxel_count, s.volume_ml, s.hu_mean, s.hu_std, *box[0], *box[1]]
            writer.writerow(["" if v is None else v for v in [*row, *centroid]])
    return buf.getvalue()


def write_statistics_csv(path: Path, cases: Iterable[tuple[str, Mapping[str, OrganStatistics]]]) -> None:
    """Several cases' statistics as one CSV table, written atomically."""
    _atomic_write_text(Path(path), statistics_csv_text(cases))


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

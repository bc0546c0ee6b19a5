"""What a segmentation writes beside its multi-label mask, on request: per-organ statistics (JSON;
the batch also one CSV), a preview PNG and one binary mask per organ.

For case ``<case>`` in the output folder:

    <case>.nii.gz                   the multi-label mask (always)
    <case>_statistics.json          --statistics (and statistics.csv for the whole batch)
    <case>_preview.png              --preview
    <case>_masks/<organ>.nii.gz     --split-masks: 1 inside the organ, 0 elsewhere
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flare_seg.geometry import Geometry
from flare_seg.labels import ORGANS
from flare_seg.preview import write_preview
from flare_seg.service.io import write_mask_atomic
from flare_seg.statistics import OrganStatistics, organ_statistics, write_statistics_json

STATISTICS_CSV = "statistics.csv"


@dataclass(frozen=True)
class OutputOptions:
    """The optional outputs of a segmentation, and the organ subset (None: every organ)."""

    statistics: bool = False
    preview: bool = False
    split_masks: bool = False
    organs: tuple[int, ...] | None = None

    @property
    def needs_ct(self) -> bool:
        """Whether the CT's voxels must outlive the segmentation (statistics and the preview use
        them; otherwise the pipeline frees them before the forward pass)."""
        return self.statistics or self.preview

    @property
    def organ_names(self) -> dict[int, str]:
        return {k: ORGANS[k] for k in (self.organs or tuple(ORGANS))}


@dataclass(frozen=True)
class CaseExtras:
    """What ``write_case_extras`` wrote (file names relative to the output folder)."""

    statistics: dict[str, OrganStatistics] | None = None
    files: tuple[str, ...] = ()


def write_case_extras(
    output_dir: Path,
    case: str,
    result: Any,
    ct_zyx: np.ndarray | None,
    options: OutputOptions,
) -> CaseExtras:
    """Write the requested extras of one segmentation ``result`` (a ``SegmentationResult``) of the
    CT ``ct_zyx`` (needed when ``options.needs_ct``)."""
    if options.needs_ct and ct_zyx is None:
        raise ValueError("statistics and previews need the CT's voxels (segment with release_input=False)")
    labels, geometry = result.labels_zyx, result.geometry
    organs = options.organ_names
    files: list[str] = []
    stats = None
    if options.statistics:
        assert ct_zyx is not None
        stats = organ_statistics(labels, ct_zyx, geometry, organs)
        write_statistics_json(output_dir / f"{case}_statistics.json", stats)
        files.append(f"{case}_statistics.json")
    if options.preview:
        assert ct_zyx is not None
        name = f"{case}_preview.png"
        volumes = result.volumes_ml
        write_preview(output_dir / name, ct_zyx, labels, geometry, organs, title=case, volumes_ml=volumes)
        files.append(name)
    if options.split_masks:
        files += write_split_masks(output_dir, case, labels, geometry, organs, like=result.source_header)
    return CaseExtras(stats, tuple(files))


def write_split_masks(
    output_dir: Path,
    case: str,
    labels_zyx: np.ndarray,
    geometry: Geometry,
    organs: dict[int, str],
    like: Any = None,
) -> list[str]:
    """``<case>_masks/<organ>.nii.gz`` for each organ: uint8, 1 inside, 0 outside, on the input's
    grid (header fields copied from ``like``, the input's NIfTI header, when given)."""
    folder = output_dir / f"{case}_masks"
    folder.mkdir(exist_ok=True)
    written = []
    for k, name in organs.items():
        binary = (labels_zyx == k).view(np.uint8)
        write_mask_atomic(binary, folder / f"{name}.nii.gz", like=like, geometry=geometry)
        written.append(f"{folder.name}/{name}.nii.gz")
    return written

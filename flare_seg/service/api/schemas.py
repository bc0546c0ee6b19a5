"""The JSON bodies of the HTTP API (pydantic models; their names are the OpenAPI schema names).

Physical coordinates are LPS millimetres in (x, y, z) order, volumes are millilitres, times are seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field

from flare_seg import __version__

PointMmXyz = tuple[float, float, float]
BoxTuple = tuple[PointMmXyz, PointMmXyz]


def _point_mm_xyz(point: Sequence[float]) -> PointMmXyz:
    x, y, z = point
    return float(x), float(y), float(z)


class ErrorBody(BaseModel):
    detail: str = Field(description="what is wrong, in one sentence")


class Box(BaseModel):
    """An axis-aligned box in physical LPS millimetres."""

    min_mm_xyz: tuple[float, float, float]
    max_mm_xyz: tuple[float, float, float]

    @classmethod
    def of(cls, box: BoxTuple | None) -> Box | None:
        """The box of ``(min, max)`` corners, or None for None (an absent organ)."""
        return None if box is None else cls.of_corners(box)

    @classmethod
    def of_corners(cls, box: BoxTuple) -> Box:
        return cls(min_mm_xyz=_point_mm_xyz(box[0]), max_mm_xyz=_point_mm_xyz(box[1]))


class OrganStatisticsInfo(BaseModel):
    """One organ's figures (``?statistics=true``): positions in LPS mm, (x, y, z) order."""

    label: int
    voxel_count: int
    volume_ml: float
    hu_mean: float | None = Field(description="mean HU of the organ's voxels; null if absent")
    hu_std: float | None = Field(description="standard deviation of HU; null if absent")
    box_mm: Box | None = Field(description="box holding the organ's voxels (their edges); null if absent")
    centroid_mm_xyz: tuple[float, float, float] | None = Field(description="centre of mass; null if absent")


class SegmentationSummary(BaseModel):
    case: str = Field(description="case name derived from the upload's file name")
    model_version: str
    size_xyz: tuple[int, int, int] = Field(description="input image size in voxels (x, y, z)")
    spacing_mm_xyz: tuple[float, float, float] = Field(description="input voxel spacing in mm (x, y, z)")
    volumes_ml: dict[str, float] = Field(description="organ name -> volume in millilitres")
    organ_boxes_mm: dict[str, Box | None] = Field(
        description="organ -> bounding box (LPS mm), null if absent"
    )
    roi_box_mm: Box = Field(description="the region searched by the segmentation stage (LPS mm)")
    organs_localized: bool | None = Field(
        None, description="false when no organ was localized and the whole image was searched"
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="what to know about this result, e.g. an image that does not look like a CT in HU",
    )
    timings_s: dict[str, float] = Field(description="stage -> seconds")
    inference_seconds: float = Field(description="wall time of the segmentation, seconds")
    source_series: str | None = Field(
        None, description="DICOM input: the series segmented, and why it was chosen among the upload's"
    )
    statistics: dict[str, OrganStatisticsInfo] | None = Field(
        None, description="per-organ statistics, with ?statistics=true (else null)"
    )


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"


class JobCreated(BaseModel):
    id: str
    status: JobStatus
    status_url: str
    result_url: str


class JobInfo(JobCreated):
    case: str
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = Field(None, description="when a finished job and its result are deleted")
    summary: SegmentationSummary | None = None
    error: str | None = None


class HealthInfo(BaseModel):
    status: Literal["ok"] = "ok"
    version: str = __version__


class ReadyInfo(BaseModel):
    status: Literal["ready", "loading", "failed"]
    model_version: str | None = None
    detail: str | None = None

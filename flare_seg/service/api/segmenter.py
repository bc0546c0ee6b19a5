"""The segmenter interface the service runs, and its default factory (the TensorFlow pipeline).

Implemented by ``flare_seg.service.pipeline.Segmenter``; tests inject fakes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from flare_seg.geometry import Geometry
from flare_seg.service.api.schemas import BoxTuple
from flare_seg.service.io import CtVolume
from flare_seg.service.settings import Settings


class SegmentationResultProtocol(Protocol):
    """What ``segment_volume`` returns (``flare_seg.service.pipeline.SegmentationResult``)."""

    @property
    def labels_zyx(self) -> np.ndarray:
        """uint8 labels on the input's grid, indexed (z, y, x)."""

    @property
    def geometry(self) -> Geometry:
        """the grid of ``labels_zyx``: the input's."""

    @property
    def volumes_ml(self) -> Mapping[str, float]:
        """organ name -> volume in mL."""

    @property
    def organ_boxes_mm(self) -> Mapping[str, BoxTuple | None]:
        """organ -> (min, max) physical LPS corners in mm, (x, y, z) order; None when absent."""

    @property
    def roi_box_mm(self) -> BoxTuple:
        """the box searched: (min, max) physical LPS corners in mm, (x, y, z) order."""

    @property
    def timings_s(self) -> Mapping[str, float]:
        """stage -> seconds."""

    @property
    def model_version(self) -> str: ...


class SegmenterProtocol(Protocol):
    """A loaded model set. ``segment_volume`` is blocking and not thread safe: one worker thread calls it."""

    @property
    def manifest(self) -> Mapping[str, Any]:
        """the model manifest (JSON-able), served by GET /models."""

    @property
    def model_version(self) -> str: ...

    def warm_up(self) -> None:
        """One small dummy run (compiles kernels, allocates memory)."""

    def read_volume(
        self,
        path: Path,
        max_voxels: int,
        *,
        display_name: str | None = None,
        max_image_bytes: int | None = None,
    ) -> CtVolume:
        """``service.io.read_ct_volume`` (int16 HU), possibly preparing work for ``segment_volume``."""

    def segment_volume(self, volume: CtVolume, release_input: bool = False) -> SegmentationResultProtocol:
        """Segment one 3D CT; blocking. ``release_input=True``: the voxels may be dropped once used."""


SegmenterFactory = Callable[[Settings], SegmenterProtocol]


def load_pipeline_segmenter(settings: Settings) -> SegmenterProtocol:
    """The default factory: ``flare_seg.service.pipeline.Segmenter.load`` (imported lazily: TensorFlow)."""
    settings.check_paths()
    pipeline = importlib.import_module("flare_seg.service.pipeline")
    segmenter: SegmenterProtocol = pipeline.Segmenter.load(
        settings.models_dir, settings.memory_budget_mb, settings.precision, settings.device
    )
    return segmenter

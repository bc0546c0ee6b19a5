"""The service: the state a running app holds (one per app, built by its lifespan), and the
segmentation of one uploaded file on the worker thread."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio.to_thread
import numpy as np
from fastapi import Request

from flare_seg.dicom.archive import check_zip, extracted_zip
from flare_seg.dicom.seg import build_seg, seg_bytes, write_seg_atomic
from flare_seg.dicom.volume import DicomSource, read_dicom_volume
from flare_seg.geometry import Geometry
from flare_seg.labels import ORGANS
from flare_seg.service.api.errors import http_error
from flare_seg.service.api.jobs import InferenceWorker, InMemoryJobStore, Job, JobStore, Ticket
from flare_seg.service.api.metrics import Metrics
from flare_seg.service.api.schemas import Box, JobStatus, OrganStatisticsInfo, SegmentationSummary
from flare_seg.service.api.segmenter import SegmentationResultProtocol, SegmenterFactory, SegmenterProtocol
from flare_seg.service.api.uploads import Upload, receive_upload
from flare_seg.service.inputs import DICOM_SEG, NIFTI, SEG_SUFFIX
from flare_seg.service.io import (
    CtVolume,
    InputError,
    NiftiHeader,
    image_to_nifti_bytes,
    validate_nifti,
    write_mask_atomic,
)
from flare_seg.service.settings import Settings
from flare_seg.statistics import organ_statistics

logger = logging.getLogger(__name__)

_GEOMETRY_RTOL = 1e-5


@dataclass
class Outcome:
    """What one segmentation gives the route or the job that asked for it."""

    summary: SegmentationSummary
    mask_bytes: bytes | None = None  # the encoded mask (NIfTI or DICOM SEG) for synchronous answers


class Service:
    """Everything a running app holds: settings, folders, the worker, the segmenter, jobs, metrics."""

    def __init__(self, settings: Settings, metrics: Metrics, work_root: Path) -> None:
        self.settings = settings
        self.metrics = metrics
        self.work_root = work_root  # per-process folder, removed at shutdown
        self.uploads_dir = work_root / "uploads"
        self.results_dir = work_root / "results"
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.worker = InferenceWorker(settings.queue_size, metrics)
        self.jobs: JobStore = InMemoryJobStore(ttl_s=settings.job_ttl_s)
        self.segmenter: SegmenterProtocol | None = None
        self.load_error: str | None = None

    @property
    def max_upload_bytes(self) -> int:
        return self.settings.max_upload_mb * 1024 * 1024

    @property
    def max_unzipped_bytes(self) -> int:
        """The most a .zip upload may unpack to: room for a DICOM series of ``max_voxels`` voxels
        (two bytes each) and its headers."""
        return 2 * self.settings.max_voxels + (256 << 20)

    @property
    def ready(self) -> bool:
        return self.segmenter is not None

    async def load_models(
        self, factory: SegmenterFactory, on_failure: Callable[[BaseException], None] | None
    ) -> None:
        """Load and warm up the models on the inference thread; sets ``segmenter`` when done."""

        def load() -> SegmenterProtocol:
            start = time.perf_counter()
            segmenter = factory(self.settings)
            segmenter.warm_up()
            logger.info(
                "models %s loaded and warmed up in %.1f s",
                segmenter.model_version,
                time.perf_counter() - start,
            )
            return segmenter

        try:
            self.segmenter = await asyncio.wrap_future(self.worker.call(load))
            self.metrics.model_ready.set(1)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.load_error = f"{type(e).__name__}: {e}"
            logger.exception("loading the models failed")
            if on_failure is not None:
                on_failure(e)

    def admit(self) -> Ticket:
        """A place in the queue, or 503 with Retry-After when it is full."""
        ticket = self.worker.try_admit()
        if ticket is None:
            self.metrics.rejected_queue_full.inc()
            retry = self.worker.retry_after_s()
            raise http_error(
                503,
                f"the server is busy: {self.settings.queue_size} request(s) already wait; "
                f"retry in about {retry} s",
                headers={"Retry-After": str(retry)},
            )
        return ticket

    def require_ready(self) -> SegmenterProtocol:
        """The segmenter, or 503 with Retry-After while it loads (or after it failed to)."""
        if self.segmenter is None:
            detail = (
                f"models failed to load: {self.load_error}" if self.load_error else "models are still loading"
            )
            raise http_error(503, detail, headers={"Retry-After": "10"})
        return self.segmenter

    async def receive_and_check(self, request: Request, *, scan_data: bool = True) -> Upload:
        """Stream the upload to disk, then check it with ``validate_nifti`` off the event loop.

        The header is checked before anything is decompressed (absurd sizes never allocate); the
        completeness check decompresses as a stream with bounded memory. ``scan_data=False`` (a
        synchronous request, whose read follows at once and checks the CRC itself) checks
        completeness from the gzip trailer instead of a decompression pass of its own.
        """
        upload = await receive_upload(request, self.uploads_dir, self.max_upload_bytes)
        try:
            check: Callable[[], object]
            if upload.is_zip:  # member names and sizes only: nothing is extracted yet
                check = functools.partial(
                    check_zip, upload.path, self.max_unzipped_bytes, display_name=upload.display_name
                )
            else:
                check = functools.partial(
                    validate_nifti,
                    upload.path,
                    self.settings.max_voxels,
                    display_name=upload.display_name,
                    scan_data=scan_data,
                )
            await anyio.to_thread.run_sync(check)
        except BaseException:
            upload.path.unlink(missing_ok=True)
            raise
        return upload

    def segment_file(
        self,
        upload_path: Path,
        name: str,
        case: str,
        *,
        encode: bool,
        result_path: Path | None,
        output: str = NIFTI,
        statistics: bool = False,
    ) -> Outcome:
        """Read, segment and write or encode one image (runs on the worker thread only).

        ``output``: the mask's encoding, ``nifti`` or ``dicom-seg`` (a .zip of DICOM input only).
        ``statistics``: add the per-organ statistics to the summary (the CT's voxels are then kept
        until the labels are done).
        """
        segmenter = self.require_ready()
        start = time.perf_counter()
        source: DicomSource | None = None
        series: str | None = None
        if upload_path.suffix == ".zip":
            volume, source, series = self._read_dicom_zip(upload_path, name)
        else:
            if output == DICOM_SEG:
                raise InputError(f"{name}: a DICOM SEG needs DICOM input (a .zip of the series), not NIfTI")
            # One decompression straight into the voxel array (CRC checked); the upload was validated.
            volume = segmenter.read_volume(upload_path, self.settings.max_voxels, display_name=name)
        upload_path.unlink(missing_ok=True)
        geometry, header = volume.geometry, volume.header
        read_s = time.perf_counter() - start

        start = time.perf_counter()
        result = segmenter.segment_volume(volume, release_input=not statistics)
        inference_s = time.perf_counter() - start
        self.metrics.inference_seconds.observe(inference_s)
        stats = _statistics(result, volume.array_zyx, geometry) if statistics else None
        del volume
        labels = checked_labels(result, geometry)

        start = time.perf_counter()
        if output == DICOM_SEG and source is not None:
            mask_bytes = _store_seg(
                labels, source, result.model_version, encode=encode, result_path=result_path
            )
        else:
            mask_bytes = _store_mask(labels, header, geometry, encode=encode, result_path=result_path)
        write_s = time.perf_counter() - start
        logger.info(
            "segmented %s (%s voxels) in %.2f s", case, "x".join(map(str, geometry.size_xyz)), inference_s
        )
        summary = summarize(result, case, geometry, read_s=read_s, inference_s=inference_s, write_s=write_s)
        if stats is not None:
            summary = summary.model_copy(update={"statistics": stats})
        if source is not None:
            summary.source_series = series
            summary.warnings = [*source.warnings, *summary.warnings]
        return Outcome(summary=summary, mask_bytes=mask_bytes)

    def _read_dicom_zip(self, path: Path, name: str) -> tuple[CtVolume, DicomSource, str | None]:
        """The volume of the series chosen in a .zip of DICOM files (extracted into a private
        temporary folder, removed before this returns), its source record and the choice's reason."""
        with extracted_zip(path, self.max_unzipped_bytes, display_name=name) as root:
            dicom = read_dicom_volume(root, self.settings.max_voxels, display_name=name)
        return dicom.volume, dicom.source, dicom.choice.reason if dicom.choice else None

    def run_job(self, job: Job, statistics: bool = False) -> None:
        """Run one job on the worker thread, recording the outcome on the job (never raises)."""
        self.jobs.update(job, status=JobStatus.running, started_at=now())
        try:
            outcome = self.segment_file(
                job.upload_path,
                job.display_name,
                job.case,
                encode=False,
                result_path=job.result_path,
                output=DICOM_SEG if job.result_path.name.endswith(SEG_SUFFIX) else NIFTI,
                statistics=statistics,
            )
        except InputError as e:
            self._finish(job, error=str(e))
        except Exception as e:
            logger.exception("job %s failed", job.id)
            self._finish(job, error=f"internal error during segmentation ({type(e).__name__})")
        else:
            self._finish(job, summary=outcome.summary)
        finally:
            job.upload_path.unlink(missing_ok=True)

    def _finish(self, job: Job, summary: SegmentationSummary | None = None, error: str | None = None) -> None:
        self.jobs.update(
            job,
            status=JobStatus.done if error is None else JobStatus.failed,
            summary=summary,
            error=error,
            finished_at=now(),
            finished_monotonic=time.monotonic(),
        )

    def cleanup(self, now_monotonic: float | None = None) -> int:
        """Delete finished jobs older than ``job_ttl_s`` and their files; returns how many."""
        expired = self.jobs.expire(time.monotonic() if now_monotonic is None else now_monotonic)
        if expired:
            logger.info("expired %d job(s)", len(expired))
        return len(expired)

    async def cleanup_loop(self) -> None:
        """Run ``cleanup`` every tenth of the TTL (1 s to 60 s) until cancelled."""
        interval_s = min(60.0, max(1.0, self.settings.job_ttl_s / 10))
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.cleanup()
            except Exception:
                logger.exception("job cleanup failed")


def now() -> datetime:
    return datetime.now(UTC)


def checked_labels(result: SegmentationResultProtocol, geometry: Geometry) -> np.ndarray:
    """The result's uint8 labels, after checking that they lie on the input's grid (same size;
    spacing, origin and direction equal up to rounding): anything else is a pipeline bug
    (RuntimeError). Written with the input's header, they then carry its geometry exactly."""
    labels, mask_geometry = result.labels_zyx, result.geometry
    if labels.shape != geometry.shape_zyx or mask_geometry.size_xyz != geometry.size_xyz:
        raise RuntimeError(
            f"mask of shape {labels.shape} (z, y, x) differs from the input size {geometry.size_xyz}"
        )
    scale = max(1.0, *map(abs, geometry.origin_mm_xyz))
    if not (
        np.allclose(mask_geometry.spacing_mm_xyz, geometry.spacing_mm_xyz, rtol=_GEOMETRY_RTOL, atol=0)
        and np.allclose(
            mask_geometry.origin_mm_xyz, geometry.origin_mm_xyz, rtol=0, atol=_GEOMETRY_RTOL * scale
        )
        and np.allclose(mask_geometry.direction, geometry.direction, rtol=0, atol=_GEOMETRY_RTOL)
    ):
        raise RuntimeError(f"mask geometry {mask_geometry} differs from the input geometry {geometry}")
    return labels if labels.dtype == np.uint8 else labels.astype(np.uint8)


def _store_mask(
    labels_zyx: np.ndarray,
    header: NiftiHeader | None,
    geometry: Geometry,
    *,
    encode: bool,
    result_path: Path | None,
) -> bytes | None:
    """Write the mask to ``result_path`` (when given) like the input's header; return its .nii.gz
    encoding when ``encode``, else None."""
    mask_bytes = None
    if encode:
        mask_bytes = image_to_nifti_bytes(labels_zyx, like=header, geometry=geometry)
    if result_path is not None:
        write_mask_atomic(labels_zyx, result_path, like=header, geometry=geometry)
    return mask_bytes


def _store_seg(
    labels_zyx: np.ndarray,
    source: DicomSource,
    model_version: str,
    *,
    encode: bool,
    result_path: Path | None,
) -> bytes | None:
    """Write the DICOM SEG of the mask to ``result_path`` (when given); return its bytes when
    ``encode``, else None."""
    seg = build_seg(labels_zyx, source, model_version=model_version)
    if result_path is not None:
        write_seg_atomic(seg, result_path)
    return seg_bytes(seg) if encode else None


def _statistics(result: Any, ct_zyx: Any, geometry: Geometry) -> dict[str, OrganStatisticsInfo]:
    """The summary's per-organ statistics of ``result`` on the CT's voxels ``ct_zyx``."""
    organs = {k: name for k, name in ORGANS.items() if name in result.volumes_ml}
    stats = organ_statistics(result.labels_zyx, ct_zyx, geometry, organs)
    return {
        name: OrganStatisticsInfo(
            label=s.label,
            voxel_count=s.voxel_count,
            volume_ml=s.volume_ml,
            hu_mean=s.hu_mean,
            hu_std=s.hu_std,
            box_mm=Box.of(s.box_mm),
            centroid_mm_xyz=s.centroid_mm,
        )
        for name, s in stats.items()
    }


def summarize(
    result: SegmentationResultProtocol,
    case: str,
    geometry: Geometry,
    *,
    read_s: float,
    inference_s: float,
    write_s: float,
) -> SegmentationSummary:
    """The JSON summary of one segmentation of an image on ``geometry``; times in seconds."""
    return SegmentationSummary(
        case=case,
        model_version=result.model_version,
        size_xyz=geometry.size_xyz,
        spacing_mm_xyz=geometry.spacing_mm_xyz,
        volumes_ml={k: float(v) for k, v in result.volumes_ml.items()},
        organ_boxes_mm={k: Box.of(v) for k, v in result.organ_boxes_mm.items()},
        roi_box_mm=Box.of_corners(result.roi_box_mm),
        organs_localized=getattr(result, "organs_localized", None),
        warnings=list(getattr(result, "warnings", ())),
        # Rounded to 0.1 ms: never an exponent form (6.5e-07) in the JSON.
        timings_s={
            **{k: round(float(v), 4) for k, v in result.timings_s.items()},
            "read_s": round(read_s, 4),
            "write_s": round(write_s, 4),
        },
        inference_seconds=round(inference_s, 4),
        source_series=None,
        statistics=None,
    )

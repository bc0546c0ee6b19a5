"""The service: the state a running app holds (one per app, built by its lifespan), and the
segmentation of one uploaded file on the worker thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
import numpy as np
from fastapi import HTTPException, Request

from flare_seg.dicom.archive import check_zip, extracted_zip
from flare_seg.dicom.seg import build_seg, seg_bytes, write_seg_atomic
from flare_seg.dicom.volume import DicomSource, read_dicom_volume
from flare_seg.geometry import Geometry
from flare_seg.labels import ORGANS
from flare_seg.service.api.errors import http_error
from flare_seg.service.api.jobs import DurableJobStore, InferenceWorker, JobStore, Ticket
from flare_seg.service.api.metrics import Metrics
from flare_seg.service.api.schemas import Box, OrganStatisticsInfo, SegmentationSummary
from flare_seg.service.api.segmenter import SegmentationResultProtocol, SegmenterFactory, SegmenterProtocol
from flare_seg.service.api.uploads import Upload, receive_upload
from flare_seg.service.api.workfolder import WorkFolder
from flare_seg.service.guards import BodyPace, UploadSlots, wait_for_disconnect
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
from flare_seg.service.storage import StorageError, describe_disk_problem, is_disk_problem
from flare_seg.statistics import organ_statistics

logger = logging.getLogger(__name__)

_GEOMETRY_RTOL = 1e-5
T = TypeVar("T")


@dataclass
class Outcome:
    """What one segmentation gives the route or the job that asked for it."""

    summary: SegmentationSummary
    mask_bytes: bytes | None = None  # the encoded mask (NIfTI or DICOM SEG) for synchronous answers


class ClientGone(Exception):
    """The client of a synchronous request went away before its answer was ready."""


class Service:
    """Everything a running app holds: settings, folders, the worker, the segmenter, jobs, metrics."""

    def __init__(self, settings: Settings, metrics: Metrics, folder: WorkFolder, jobs: JobStore) -> None:
        self.settings = settings
        self.metrics = metrics
        self.folder = folder  # kept across restarts, with the job records
        self.uploads_dir = folder.uploads_dir
        self.results_dir = folder.results_dir
        self.worker = InferenceWorker(settings.queue_size, metrics)
        self.jobs = jobs
        self.upload_slots = UploadSlots(settings.max_concurrent_uploads)
        self.pace = BodyPace(
            idle_timeout_s=settings.upload_idle_timeout_s,
            min_bytes_per_s=settings.upload_min_bytes_per_s,
            grace_s=settings.upload_idle_timeout_s,
        )
        self.draining = asyncio.Event()
        self.segmenter: SegmenterProtocol | None = None
        self.load_error: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def open(cls, settings: Settings, metrics: Metrics) -> Service:
        """The service on ``settings.work_folder``: the folder locked and write-tested, the job
        records opened (jobs running at the last stop marked failed), leftover files removed.

        Raises:
            StorageError, WorkFolderInUse, JobStoreError: the work folder cannot be used.
        """
        folder = WorkFolder.open(settings.work_folder)
        try:
            jobs = DurableJobStore.open(folder.root, settings.job_ttl_s)
        except BaseException:
            folder.close()
            raise
        folder.remove_leftovers(jobs.known_paths())
        return cls(settings, metrics, folder, jobs)

    def close(self) -> None:
        """Close the job records and release the work folder (its files stay)."""
        self.jobs.close()
        self.folder.close()

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
        """Load and warm up the models on the inference thread; sets ``segmenter`` when done, then
        queues the jobs accepted before the last stop."""
        self._loop = asyncio.get_running_loop()

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
            return
        self.resume_queued()

    def resume_queued(self) -> int:
        """Queue the jobs the store holds as queued (accepted before a restart); returns how many."""
        queued = self.jobs.queued()
        for job in queued:
            self.worker.run(self.worker.admit_recovered(), functools.partial(self.run_job, job.id))
        if queued:
            logger.info("%d job(s) accepted before the restart are queued again", len(queued))
        return len(queued)

    # ----------------------------------------------------------------------------- shutting down

    def begin_drain(self) -> None:
        """Stop taking work: new requests get 503, uploads in progress end (503), tasks that have
        not started end at once (queued jobs stay queued for the next start); the running one
        finishes. Call on the event loop's thread (see ``begin_drain_threadsafe``)."""
        if not self.draining.is_set():
            logger.info("draining: no new work; the running segmentation finishes, queued jobs stay queued")
        self.draining.set()
        self.worker.stop_taking()

    def begin_drain_threadsafe(self) -> None:
        """``begin_drain`` from any thread (e.g. a signal handler)."""
        self.worker.stop_taking()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.begin_drain)

    # ----------------------------------------------------------------------------- admission

    def check_accepting(self) -> None:
        """503 once the server has begun to shut down."""
        if self.draining.is_set() or self.worker.draining:
            raise http_error(
                503,
                "the server is shutting down; send the request again later",
                headers={"Retry-After": "10"},
            )

    def _busy(self) -> HTTPException:
        self.metrics.rejected_queue_full.inc()
        retry = self.worker.retry_after_s()
        return http_error(
            503,
            f"the server is busy: {self.settings.queue_size} request(s) already wait; "
            f"retry in about {retry} s",
            headers={"Retry-After": str(retry)},
        )

    def check_room(self) -> None:
        """503 with Retry-After, before the body is read, when the queue is already full (nothing
        is reserved: the place is taken by ``admit`` once the upload has arrived)."""
        if not self.worker.has_room():
            raise self._busy()

    def admit(self) -> Ticket:
        """A place in the queue, or 503 with Retry-After when it is full."""
        ticket = self.worker.try_admit()
        if ticket is None:
            raise self._busy()
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
        """Stream the upload to disk (in one of ``max_concurrent_uploads`` slots, paced), then check
        it with ``validate_nifti`` off the event loop.

        The header is checked before anything is decompressed (absurd sizes never allocate); the
        completeness check decompresses as a stream with bounded memory. ``scan_data=False`` (a
        synchronous request, whose read follows at once and checks the CRC itself) checks
        completeness from the gzip trailer instead of a decompression pass of its own.
        """
        if not self.upload_slots.try_acquire():
            self.metrics.rejected_uploads.labels("too_many").inc()
            raise http_error(
                503,
                f"the server is busy: {self.upload_slots.capacity} upload(s) already in progress; retry soon",
                headers={"Retry-After": "5"},
            )
        self.metrics.uploads_in_progress.set(self.upload_slots.in_use)
        try:
            upload = await receive_upload(
                request, self.uploads_dir, self.max_upload_bytes, pace=self.pace, draining=self.draining
            )
        except HTTPException as e:
            if e.status_code == 408:
                self.metrics.rejected_uploads.labels("stalled").inc()
            raise
        except StorageError:
            self.metrics.rejected_uploads.labels("disk").inc()
            raise
        finally:
            self.upload_slots.release()
            self.metrics.uploads_in_progress.set(self.upload_slots.in_use)
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
                    max_image_bytes=self.settings.max_image_bytes,
                )
            await anyio.to_thread.run_sync(check)
        except BaseException:
            upload.path.unlink(missing_ok=True)
            raise
        return upload

    async def result_unless_abandoned(self, request: Request, future: concurrent.futures.Future[T]) -> T:
        """The result of ``future``, unless the client goes away first: then work that has not
        started is dropped (its place freed at once), and ``ClientGone`` is raised."""
        watcher = asyncio.ensure_future(wait_for_disconnect(request.receive))
        answer = asyncio.wrap_future(future)
        waiters: set[asyncio.Future[Any]] = {answer, watcher}
        try:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if answer in done:
            return future.result()
        if self.worker.cancel_if_waiting(future):
            logger.info("client went away before its segmentation started: dropped")
        else:
            logger.info("client went away during its segmentation: the result is discarded")
        raise ClientGone()

    # ----------------------------------------------------------------------------- the work

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
            volume = segmenter.read_volume(
                upload_path,
                self.settings.max_voxels,
                display_name=name,
                max_image_bytes=self.settings.max_image_bytes,
            )
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
            if output == DICOM_SEG:  # the UID warnings concern the SEG's references only
                summary.warnings = [*source.warnings, *summary.warnings]
        return Outcome(summary=summary, mask_bytes=mask_bytes)

    def _read_dicom_zip(self, path: Path, name: str) -> tuple[CtVolume, DicomSource, str | None]:
        """The volume of the series chosen in a .zip of DICOM files (extracted into a private
        temporary folder, removed before this returns), its source record and the choice's reason."""
        with extracted_zip(path, self.max_unzipped_bytes, display_name=name) as root:
            dicom = read_dicom_volume(root, self.settings.max_voxels, display_name=name)
        return dicom.volume, dicom.source, dicom.choice.reason if dicom.choice else None

    def run_job(self, job_id: str) -> None:
        """Run one queued job on the worker thread, recording its outcome (never raises)."""
        if not self.jobs.mark_running(job_id):
            return  # not queued any more (expired, or taken)
        job = self.jobs.get(job_id)
        if job is None:
            return
        try:
            outcome = self.segment_file(
                job.upload_path,
                job.display_name,
                job.case,
                encode=False,
                result_path=job.result_path,
                output=DICOM_SEG if job.result_path.name.endswith(SEG_SUFFIX) else NIFTI,
                statistics=job.statistics,
            )
        except InputError as e:
            self.jobs.finish(job_id, error=str(e))
        except OSError as e:
            if not is_disk_problem(e):
                logger.exception("job %s failed", job_id)
            self.jobs.finish(job_id, error=_failure_reason(e))
        except Exception as e:
            logger.exception("job %s failed", job_id)
            self.jobs.finish(job_id, error=_failure_reason(e))
        else:
            self.jobs.finish(job_id, summary=outcome.summary)
        finally:
            job.upload_path.unlink(missing_ok=True)

    def cleanup(self, now_s: float | None = None) -> int:
        """Delete finished jobs past their expiry and their files; returns how many."""
        expired = self.jobs.expire(now_s)
        if expired:
            logger.info("expired %d job(s)", len(expired))
        return len(expired)

    async def cleanup_loop(self) -> None:
        """Run ``cleanup`` every tenth of the TTL (1 s to 60 s) until cancelled."""
        interval_s = min(60.0, max(1.0, self.settings.job_ttl_s / 10))
        while True:
            await asyncio.sleep(interval_s)
            try:
                await anyio.to_thread.run_sync(self.cleanup)
            except Exception:
                logger.exception("job cleanup failed")


def _failure_reason(error: Exception) -> str:
    """What a failed job reports for an unexpected error: the disk problem, or 'internal error'."""
    if isinstance(error, OSError) and is_disk_problem(error):
        return f"the result could not be written: {describe_disk_problem(error)}"
    return f"internal error during segmentation ({type(error).__name__})"


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

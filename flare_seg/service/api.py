"""The HTTP API: an app factory, its routes and schemas, the job store, the inference worker and metrics.

``create_app(settings)`` builds a FastAPI app; nothing is created at import time. The models are
loaded (and warmed up) in the background when the app starts, on the inference thread; ``/ready``
answers 503 until then.

Resource model:

* One inference at a time: a single worker thread runs the segmenter (it is not thread safe, and
  one model per device is all the memory budget allows).
* At most ``queue_size`` requests may wait for it (synchronous ``POST /segment`` and ``POST /jobs``
  together); a request takes its place before its body is read and keeps it while uploading,
  waiting and running. Past that the answer is 503 with ``Retry-After``.
* Uploads are streamed to disk under uuid names in the work folder, never held in memory; the size
  limit is enforced while streaming; the NIfTI header is checked before any voxel is decompressed;
  only the worker thread ever holds an image in memory.

Physical coordinates in answers are LPS millimetres in (x, y, z) order, volumes are millilitres,
times are seconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import importlib
import json
import logging
import math
import re
import secrets
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, TypeVar

import anyio.to_thread
import numpy as np
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, Field
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flare_seg import __version__
from flare_seg.geometry import Geometry
from flare_seg.service.io import (
    GZIP_MAGIC,
    CtVolume,
    InputError,
    image_to_nifti_bytes,
    validate_nifti,
    write_mask_atomic,
)
from flare_seg.service.settings import Settings

logger = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_S = 50  # uvicorn waits this long for in-flight requests after SIGTERM (compose allows 60)
UPLOAD_FIELD = "file"
_MULTIPART_OVERHEAD_BYTES = 64 * 1024  # boundaries, part headers and small form fields around the file
_WRITE_BUFFER_BYTES = 1 << 20
_DEFAULT_RETRY_AFTER_S = 30
_MAX_RETRY_AFTER_S = 600
_GEOMETRY_RTOL = 1e-5

BoxTuple = tuple[tuple[float, float, float], tuple[float, float, float]]
T = TypeVar("T")


# --------------------------------------------------------------------------------------------------
# The segmenter interface (implemented by flare_seg.service.pipeline.Segmenter; tests inject fakes)


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

    def read_volume(self, path: Path, max_voxels: int, *, display_name: str | None = None) -> CtVolume:
        """``service.io.read_ct_volume``, possibly preparing work for ``segment_volume`` on the way."""

    def segment_volume(self, volume: CtVolume, release_input: bool = False) -> SegmentationResultProtocol:
        """Segment one 3D CT; blocking. ``release_input=True``: the voxels may be dropped once used."""


SegmenterFactory = Callable[[Settings], SegmenterProtocol]


def load_pipeline_segmenter(settings: Settings) -> SegmenterProtocol:
    """The default factory: ``flare_seg.service.pipeline.Segmenter.load`` (imported lazily: TensorFlow)."""
    settings.check_paths()
    pipeline = importlib.import_module("flare_seg.service.pipeline")
    segmenter: SegmenterProtocol = pipeline.Segmenter.load(
        settings.models_dir, settings.memory_budget_mb, settings.precision
    )
    return segmenter


# --------------------------------------------------------------------------------------------------
# Schemas


class ErrorBody(BaseModel):
    detail: str = Field(description="what is wrong, in one sentence")


class Box(BaseModel):
    """An axis-aligned box in physical LPS millimetres."""

    min_mm_xyz: tuple[float, float, float]
    max_mm_xyz: tuple[float, float, float]

    @classmethod
    def of(cls, box: BoxTuple | None) -> Box | None:
        if box is None:
            return None
        return cls(min_mm_xyz=tuple(map(float, box[0])), max_mm_xyz=tuple(map(float, box[1])))  # type: ignore[arg-type]


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


# --------------------------------------------------------------------------------------------------
# Metrics


class Metrics:
    """Prometheus metrics in a registry of their own (one per app, so tests and apps do not collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "flare_seg_http_requests",
            "HTTP requests by route template, method and status code",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "flare_seg_http_request_duration_seconds",
            "HTTP request latency in seconds, upload and queueing included",
            ["route", "method"],
            buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "flare_seg_inference_seconds",
            "wall time of one segmentation on the worker, seconds",
            buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "flare_seg_queue_depth",
            "requests admitted and waiting for the inference worker (uploading or queued)",
            registry=self.registry,
        )
        self.in_progress = Gauge(
            "flare_seg_inference_in_progress", "segmentations running now (0 or 1)", registry=self.registry
        )
        self.rejected_queue_full = Counter(
            "flare_seg_queue_full_rejections",
            "requests answered 503 because the queue was full",
            registry=self.registry,
        )
        self.model_ready = Gauge(
            "flare_seg_model_ready", "1 once the models are loaded and warmed up", registry=self.registry
        )


class _MetricsMiddleware:
    """Pure ASGI middleware counting requests and timing them by route template (not raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(time.perf_counter() - start)


# --------------------------------------------------------------------------------------------------
# The single inference worker and its bounded queue


class Ticket:
    """A place in the inference queue, from admission (before the upload) until the work is done."""

    def __init__(self, worker: InferenceWorker) -> None:
        self._worker = worker
        self._released = False
        self.submitted = False

    def release(self) -> None:
        """Give the place back (idempotent)."""
        self._worker._release(self)

    def release_unless_submitted(self) -> None:
        """Give the place back unless work was submitted (then it is released when the work ends)."""
        if not self.submitted:
            self.release()


class InferenceWorker:
    """One thread that runs every model call, and a bounded count of requests allowed to wait for it."""

    def __init__(self, queue_size: int, metrics: Metrics) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="flare-seg-inference"
        )
        self._lock = threading.Lock()
        self._capacity = queue_size + 1  # the one running plus queue_size waiting
        self._admitted = 0
        self._running = 0
        self._mean_task_s: float | None = None
        self._metrics = metrics

    def try_admit(self) -> Ticket | None:
        """A ticket, or None when ``queue_size`` requests already wait (and one runs)."""
        with self._lock:
            if self._admitted >= self._capacity:
                return None
            self._admitted += 1
            self._update_gauges()
        return Ticket(self)

    def _release(self, ticket: Ticket) -> None:
        with self._lock:
            if ticket._released:
                return
            ticket._released = True
            self._admitted -= 1
            self._update_gauges()

    def _update_gauges(self) -> None:
        self._metrics.queue_depth.set(max(0, self._admitted - self._running))
        self._metrics.in_progress.set(self._running)

    def retry_after_s(self) -> int:
        """A guess at when a place frees up: the mean task time times the tasks ahead, in seconds."""
        with self._lock:
            if self._mean_task_s is None:
                return _DEFAULT_RETRY_AFTER_S
            return int(min(_MAX_RETRY_AFTER_S, max(1, math.ceil(self._mean_task_s * self._admitted))))

    def call(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run ``fn`` on the worker thread, outside the queue accounting (model loading)."""
        return self._executor.submit(fn)

    def run(self, ticket: Ticket, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run ``fn`` on the worker thread for ``ticket``; the ticket is released when ``fn`` ends
        (or when the future is cancelled before it starts)."""
        ticket.submitted = True

        def task() -> T:
            with self._lock:
                self._running += 1
                self._update_gauges()
            start = time.perf_counter()
            try:
                return fn()
            finally:
                elapsed = time.perf_counter() - start
                with self._lock:
                    self._running -= 1
                    self._mean_task_s = (
                        elapsed if self._mean_task_s is None else 0.7 * self._mean_task_s + 0.3 * elapsed
                    )
                    self._update_gauges()
                ticket.release()

        future = self._executor.submit(task)
        future.add_done_callback(lambda _: ticket.release())
        return future

    def shutdown(self) -> None:
        """Cancel work that has not started and wait for the running task (blocking)."""
        self._executor.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------------------------------
# Jobs


@dataclass
class Job:
    """A queued segmentation. Mutated under ``JobStore.lock`` only."""

    id: str
    case: str
    display_name: str
    upload_path: Path
    result_path: Path
    created_at: datetime
    status: JobStatus = JobStatus.queued
    started_at: datetime | None = None
    finished_at: datetime | None = None
    finished_monotonic: float | None = None
    summary: SegmentationSummary | None = None
    error: str | None = None


@dataclass
class JobStore:
    """In-memory job records (results on disk); finished jobs expire after ``ttl_s`` seconds."""

    ttl_s: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    jobs: dict[str, Job] = field(default_factory=dict)

    def add(self, job: Job) -> None:
        with self.lock:
            self.jobs[job.id] = job

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            return self.jobs.get(job_id)

    def update(self, job: Job, **changes: Any) -> None:
        with self.lock:
            for name, value in changes.items():
                setattr(job, name, value)

    def expire(self, now_monotonic: float) -> list[Job]:
        """Remove finished jobs older than the TTL and delete their files; returns them."""
        with self.lock:
            expired = [
                job
                for job in self.jobs.values()
                if job.finished_monotonic is not None and now_monotonic - job.finished_monotonic >= self.ttl_s
            ]
            for job in expired:
                del self.jobs[job.id]
        for job in expired:
            job.result_path.unlink(missing_ok=True)
            job.upload_path.unlink(missing_ok=True)
        return expired

    def fail_unfinished(self, reason: str) -> None:
        with self.lock:
            for job in self.jobs.values():
                if job.status in (JobStatus.queued, JobStatus.running):
                    job.status = JobStatus.failed
                    job.error = reason


# --------------------------------------------------------------------------------------------------
# Uploads


@dataclass(frozen=True)
class Upload:
    """An upload stored on disk under a uuid name (``path`` ends in .nii.gz or .nii by content)."""

    path: Path
    client_filename: str | None
    size_bytes: int

    @property
    def display_name(self) -> str:
        """The client's file name, safe to show in messages (base name only, printable, bounded)."""
        return display_name(self.client_filename)

    @property
    def case(self) -> str:
        return case_name(self.client_filename)


def display_name(client_filename: str | None) -> str:
    """The base name of a client's file name, printable and at most 200 characters; 'upload' if none."""
    base = re.split(r"[\\/]", client_filename or "")[-1]
    base = "".join(ch for ch in base if ch.isprintable())[:200]
    return base or "upload"


def case_name(client_filename: str | None) -> str:
    """A safe case name from a client's file name: base name, no .nii/.nii.gz, no nnU-Net ``_0000``
    channel suffix, only ``[A-Za-z0-9._-]``; 'mask' when nothing is left. Never used as a path."""
    base = re.split(r"[\\/]", client_filename or "")[-1]
    for ext in (".nii.gz", ".nii", ".gz"):
        if base.lower().endswith(ext):
            base = base[: -len(ext)]
            break
    base = re.sub(r"_0000$", "", base)
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._-")[:128]
    return base or "mask"


def _http_error(status: int, detail: str, headers: dict[str, str] | None = None) -> HTTPException:
    return HTTPException(status_code=status, detail=detail, headers=headers)


def _check_upload_headers(request: Request, max_upload_bytes: int) -> None:
    """Reject from the headers alone (before taking a queue place or reading the body)."""
    length_header = request.headers.get("content-length")
    if length_header is not None:
        try:
            length = int(length_header)
        except ValueError:
            raise _http_error(400, f"invalid Content-Length header {length_header!r}") from None
        if length == 0:
            raise _http_error(
                422, f"empty request body; expected a multipart upload in the form field '{UPLOAD_FIELD}'"
            )
        if length > max_upload_bytes + _MULTIPART_OVERHEAD_BYTES:
            raise _http_error(413, f"upload of {length} bytes is over the limit of {max_upload_bytes} bytes")
    media_type, _ = parse_options_header(request.headers.get("content-type", ""))
    if media_type != b"multipart/form-data":
        shown = media_type.decode("latin-1") or "none"
        raise _http_error(
            415,
            f"expected Content-Type multipart/form-data with the image in the form field '{UPLOAD_FIELD}', "
            f"got {shown}",
        )


class _MultipartEvents:
    """Collects python-multipart's synchronous callbacks as events to handle asynchronously."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self._field = bytearray()
        self._value = bytearray()
        self._headers: dict[bytes, bytes] = {}

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._part_begin,
            "on_part_data": self._part_data,
            "on_part_end": lambda: self.events.append(("part_end", None)),
            "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": lambda: self.events.append(("headers", dict(self._headers))),
            "on_end": lambda: self.events.append(("end", None)),
        }

    def _part_begin(self) -> None:
        self._headers = {}

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self.events.append(("data", data[start:end]))

    def _header_end(self) -> None:
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def pop(self) -> list[tuple[str, Any]]:
        events, self.events = self.events, []
        return events


async def receive_upload(request: Request, dest_dir: Path, max_upload_bytes: int) -> Upload:
    """Stream the multipart form field ``file`` to ``dest_dir/<uuid>.nii[.gz]``, 1 MiB writes at a time.

    Stops reading as soon as the size limit is passed. The client's file name is only recorded,
    never used in a path.

    Raises:
        HTTPException: 400 malformed body, 413 over the limit, 415 not multipart, 422 empty or
            missing field.
    """
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise _http_error(400, "malformed multipart/form-data request: no boundary in Content-Type")
    collector = _MultipartEvents()
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    part_path = dest_dir / f"{uuid.uuid4().hex}.part"
    max_body = max_upload_bytes + _MULTIPART_OVERHEAD_BYTES
    body_bytes = file_bytes = other_bytes = 0
    client_filename: str | None = None
    found = in_file = ended = False
    buffer = bytearray()
    handle = None
    try:
        async for chunk in request.stream():
            body_bytes += len(chunk)
            if body_bytes > max_body:
                raise _http_error(413, f"upload is over the limit of {max_upload_bytes} bytes")
            try:
                parser.write(chunk)
            except FormParserError as e:
                raise _http_error(400, f"malformed multipart/form-data body ({e})") from None
            for kind, payload in collector.pop():
                if kind == "headers":
                    _, options = parse_options_header(payload.get(b"content-disposition", b""))
                    if options.get(b"name") == UPLOAD_FIELD.encode():
                        if found:
                            raise _http_error(422, f"more than one '{UPLOAD_FIELD}' field; upload one image")
                        found = in_file = True
                        raw_name = options.get(b"filename")
                        client_filename = (
                            raw_name.decode("utf-8", "replace") if raw_name is not None else None
                        )
                        handle = open(part_path, "wb")  # noqa: SIM115 - closed in finally
                elif kind == "data":
                    if in_file:
                        file_bytes += len(payload)
                        if file_bytes > max_upload_bytes:
                            raise _http_error(413, f"upload is over the limit of {max_upload_bytes} bytes")
                        buffer.extend(payload)
                        if len(buffer) >= _WRITE_BUFFER_BYTES:
                            await anyio.to_thread.run_sync(handle.write, bytes(buffer))  # type: ignore[union-attr]
                            buffer.clear()
                    else:
                        other_bytes += len(payload)
                        if other_bytes > _MULTIPART_OVERHEAD_BYTES:
                            raise _http_error(413, "form fields other than the file are too large")
                elif kind == "part_end" and in_file:
                    in_file = False
                    await anyio.to_thread.run_sync(handle.write, bytes(buffer))  # type: ignore[union-attr]
                    buffer.clear()
                    handle.close()  # type: ignore[union-attr]
                elif kind == "end":
                    ended = True
        if body_bytes == 0:
            raise _http_error(
                422, f"empty request body; expected a multipart upload in the form field '{UPLOAD_FIELD}'"
            )
        if not ended:
            raise _http_error(400, "incomplete multipart/form-data body (was the upload interrupted?)")
        if not found:
            raise _http_error(
                422, f"missing form field '{UPLOAD_FIELD}' (the .nii.gz or .nii image to segment)"
            )
        if file_bytes == 0:
            raise _http_error(422, f"{display_name(client_filename)}: the uploaded file is empty")
    except ClientDisconnect:
        part_path.unlink(missing_ok=True)
        raise _http_error(400, "the client disconnected during the upload") from None
    except BaseException:
        part_path.unlink(missing_ok=True)
        raise
    finally:
        if handle is not None:
            handle.close()

    # Name the file by its content so that SimpleITK reads it (it picks gzip by the suffix).
    with open(part_path, "rb") as f:
        suffix = ".nii.gz" if f.read(2) == GZIP_MAGIC else ".nii"
    path = part_path.with_suffix(suffix)
    part_path.rename(path)
    return Upload(path=path, client_filename=client_filename, size_bytes=file_bytes)


# --------------------------------------------------------------------------------------------------
# The service: state shared by the routes (one per running app)


@dataclass
class _Outcome:
    summary: SegmentationSummary
    mask_bytes: bytes | None = None  # the encoded mask for synchronous answers


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
        self.jobs = JobStore(ttl_s=settings.job_ttl_s)
        self.segmenter: SegmenterProtocol | None = None
        self.load_error: str | None = None

    @property
    def max_upload_bytes(self) -> int:
        return self.settings.max_upload_mb * 1024 * 1024

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
            raise _http_error(
                503,
                f"the server is busy: {self.settings.queue_size} request(s) already wait; "
                f"retry in about {retry} s",
                headers={"Retry-After": str(retry)},
            )
        return ticket

    def require_ready(self) -> SegmenterProtocol:
        if self.segmenter is None:
            detail = (
                f"models failed to load: {self.load_error}" if self.load_error else "models are still loading"
            )
            raise _http_error(503, detail, headers={"Retry-After": "10"})
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
            await anyio.to_thread.run_sync(
                functools.partial(
                    validate_nifti,
                    upload.path,
                    self.settings.max_voxels,
                    display_name=upload.display_name,
                    scan_data=scan_data,
                )
            )
        except BaseException:
            upload.path.unlink(missing_ok=True)
            raise
        return upload

    def segment_file(
        self, upload_path: Path, name: str, case: str, *, encode: bool, result_path: Path | None
    ) -> _Outcome:
        """Read, segment and write or encode one image (runs on the worker thread only)."""
        segmenter = self.require_ready()
        start = time.perf_counter()
        # One decompression straight into the voxel array (CRC checked); the upload was validated.
        volume = segmenter.read_volume(upload_path, self.settings.max_voxels, display_name=name)
        upload_path.unlink(missing_ok=True)
        geometry, header = volume.geometry, volume.header
        read_s = time.perf_counter() - start

        start = time.perf_counter()
        result = segmenter.segment_volume(volume, release_input=True)
        inference_s = time.perf_counter() - start
        self.metrics.inference_seconds.observe(inference_s)
        del volume
        labels = _checked_labels(result, geometry)

        start = time.perf_counter()
        mask_bytes = None
        if encode:
            mask_bytes = image_to_nifti_bytes(labels, like=header, geometry=geometry)
        if result_path is not None:
            write_mask_atomic(labels, result_path, like=header, geometry=geometry)
        write_s = time.perf_counter() - start
        logger.info(
            "segmented %s (%s voxels) in %.2f s", case, "x".join(map(str, geometry.size_xyz)), inference_s
        )
        summary = SegmentationSummary(
            case=case,
            model_version=result.model_version,
            size_xyz=geometry.size_xyz,
            spacing_mm_xyz=geometry.spacing_mm_xyz,
            volumes_ml={k: float(v) for k, v in result.volumes_ml.items()},
            organ_boxes_mm={k: Box.of(v) for k, v in result.organ_boxes_mm.items()},
            roi_box_mm=Box.of(result.roi_box_mm),  # type: ignore[arg-type]
            organs_localized=getattr(result, "organs_localized", None),
            warnings=list(getattr(result, "warnings", ())),
            timings_s={
                **{k: float(v) for k, v in result.timings_s.items()},
                "read": read_s,
                "write": write_s,
            },
            inference_seconds=inference_s,
        )
        return _Outcome(summary=summary, mask_bytes=mask_bytes)

    def run_job(self, job: Job) -> None:
        """Run one job on the worker thread, recording the outcome on the job (never raises)."""
        self.jobs.update(job, status=JobStatus.running, started_at=_now())
        try:
            outcome = self.segment_file(
                job.upload_path, job.display_name, job.case, encode=False, result_path=job.result_path
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
            finished_at=_now(),
            finished_monotonic=time.monotonic(),
        )

    def cleanup(self, now_monotonic: float | None = None) -> int:
        """Delete finished jobs older than ``job_ttl_s`` and their files; returns how many."""
        expired = self.jobs.expire(time.monotonic() if now_monotonic is None else now_monotonic)
        if expired:
            logger.info("expired %d job(s)", len(expired))
        return len(expired)

    async def cleanup_loop(self) -> None:
        interval_s = min(60.0, max(1.0, self.settings.job_ttl_s / 10))
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.cleanup()
            except Exception:
                logger.exception("job cleanup failed")


def _now() -> datetime:
    return datetime.now(UTC)


def _checked_labels(result: SegmentationResultProtocol, geometry: Geometry) -> np.ndarray:
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


# --------------------------------------------------------------------------------------------------
# Dependencies


def _get_service(request: Request) -> Service:
    service: Service | None = getattr(request.app.state, "service", None)
    if service is None:
        raise _http_error(503, "the server is starting", headers={"Retry-After": "5"})
    return service


ServiceDep = Annotated[Service, Depends(_get_service)]
_bearer = HTTPBearer(auto_error=False, description="the server's API token (FLARE_SEG_API_TOKEN)")


def _require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """401 unless ``Authorization: Bearer <token>`` matches the configured token (when one is set)."""
    settings: Settings = request.app.state.settings
    if settings.api_token is None:
        return
    expected = settings.api_token.get_secret_value().encode()
    given = credentials.credentials.encode() if credentials is not None else b""
    if credentials is None or not secrets.compare_digest(given, expected):
        raise _http_error(
            401,
            "missing or invalid API token (send 'Authorization: Bearer <token>')",
            {"WWW-Authenticate": "Bearer"},
        )


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "malformed request",
        401: "missing or invalid API token",
        413: "upload over max_upload_mb, or an image over max_voxels / 4096 voxels per axis",
        415: "not multipart/form-data, or the file is not a NIfTI image",
        422: "missing or empty 'file' field, truncated or corrupt file, not a 3D scalar image",
        503: "models not loaded yet, or the queue is full (see Retry-After)",
    }.items()
}
_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [UPLOAD_FIELD],
                    "properties": {
                        UPLOAD_FIELD: {
                            "type": "string",
                            "format": "binary",
                            "description": "a 3D CT image, .nii.gz or .nii (NIfTI-1 or -2)",
                        }
                    },
                }
            }
        },
    }
}
_MASK_HEADERS = {
    "X-Organ-Volumes-mL": {"description": "JSON object: organ -> volume in mL", "schema": {"type": "string"}},
    "X-Model-Version": {"description": "version of the models used", "schema": {"type": "string"}},
    "X-Inference-Seconds": {"description": "segmentation wall time, seconds", "schema": {"type": "string"}},
    "X-Warnings": {
        "description": "JSON array of sentences: what to know about the mask ([] when nothing)",
        "schema": {"type": "string"},
    },
}

public_router = APIRouter(tags=["probes"])
router = APIRouter(dependencies=[Depends(_require_token)], responses={401: _ERRORS[401]})


def _mask_headers(summary: SegmentationSummary) -> dict[str, str]:
    volumes = {name: round(ml, 3) for name, ml in summary.volumes_ml.items()}
    return {
        "Content-Disposition": f'attachment; filename="{summary.case}.nii.gz"',
        "X-Organ-Volumes-mL": json.dumps(volumes, separators=(",", ":"), ensure_ascii=True),
        "X-Model-Version": summary.model_version.encode("ascii", "replace").decode("ascii"),
        "X-Inference-Seconds": f"{summary.inference_seconds:.3f}",
        "X-Warnings": json.dumps(summary.warnings, separators=(",", ":"), ensure_ascii=True),
    }


def _wants_json(format_: str | None, accept: str) -> bool:
    if format_ is not None:
        return format_ == "json"
    accept = accept.lower()
    return "application/json" in accept and "application/gzip" not in accept


def _job_urls(request: Request, job_id: str) -> tuple[str, str]:
    return (
        request.url_for("get_job", job_id=job_id).path,
        request.url_for("get_job_result", job_id=job_id).path,
    )


def _job_info(request: Request, job: Job, ttl_s: int) -> JobInfo:
    status_url, result_url = _job_urls(request, job.id)
    expires_at = None
    if job.finished_at is not None:
        expires_at = datetime.fromtimestamp(job.finished_at.timestamp() + ttl_s, UTC)
    return JobInfo(
        id=job.id,
        status=job.status,
        status_url=status_url,
        result_url=result_url,
        case=job.case,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        expires_at=expires_at,
        summary=job.summary,
        error=job.error,
    )


# --------------------------------------------------------------------------------------------------
# Routes


@public_router.get("/health", response_model=HealthInfo, summary="liveness: 200 while the process runs")
async def health() -> HealthInfo:
    return HealthInfo()


@public_router.get(
    "/ready",
    response_model=ReadyInfo,
    responses={503: {"model": ReadyInfo, "description": "models not loaded (yet)"}},
    summary="readiness: 200 once the models are loaded and warmed up",
)
async def ready(request: Request) -> JSONResponse:
    service: Service | None = getattr(request.app.state, "service", None)
    if service is not None and service.segmenter is not None:
        info = ReadyInfo(status="ready", model_version=service.segmenter.model_version)
        return JSONResponse(info.model_dump(mode="json"))
    if service is not None and service.load_error is not None:
        info = ReadyInfo(status="failed", detail=f"models failed to load: {service.load_error}")
    else:
        info = ReadyInfo(status="loading", detail="models are still loading")
    return JSONResponse(info.model_dump(mode="json"), status_code=503, headers={"Retry-After": "10"})


@router.get("/metrics", summary="Prometheus metrics (text format)", tags=["probes"])
async def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/models", summary="the model manifest (contract, provenance, metrics)", tags=["models"])
async def models(service: ServiceDep) -> JSONResponse:
    segmenter = service.require_ready()
    return JSONResponse(jsonable_encoder(segmenter.manifest))


@router.post(
    "/segment",
    summary="segment one CT image and wait for the result",
    description=(
        "Upload a 3D CT image (.nii.gz or .nii) in the multipart form field `file`. Answers the uint8 "
        "label mask as a gzip NIfTI on exactly the input's grid, with the organ volumes in the "
        "`X-Organ-Volumes-mL` header; or, with `?format=json` (or `Accept: application/json`), a JSON "
        "summary (volumes, bounding boxes, timings, model version) without the mask."
    ),
    response_model=None,
    responses={
        200: {
            "content": {
                "application/gzip": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": {"$ref": "#/components/schemas/SegmentationSummary"}},
            },
            "headers": _MASK_HEADERS,
            "description": "the label mask (.nii.gz), or the JSON summary",
        },
        **{code: _ERRORS[code] for code in (400, 413, 415, 422, 503)},
    },
    openapi_extra=_UPLOAD_BODY,
    tags=["segmentation"],
)
async def segment(
    request: Request,
    service: ServiceDep,
    format_: Annotated[
        Literal["nifti", "json"] | None,
        Query(alias="format", description="nifti: the mask (default); json: the summary only"),
    ] = None,
) -> Response:
    service.require_ready()
    _check_upload_headers(request, service.max_upload_bytes)
    as_json = _wants_json(format_, request.headers.get("accept", ""))
    ticket = service.admit()
    upload: Upload | None = None
    try:
        upload = await service.receive_and_check(request, scan_data=False)
        work = functools.partial(
            service.segment_file,
            upload.path,
            upload.display_name,
            upload.case,
            encode=not as_json,
            result_path=None,
        )
        outcome = await asyncio.wrap_future(service.worker.run(ticket, work))
    except (InputError, HTTPException):
        raise
    except Exception:
        logger.exception("segmentation failed")
        raise _http_error(500, "internal error during segmentation") from None
    finally:
        ticket.release_unless_submitted()
        if upload is not None:
            upload.path.unlink(missing_ok=True)
    if as_json:
        return JSONResponse(outcome.summary.model_dump(mode="json"))
    return Response(outcome.mask_bytes, media_type="application/gzip", headers=_mask_headers(outcome.summary))


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobCreated,
    summary="queue one CT image for segmentation; poll status_url, then fetch result_url",
    responses={**{code: _ERRORS[code] for code in (400, 413, 415, 422, 503)}},
    openapi_extra=_UPLOAD_BODY,
    tags=["jobs"],
)
async def create_job(request: Request, service: ServiceDep) -> JSONResponse:
    service.require_ready()
    _check_upload_headers(request, service.max_upload_bytes)
    ticket = service.admit()
    try:
        upload = await service.receive_and_check(request)
        job_id = uuid.uuid4().hex
        job = Job(
            id=job_id,
            case=upload.case,
            display_name=upload.display_name,
            upload_path=upload.path,
            result_path=service.results_dir / f"{job_id}.nii.gz",
            created_at=_now(),
        )
        service.jobs.add(job)
        service.worker.run(ticket, functools.partial(service.run_job, job))
    finally:
        ticket.release_unless_submitted()
    status_url, result_url = _job_urls(request, job.id)
    created = JobCreated(id=job.id, status=JobStatus.queued, status_url=status_url, result_url=result_url)
    return JSONResponse(created.model_dump(mode="json"), status_code=202, headers={"Location": status_url})


@router.get(
    "/jobs/{job_id}",
    response_model=JobInfo,
    responses={404: {"model": ErrorBody, "description": "unknown or expired job"}},
    summary="a job's status, with its summary once done or its error once failed",
    tags=["jobs"],
)
async def get_job(job_id: str, request: Request, service: ServiceDep) -> JobInfo:
    job = service.jobs.get(job_id)
    if job is None:
        raise _http_error(404, f"unknown or expired job {job_id[:64]!r}")
    with service.jobs.lock:
        return _job_info(request, job, service.settings.job_ttl_s)


@router.get(
    "/jobs/{job_id}/result",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/gzip": {}}, "headers": _MASK_HEADERS, "description": "the label mask"},
        404: {"model": ErrorBody, "description": "unknown or expired job"},
        409: {"model": ErrorBody, "description": "the job is not done (queued, running or failed)"},
    },
    summary="a done job's label mask (.nii.gz)",
    tags=["jobs"],
)
async def get_job_result(job_id: str, service: ServiceDep) -> FileResponse:
    job = service.jobs.get(job_id)
    if job is None:
        raise _http_error(404, f"unknown or expired job {job_id[:64]!r}")
    with service.jobs.lock:
        status, summary, error = job.status, job.summary, job.error
    if status == JobStatus.failed:
        raise _http_error(409, f"job {job_id} failed: {error}")
    if status != JobStatus.done or summary is None:
        raise _http_error(409, f"job {job_id} is {status}; poll its status until it is done")
    if not job.result_path.is_file():
        raise _http_error(404, f"the result of job {job_id} has expired")
    return FileResponse(job.result_path, media_type="application/gzip", headers=_mask_headers(summary))


# --------------------------------------------------------------------------------------------------
# Exception handlers, the app factory and serve()


async def _input_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InputError)
    return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)


async def _validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    messages = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        where = f"{loc[0]} parameter '{'.'.join(loc[1:])}'" if len(loc) > 1 else ".".join(loc) or "request"
        messages.append(f"{where}: {error.get('msg', 'invalid')}")
    return JSONResponse({"detail": "; ".join(messages), "errors": jsonable_encoder(errors)}, status_code=422)


def create_app(
    settings: Settings,
    segmenter_factory: SegmenterFactory | None = None,
    *,
    on_load_failure: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """Build the app. Models are loaded in the background when the app starts (lifespan), not here.

    Args:
        settings: the service settings (see ``flare_seg.service.settings``).
        segmenter_factory: builds the segmenter from the settings (called on the inference thread);
            default ``load_pipeline_segmenter`` (the TensorFlow SavedModels in ``models_dir``).
        on_load_failure: called with the exception if loading the models fails (``serve`` uses it to
            stop the server; otherwise /ready stays 503 with the error).
    """
    factory = segmenter_factory or load_pipeline_segmenter
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        work_parent = settings.work_dir
        if work_parent is not None:
            work_parent.mkdir(parents=True, exist_ok=True)
        work_root = Path(tempfile.mkdtemp(prefix="flare-seg-", dir=work_parent))
        service = Service(settings, metrics, work_root)
        app.state.service = service
        logger.info("work folder %s; queue size %d", work_root, settings.queue_size)
        tasks = [
            asyncio.create_task(service.load_models(factory, on_load_failure), name="flare-seg-load-models"),
            asyncio.create_task(service.cleanup_loop(), name="flare-seg-job-cleanup"),
        ]
        try:
            yield
        finally:
            logger.info("shutting down: waiting for the running segmentation, dropping queued jobs")
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await anyio.to_thread.run_sync(service.worker.shutdown)
            service.jobs.fail_unfinished("the server shut down before the job ran")
            app.state.service = None
            shutil.rmtree(work_root, ignore_errors=True)

    app = FastAPI(
        title="flare-seg",
        version=__version__,
        summary="Abdominal CT organ segmentation (liver, kidney, spleen, pancreas)",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.service = None
    app.add_middleware(_MetricsMiddleware, metrics=metrics)
    app.add_exception_handler(InputError, _input_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.include_router(public_router)
    app.include_router(router)
    return app


class ModelLoadError(RuntimeError):
    """The server stopped because the models could not be loaded."""


def serve(settings: Settings, segmenter_factory: SegmenterFactory | None = None) -> None:
    """Run the server with uvicorn until SIGINT/SIGTERM (blocking).

    ``segmenter_factory`` defaults to the TensorFlow pipeline (see ``create_app``).

    On SIGTERM uvicorn stops accepting connections and lets in-flight requests finish (up to
    ``GRACEFUL_SHUTDOWN_S`` seconds); then the lifespan drops queued jobs and waits for the running
    segmentation.

    Raises:
        SettingsError: a bad path setting (checked before binding the port).
        ModelLoadError: the models could not be loaded (the server stops at once).
    """
    settings.check_paths()
    level = settings.log_level.upper()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("flare_seg").setLevel(level)
    failures: list[BaseException] = []
    server: uvicorn.Server | None = None

    def stop_on_failure(exc: BaseException) -> None:
        failures.append(exc)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, segmenter_factory, on_load_failure=stop_on_failure)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    server.run()
    if failures:
        raise ModelLoadError(
            f"could not load the models from {settings.models_dir}: {failures[0]}"
        ) from failures[0]

"""The HTTP API: an app factory, its routes and schemas, the job store, the inference worker and metrics.

``create_app(settings)`` builds a FastAPI app; nothing is created at import time. The models are
loaded (and warmed up) in the background when the app starts, on the inference thread; ``/ready``
answers 503 until then.

Resource model:

* One inference at a time: a single worker thread runs the segmenter (it is not thread safe, and
  one model per device is all the memory budget allows).
* At most ``queue_size`` requests may wait for it (synchronous ``POST /segment`` and ``POST /jobs``
  together); a request takes its place once its upload has arrived and passed every check, and
  keeps it while waiting and running. Past that the answer is 503 with ``Retry-After``.
* At most ``max_concurrent_uploads`` uploads are received at once, each bounded in time: a body
  that stalls for ``upload_idle_timeout_s`` (or arrives under ``upload_min_bytes_per_s``) is
  answered 408 and its slot freed. A synchronous request whose client goes away is dropped if it
  has not started.
* Jobs are recorded in an SQLite file under the work folder and survive a restart.
* Uploads are streamed to disk under uuid names in the work folder, never held in memory; the size
  limit is enforced while streaming; the NIfTI header is checked before any voxel is decompressed;
  only the worker thread ever holds an image in memory.

Physical coordinates in answers are LPS millimetres in (x, y, z) order, volumes are millilitres,
times are seconds.

Modules, in the order a request meets them:

* ``app``: ``create_app`` (the factory), the lifespan that builds the service and loads the models,
  ``serve``.
* ``deps``: the ``Annotated`` dependencies (the running service, the API token).
* ``routes``: the endpoints and their OpenAPI descriptions.
* ``uploads``: header checks and streaming the multipart upload to disk.
* ``service``: the state of a running app and the segmentation of one file on the worker.
* ``jobs``: the inference worker with its bounded queue (``jobs.worker``) and the job records
  (``jobs.store``).
* ``segmenter``: the interface of the model set the service runs.
* ``schemas``, ``errors``, ``metrics``: JSON bodies, error answers, Prometheus metrics.
"""

from flare_seg.service.api.app import GRACEFUL_SHUTDOWN_S, ModelLoadError, create_app, serve
from flare_seg.service.api.jobs import DurableJobStore, InferenceWorker, Job, JobStore, Ticket
from flare_seg.service.api.metrics import Metrics
from flare_seg.service.api.schemas import (
    Box,
    ErrorBody,
    HealthInfo,
    JobCreated,
    JobInfo,
    JobStatus,
    ReadyInfo,
    SegmentationSummary,
)
from flare_seg.service.api.segmenter import (
    SegmentationResultProtocol,
    SegmenterFactory,
    SegmenterProtocol,
    load_pipeline_segmenter,
)
from flare_seg.service.api.service import Service
from flare_seg.service.api.uploads import UPLOAD_FIELD, Upload, case_name, display_name, receive_upload

__all__ = [
    "GRACEFUL_SHUTDOWN_S",
    "UPLOAD_FIELD",
    "Box",
    "DurableJobStore",
    "ErrorBody",
    "HealthInfo",
    "InferenceWorker",
    "Job",
    "JobCreated",
    "JobInfo",
    "JobStatus",
    "JobStore",
    "Metrics",
    "ModelLoadError",
    "ReadyInfo",
    "SegmentationResultProtocol",
    "SegmentationSummary",
    "SegmenterFactory",
    "SegmenterProtocol",
    "Service",
    "Ticket",
    "Upload",
    "case_name",
    "create_app",
    "display_name",
    "load_pipeline_segmenter",
    "receive_upload",
    "serve",
]

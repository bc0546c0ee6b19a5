"""Queued work: the single inference worker with its bounded queue, and the job records.

``worker``: one thread runs every model call; ``Ticket`` is a place in its queue.
``store``: the ``JobStore`` interface and the durable store (``sqlite``: the records in SQLite).
"""

from flare_seg.service.api.jobs.sqlite import JobStoreError
from flare_seg.service.api.jobs.store import DurableJobStore, Job, JobStore
from flare_seg.service.api.jobs.worker import InferenceWorker, Ticket, WorkerDraining

__all__ = [
    "DurableJobStore",
    "InferenceWorker",
    "Job",
    "JobStore",
    "JobStoreError",
    "Ticket",
    "WorkerDraining",
]

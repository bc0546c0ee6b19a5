"""Queued work: the single inference worker with its bounded queue, and the job records.

``worker``: one thread runs every model call; ``Ticket`` is a place in its queue.
``store``: the ``JobStore`` interface and its in-memory implementation (results live on disk).
"""

from flare_seg.service.api.jobs.store import InMemoryJobStore, Job, JobStore
from flare_seg.service.api.jobs.worker import InferenceWorker, Ticket

__all__ = ["InMemoryJobStore", "InferenceWorker", "Job", "JobStore", "Ticket"]

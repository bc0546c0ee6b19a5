"""Job records: what the routes and the worker need of a job store, and the in-memory store.

A store holds the records only; the uploaded image and the result mask are files whose paths the
record names. Finished jobs expire after a TTL, with their files.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from flare_seg.service.api.schemas import JobStatus, SegmentationSummary


@dataclass
class Job:
    """A queued segmentation. Changed through its store's ``update`` only."""

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


class JobStore(Protocol):
    """Where job records live. Every method is safe to call from any thread."""

    @property
    def ttl_s(self) -> int:
        """seconds a finished job (and its result) is kept."""

    def add(self, job: Job) -> None: ...

    def get(self, job_id: str) -> Job | None:
        """A consistent copy of the job's record (later updates do not show in it); None if unknown."""

    def update(self, job: Job, **changes: Any) -> None:
        """Set the named fields of the stored record of ``job`` (and of ``job`` itself)."""

    def expire(self, now_monotonic: float) -> list[Job]:
        """Remove finished jobs older than the TTL and delete their files; returns them."""

    def fail_unfinished(self, reason: str) -> None:
        """Mark every queued or running job failed with ``reason`` (at shutdown)."""


@dataclass
class InMemoryJobStore:
    """Job records in a dict, lost when the process ends; finished jobs expire after ``ttl_s`` seconds."""

    ttl_s: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    jobs: dict[str, Job] = field(default_factory=dict)

    def add(self, job: Job) -> None:
        with self.lock:
            self.jobs[job.id] = job

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            job = self.jobs.get(job_id)
            return None if job is None else dataclasses.replace(job)

    def update(self, job: Job, **changes: Any) -> None:
        with self.lock:
            for name, value in changes.items():
                setattr(job, name, value)

    def expire(self, now_monotonic: float) -> list[Job]:
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

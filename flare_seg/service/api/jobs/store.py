"""Job records: what the routes and the worker need of a job store, and the durable store.

A store holds the records only; the uploaded image and the result mask are files whose paths the
record names. Finished jobs expire after a TTL, with their files. ``DurableJobStore`` keeps the
records in an SQLite file under the work folder (``sqlite.JobDatabase``), so that they survive a
restart: queued jobs run again, finished results stay retrievable until they expire, and a job
that was running when the process ended is failed with "interrupted by a restart".
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from flare_seg.service.api.jobs.sqlite import JobDatabase, JobRecord
from flare_seg.service.api.schemas import JobStatus, SegmentationSummary

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One job as the routes show it (a copy of the stored record: later changes do not show in it)."""

    id: str
    case: str
    display_name: str
    upload_path: Path
    result_path: Path
    created_at: datetime
    status: JobStatus = JobStatus.queued
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = None
    summary: SegmentationSummary | None = None
    error: str | None = None
    statistics: bool = False  # add the per-organ statistics to the summary


class JobStore(Protocol):
    """Where job records live. Every method is safe to call from any thread."""

    @property
    def ttl_s(self) -> int:
        """seconds a finished job (and its result) is kept."""

    def add(self, job: Job) -> None:
        """Store a new queued job."""

    def get(self, job_id: str) -> Job | None:
        """The job, or None if unknown or expired."""

    def mark_running(self, job_id: str) -> bool:
        """Claim a queued job for the worker; False if it is not queued (then do not run it)."""

    def finish(
        self, job_id: str, *, summary: SegmentationSummary | None = None, error: str | None = None
    ) -> None:
        """Record the outcome: done with ``summary`` or failed with ``error``."""

    def queued(self) -> list[Job]:
        """The queued jobs, oldest first."""

    def expire(self, now_s: float | None = None) -> list[Job]:
        """Remove finished jobs past their expiry (epoch seconds) and delete their files; returns them."""

    def close(self) -> None: ...


def _datetime(epoch_s: float | None) -> datetime | None:
    return None if epoch_s is None else datetime.fromtimestamp(epoch_s, UTC)


def _job_of(record: JobRecord) -> Job:
    summary = None
    if record.summary_json is not None:
        summary = SegmentationSummary.model_validate_json(record.summary_json)
    return Job(
        id=record.id,
        case=record.case,
        display_name=record.display_name,
        upload_path=record.upload_path,
        result_path=record.result_path,
        created_at=datetime.fromtimestamp(record.created_at, UTC),
        status=record.state,
        started_at=_datetime(record.started_at),
        finished_at=_datetime(record.finished_at),
        expires_at=_datetime(record.expires_at),
        summary=summary,
        error=record.reason,
        statistics=record.statistics,
    )


class DurableJobStore:
    """Job records in ``folder/jobs.sqlite3`` (see ``sqlite.JobDatabase``)."""

    def __init__(self, database: JobDatabase, ttl_s: int) -> None:
        self._db = database
        self._ttl_s = ttl_s

    @classmethod
    def open(cls, folder: Path, ttl_s: int) -> DurableJobStore:
        """Open the store of ``folder``, recovering from the previous process (see the module).

        Raises:
            JobStoreError: the store cannot be opened or written.
        """
        return cls(JobDatabase.open(folder, ttl_s), ttl_s)

    @property
    def ttl_s(self) -> int:
        return self._ttl_s

    def add(self, job: Job) -> None:
        self._db.add(
            JobRecord(
                id=job.id,
                state=JobStatus.queued,
                case=job.case,
                display_name=job.display_name,
                upload_path=job.upload_path,
                result_path=job.result_path,
                created_at=job.created_at.timestamp(),
                statistics=job.statistics,
            )
        )

    def get(self, job_id: str) -> Job | None:
        record = self._db.get(job_id)
        return None if record is None else _job_of(record)

    def mark_running(self, job_id: str) -> bool:
        return self._db.mark_running(job_id)

    def finish(
        self, job_id: str, *, summary: SegmentationSummary | None = None, error: str | None = None
    ) -> None:
        summary_json = None if summary is None else summary.model_dump_json()
        self._db.finish(job_id, summary_json=summary_json, reason=error)

    def queued(self) -> list[Job]:
        return [_job_of(record) for record in self._db.queued()]

    def expire(self, now_s: float | None = None) -> list[Job]:
        expired = [_job_of(record) for record in self._db.expire(now=time.time() if now_s is None else now_s)]
        for job in expired:
            job.result_path.unlink(missing_ok=True)
            job.upload_path.unlink(missing_ok=True)
        return expired

    def count(self) -> int:
        """How many job records there are (in any state)."""
        return sum(self._db.counts().values())

    def known_paths(self) -> set[Path]:
        """Every file a record names (anything else in the job folders is a leftover)."""
        return self._db.known_paths()

    def close(self) -> None:
        self._db.close()

"""Durable job records: an SQLite database (standard library) under the server's work folder.

A job is queued when its upload has been accepted, running while the worker segments it, and done
or failed afterwards; a finished job and its result file are kept until ``expires_at``. The records
survive a restart: ``JobDatabase.open`` marks the jobs that were running when the previous process
ended as failed ("interrupted by a restart") and leaves queued jobs queued, for the new process to
run (``queued()``, oldest first).

One store is one file (``jobs.sqlite3``) in WAL mode: readers (status polls) never wait for the
writer, every change is one short transaction, and a process killed at any point leaves the last
committed state. Several processes may open the same file on one host (SQLite locks it); the
state changes are conditional (``mark_running`` only claims a queued job), so two workers never
run one job. A network file system is not a safe place for it (WAL needs shared memory).

Times are seconds since the epoch (UTC).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flare_seg.service.api.schemas import JobStatus

logger = logging.getLogger(__name__)

STORE_FILE_NAME = "jobs.sqlite3"
INTERRUPTED_REASON = "interrupted by a restart"
_SCHEMA_VERSION = 1
_BUSY_TIMEOUT_MS = 5000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id            TEXT PRIMARY KEY,
    state         TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    case_name     TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    upload_path   TEXT NOT NULL,
    result_path   TEXT NOT NULL,
    created_at    REAL NOT NULL,
    started_at    REAL,
    finished_at   REAL,
    expires_at    REAL,
    reason        TEXT,
    summary_json  TEXT,
    statistics    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created_at);
CREATE INDEX IF NOT EXISTS jobs_by_expiry ON jobs (expires_at) WHERE expires_at IS NOT NULL;
"""
_COLUMNS = (
    "id, state, case_name, display_name, upload_path, result_path, created_at, started_at, "
    "finished_at, expires_at, reason, summary_json, statistics"
)


class JobStoreError(RuntimeError):
    """The job store cannot be opened or written. ``disk_problem`` says when the disk is the cause
    (full, read-only, or not permitted), so that the server answers 507 rather than 500; then
    ``client_reason`` names it without a server path."""

    def __init__(self, message: str, *, disk_problem: bool = False, client_reason: str = "") -> None:
        super().__init__(message)
        self.disk_problem = disk_problem
        self.client_reason = client_reason


@dataclass(frozen=True)
class JobRecord:
    """One job as stored. ``summary_json`` is the done job's summary (JSON text), ``reason`` the
    failed job's error message."""

    id: str
    state: JobStatus
    case: str
    display_name: str
    upload_path: Path
    result_path: Path
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    reason: str | None = None
    summary_json: str | None = None
    statistics: bool = False  # a job option: add the per-organ statistics to the summary

    @classmethod
    def _of_row(cls, row: tuple[object, ...]) -> JobRecord:
        id_, state, case, display, upload, result = row[:6]
        created, started, finished, expires, reason, summary, statistics = row[6:]
        return cls(
            id=str(id_),
            state=JobStatus(str(state)),
            case=str(case),
            display_name=str(display),
            upload_path=Path(str(upload)),
            result_path=Path(str(result)),
            created_at=float(created),  # type: ignore[arg-type]
            started_at=None if started is None else float(started),  # type: ignore[arg-type]
            finished_at=None if finished is None else float(finished),  # type: ignore[arg-type]
            expires_at=None if expires is None else float(expires),  # type: ignore[arg-type]
            reason=None if reason is None else str(reason),
            summary_json=None if summary is None else str(summary),
            statistics=bool(statistics),
        )


def _describe_sqlite_error(path: Path, e: sqlite3.Error) -> JobStoreError:
    text = str(e)
    lowered = text.lower()
    if "full" in lowered:
        reason = "no space left on the device of the work folder"
    elif "readonly" in lowered or "read-only" in lowered or "unable to open" in lowered:
        reason = "the work folder is not writable"
    elif "disk i/o" in lowered:
        reason = "the disk of the work folder reports an I/O error"
    else:
        return JobStoreError(f"job store {path}: {text}")
    return JobStoreError(f"job store {path}: {reason} ({text})", disk_problem=True, client_reason=reason)


class JobDatabase:
    """The job records of one work folder, safe to use from any thread of one process."""

    def __init__(self, connection: sqlite3.Connection, path: Path, ttl_s: float) -> None:
        self._db = connection
        self._lock = threading.Lock()
        self.path = path
        self.ttl_s = float(ttl_s)

    # ------------------------------------------------------------------------------ opening

    @classmethod
    def open(cls, folder: Path, ttl_s: float, *, now: float | None = None) -> JobDatabase:
        """Open (or create) ``folder/jobs.sqlite3`` and recover from the previous process: jobs it
        left running are marked failed with ``INTERRUPTED_REASON``; queued jobs stay queued.

        Raises:
            JobStoreError: the file cannot be created, opened or written (``disk_problem`` set when
                the disk is full or read-only), or it is not a job store.
        """
        path = Path(folder) / STORE_FILE_NAME
        try:
            connection = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        except sqlite3.Error as e:
            raise _describe_sqlite_error(path, e) from None
        store = cls(connection, path, ttl_s)
        try:
            store._initialize()
            interrupted = store.fail_running(INTERRUPTED_REASON, now=now)
        except BaseException:
            connection.close()
            raise
        if interrupted:
            logger.warning("%d job(s) were running when the server stopped: marked failed", len(interrupted))
        return store

    def _initialize(self) -> None:
        with self._write() as db:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                logger.warning("job store %s: journal mode %s (WAL not available here)", self.path, mode)
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across process crashes
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version not in (0, _SCHEMA_VERSION):
                raise JobStoreError(
                    f"job store {self.path}: schema version {version}, this server reads {_SCHEMA_VERSION}"
                )
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock, in one transaction (committed, or rolled back on error)."""
        with self._lock:
            try:
                with self._db:
                    yield self._db
            except sqlite3.DatabaseError as e:
                raise _describe_sqlite_error(self.path, e) from None

    def _read(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as e:
                raise _describe_sqlite_error(self.path, e) from None

    # ------------------------------------------------------------------------------ changes

    def add(self, record: JobRecord) -> None:
        """Store a new queued job."""
        if record.state is not JobStatus.queued:
            raise ValueError(f"a new job must be queued, not {record.state}")
        with self._write() as db:
            db.execute(
                f"INSERT INTO jobs ({_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL, NULL, ?)",
                (
                    record.id,
                    record.state.value,
                    record.case,
                    record.display_name,
                    str(record.upload_path),
                    str(record.result_path),
                    record.created_at,
                    int(record.statistics),
                ),
            )

    def mark_running(self, job_id: str, *, now: float | None = None) -> bool:
        """Claim a queued job for the worker; False when it is not queued (already claimed, finished
        or gone), and then the caller must not run it."""
        with self._write() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = 'running', started_at = ? WHERE id = ? AND state = 'queued'",
                (_now(now), job_id),
            )
            return cursor.rowcount == 1

    def finish(
        self,
        job_id: str,
        *,
        summary_json: str | None = None,
        reason: str | None = None,
        now: float | None = None,
    ) -> None:
        """Record the outcome: done with ``summary_json``, or failed with ``reason`` (exactly one).
        The record then expires ``ttl_s`` seconds later."""
        if (summary_json is None) == (reason is None):
            raise ValueError("finish a job with either a summary or a reason")
        finished = _now(now)
        state = JobStatus.done if reason is None else JobStatus.failed
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, expires_at = ?, reason = ?, summary_json = ? "
                "WHERE id = ? AND state IN ('queued', 'running')",
                (state.value, finished, finished + self.ttl_s, reason, summary_json, job_id),
            )

    def fail_running(self, reason: str, *, now: float | None = None) -> list[JobRecord]:
        """Mark every running job failed with ``reason`` (a restart's recovery); returns them."""
        finished = _now(now)
        with self._write() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE state = 'running'").fetchall()
            db.execute(
                "UPDATE jobs SET state = 'failed', finished_at = ?, expires_at = ?, reason = ? "
                "WHERE state = 'running'",
                (finished, finished + self.ttl_s, reason),
            )
        return [JobRecord._of_row(row) for row in rows]

    def expire(self, *, now: float | None = None) -> list[JobRecord]:
        """Delete the finished jobs whose time is up; returns them (the caller deletes their files)."""
        with self._write() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE expires_at IS NOT NULL AND expires_at <= ?", (_now(now),)
            ).fetchall()
            db.executemany("DELETE FROM jobs WHERE id = ?", [(row[0],) for row in rows])
        return [JobRecord._of_row(row) for row in rows]

    # ------------------------------------------------------------------------------ queries

    def get(self, job_id: str, *, now: float | None = None) -> JobRecord | None:
        """The job, or None when unknown or expired (even before ``expire`` has deleted it)."""
        rows = self._read(
            f"SELECT {_COLUMNS} FROM jobs WHERE id = ? AND (expires_at IS NULL OR expires_at > ?)",
            (job_id, _now(now)),
        )
        return JobRecord._of_row(rows[0]) if rows else None

    def queued(self) -> list[JobRecord]:
        """The queued jobs, oldest first: the order they run in."""
        rows = self._read(f"SELECT {_COLUMNS} FROM jobs WHERE state = 'queued' ORDER BY created_at, id")
        return [JobRecord._of_row(row) for row in rows]

    def counts(self) -> dict[JobStatus, int]:
        """How many jobs are in each state (expired ones not yet deleted included)."""
        rows = self._read("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        found = {str(state): int(n) for state, n in rows}  # type: ignore[call-overload]
        return {state: found.get(state.value, 0) for state in JobStatus}

    def known_paths(self) -> set[Path]:
        """Every upload and result path a record names (files outside it are leftovers)."""
        rows = self._read("SELECT upload_path, result_path FROM jobs")
        return {Path(str(p)) for row in rows for p in row}


def _now(now: float | None) -> float:
    return time.time() if now is None else float(now)

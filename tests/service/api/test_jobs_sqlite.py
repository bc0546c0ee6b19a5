"""Tests for flare_seg.service.api.jobs.sqlite: durable job records in SQLite."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from flare_seg.service.api.jobs.sqlite import (
    INTERRUPTED_REASON,
    STORE_FILE_NAME,
    JobDatabase,
    JobRecord,
    JobStatus,
    JobStoreError,
)
from tests.service.diskfs import small_tmpfs

TTL_S = 100.0


def record(job_id: str, created_at: float = 1000.0) -> JobRecord:
    return JobRecord(
        id=job_id,
        state=JobStatus.queued,
        case=f"case-{job_id}",
        display_name=f"{job_id}_0000.nii.gz",
        upload_path=Path(f"/work/uploads/{job_id}.nii.gz"),
        result_path=Path(f"/work/results/{job_id}.nii.gz"),
        created_at=created_at,
    )


def test_round_trip_and_state_changes(tmp_path: Path) -> None:
    store = JobDatabase.open(tmp_path, TTL_S)
    store.add(record("a"))
    got = store.get("a", now=1001)
    assert got == record("a")
    assert store.mark_running("a", now=1002)
    assert not store.mark_running("a", now=1003), "a running job must not be claimed twice"
    store.finish("a", summary_json='{"case": "case-a"}', now=1010)
    done = store.get("a", now=1011)
    assert done is not None
    assert (done.state, done.started_at, done.finished_at) == (JobStatus.done, 1002, 1010)
    assert done.expires_at == 1010 + TTL_S
    assert done.summary_json == '{"case": "case-a"}' and done.reason is None
    store.finish("a", reason="late", now=1020)  # a finished job keeps its outcome
    assert store.get("a", now=1021).state is JobStatus.done  # type: ignore[union-attr]
    assert store.get("missing") is None


def test_file_is_in_wal_mode(tmp_path: Path) -> None:
    JobDatabase.open(tmp_path, TTL_S).close()
    with sqlite3.connect(tmp_path / STORE_FILE_NAME) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_reopen_after_a_crash_fails_running_and_keeps_queued(tmp_path: Path) -> None:
    store = JobDatabase.open(tmp_path, TTL_S)
    for i, job_id in enumerate(["done", "running", "queued1", "queued2"]):
        store.add(record(job_id, created_at=1000 + i))
    store.mark_running("done", now=1005)
    store.finish("done", summary_json="{}", now=1006)
    store.mark_running("running", now=1007)
    # No close: the process "dies" here; a new one opens the same folder.
    reopened = JobDatabase.open(tmp_path, TTL_S, now=1050)
    failed = reopened.get("running", now=1051)
    assert failed is not None and failed.state is JobStatus.failed
    assert failed.reason == INTERRUPTED_REASON
    assert failed.expires_at == 1050 + TTL_S
    assert reopened.get("done", now=1051).state is JobStatus.done  # type: ignore[union-attr]
    assert [r.id for r in reopened.queued()] == ["queued1", "queued2"]
    assert reopened.counts() == {
        JobStatus.queued: 2,
        JobStatus.running: 0,
        JobStatus.done: 1,
        JobStatus.failed: 1,
    }


def test_expiry(tmp_path: Path) -> None:
    store = JobDatabase.open(tmp_path, TTL_S)
    store.add(record("old"))
    store.add(record("new"))
    store.add(record("waiting"))
    store.finish("old", reason="bad file", now=1000)
    store.finish("new", summary_json="{}", now=1050)
    assert store.get("old", now=1000 + TTL_S) is None, "expired: gone even before the cleanup runs"
    expired = store.expire(now=1000 + TTL_S)
    assert [r.id for r in expired] == ["old"]
    assert store.get("new", now=1000 + TTL_S) is not None
    assert store.get("waiting", now=10**9) is not None, "unfinished jobs never expire"
    assert store.known_paths() == {
        Path("/work/uploads/new.nii.gz"),
        Path("/work/results/new.nii.gz"),
        Path("/work/uploads/waiting.nii.gz"),
        Path("/work/results/waiting.nii.gz"),
    }


def test_only_one_claim_wins_across_stores(tmp_path: Path) -> None:
    first = JobDatabase.open(tmp_path, TTL_S)
    second = JobDatabase.open(tmp_path, TTL_S)  # e.g. a second process on the same folder
    for i in range(20):
        first.add(record(f"j{i}", created_at=i))
    wins: list[str] = []

    def claim_all(store: JobDatabase) -> None:
        for r in store.queued():
            if store.mark_running(r.id):
                wins.append(r.id)

    threads = [threading.Thread(target=claim_all, args=(s,)) for s in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == sorted(f"j{i}" for i in range(20))


def test_bad_arguments(tmp_path: Path) -> None:
    store = JobDatabase.open(tmp_path, TTL_S)
    store.add(record("a"))
    with pytest.raises(ValueError, match="either a summary or a reason"):
        store.finish("a")
    with pytest.raises(JobStoreError):
        store.add(record("a"))  # duplicate id


def test_not_a_store(tmp_path: Path) -> None:
    (tmp_path / STORE_FILE_NAME).write_bytes(b"this is not a database" * 100)
    with pytest.raises(JobStoreError, match=r"jobs\.sqlite3"):
        JobDatabase.open(tmp_path, TTL_S)


def test_read_only_folder_is_a_disk_problem(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "ro", 1024, read_only=True) as folder, pytest.raises(JobStoreError) as caught:
        JobDatabase.open(folder, TTL_S)
    assert caught.value.disk_problem


def test_full_disk_is_a_disk_problem(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "small", 256) as folder:
        store = JobDatabase.open(folder, TTL_S)
        with pytest.raises(JobStoreError) as caught:
            for i in range(100_000):
                store.add(record(f"{i:08d}" + "x" * 2000))
        assert caught.value.disk_problem
        assert "no space left" in str(caught.value)
        store.close()

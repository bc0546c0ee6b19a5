"""The server against stalled, slow and vanishing clients, full and read-only disks, SIGTERM and
crashes: real sockets on loopback, real processes (fake segmenter, no TensorFlow)."""

from __future__ import annotations

import gzip
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from flare_seg.service.api.jobs.sqlite import INTERRUPTED_REASON
from tests.service.api.conftest import make_settings, running, wait_until
from tests.service.api.live import (
    REPO,
    ServerProcess,
    live_server,
    multipart,
    read_status,
    request_head,
    stalled_upload,
)
from tests.service.conftest import FakeSegmenter, nifti1_header
from tests.service.diskfs import fill, small_tmpfs

pytestmark = pytest.mark.usefixtures("clean_env")
_RUN_CLI = "from flare_seg.cli import run; run()"


def _post(
    url: str, path: str, data: bytes, name: str = "case01_0000.nii.gz", timeout: float = 30
) -> httpx.Response:
    return httpx.post(f"{url}{path}", files={"file": (name, data, "application/gzip")}, timeout=timeout)


# ------------------------------------------------------------------------------ stalled uploads


def test_stalled_uploads_do_not_lock_out_other_clients(tmp_path: Path, ct_bytes: bytes) -> None:
    """queue_size + 1 uploads that stop after a few KB: a normal upload still gets 200 at once, and
    the stalled ones get 408 once the idle timeout has passed."""
    settings = make_settings(tmp_path, queue_size=2, upload_idle_timeout_s=1.5)
    with live_server(settings, FakeSegmenter()) as live:
        stalled = [stalled_upload(live.port, ct_bytes) for _ in range(settings.queue_size + 1)]
        time.sleep(0.3)
        start = time.monotonic()
        response = _post(live.url, "/segment", ct_bytes)
        assert response.status_code == 200, response.text
        assert time.monotonic() - start < settings.upload_idle_timeout_s
        for sock in stalled:
            assert read_status(sock, timeout_s=10) == 408
            sock.close()
        assert _post(live.url, "/jobs", ct_bytes).status_code == 202
        metrics = httpx.get(f"{live.url}/metrics").text
        assert f'flare_seg_upload_rejections_total{{reason="stalled"}} {len(stalled)}.0' in metrics
        assert "flare_seg_uploads_in_progress 0.0" in metrics


def test_408_says_why_and_frees_the_upload_slot(tmp_path: Path, ct_bytes: bytes) -> None:
    settings = make_settings(tmp_path, max_concurrent_uploads=1, upload_idle_timeout_s=1.0)
    with live_server(settings, FakeSegmenter()) as live:
        sock = stalled_upload(live.port, ct_bytes)
        time.sleep(0.3)
        busy = _post(live.url, "/segment", ct_bytes)
        assert busy.status_code == 503 and "upload(s) already in progress" in busy.json()["detail"]
        assert "retry-after" in busy.headers
        sock.settimeout(10)
        answer = b""
        while b"}" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        sock.close()
        assert answer.startswith(b"HTTP/1.1 408")
        assert b"no data for 1 s" in answer
        assert _post(live.url, "/segment", ct_bytes).status_code == 200


def test_a_trickling_upload_is_cut_off(tmp_path: Path, ct_bytes: bytes) -> None:
    """Bytes that keep coming, but under the minimum rate, are a 408 too (a slowloris body)."""
    settings = make_settings(tmp_path, upload_idle_timeout_s=0.5, upload_min_bytes_per_s=1_000_000)
    with live_server(settings, FakeSegmenter()) as live:
        payload = ct_bytes + os.urandom(50_000)  # long enough to last past the grace period
        head, tail = multipart(payload)
        body = head + payload + tail
        sock = socket.create_connection(("127.0.0.1", live.port), timeout=10)
        sock.sendall(request_head("/segment", len(body), live.port))
        status = None
        for i in range(0, len(body), 100):
            try:
                sock.sendall(body[i : i + 100])
            except OSError:
                break
            time.sleep(0.05)
            sock.setblocking(False)
            try:
                if sock.recv(16, socket.MSG_PEEK):
                    break
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
        status = read_status(sock, timeout_s=5)
        sock.close()
        assert status == 408


def test_sigterm_is_not_stretched_by_a_stalled_upload(tmp_path: Path, ct_bytes: bytes) -> None:
    server = ServerProcess({"FLARE_SEG_MODELS_DIR": str(tmp_path), "FLARE_SEG_WORK_DIR": str(tmp_path / "w")})
    sock = stalled_upload(server.port, ct_bytes)
    time.sleep(0.5)
    took_s = server.stop(signal.SIGTERM)
    status = read_status(sock, timeout_s=5)
    sock.close()
    assert took_s < 10, server.output
    assert status in (503, None), server.output
    assert "Traceback" not in server.output and " 500" not in server.output, server.output


# ------------------------------------------------------------------------------ vanishing clients


def test_abandoned_segment_requests_are_dropped(tmp_path: Path, ct_bytes: bytes) -> None:
    """Clients that upload and disconnect before their turn are not segmented, and do not keep
    others out."""
    gate = threading.Event()
    segmenter = FakeSegmenter(gate=gate)
    settings = make_settings(tmp_path, queue_size=2)
    with live_server(settings, segmenter) as live:
        first: dict[str, int] = {}
        runner = threading.Thread(
            target=lambda: first.update(status=_post(live.url, "/segment", ct_bytes).status_code)
        )
        runner.start()
        assert segmenter.started.wait(timeout=10)
        head, tail = multipart(ct_bytes)
        body = head + ct_bytes + tail
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", live.port)) as sock:
                sock.sendall(request_head("/segment", len(body), live.port) + body)
                time.sleep(0.3)  # uploaded, checked, queued
        metrics = httpx.get(f"{live.url}/metrics").text
        wait_until(lambda: "flare_seg_queue_depth 0.0" in httpx.get(f"{live.url}/metrics").text, 5)
        assert metrics  # the abandoned requests left the queue before the first one finished
        late: dict[str, int] = {}
        waiter = threading.Thread(
            target=lambda: late.update(status=_post(live.url, "/segment", ct_bytes).status_code)
        )
        waiter.start()
        time.sleep(0.3)
        gate.set()
        runner.join(timeout=20)
        waiter.join(timeout=20)
        assert first["status"] == 200 and late["status"] == 200
        assert segmenter.calls == 2, "the abandoned requests must not be segmented"


# ------------------------------------------------------------------------------ disks


def test_full_disk_is_507_naming_the_problem(tmp_path: Path, ct_bytes: bytes) -> None:
    with small_tmpfs(tmp_path / "small", 2048) as work:
        settings = make_settings(tmp_path, queue_size=2).model_copy(update={"work_dir": work})
        with live_server(settings, FakeSegmenter()) as live:
            fill(work, leave_bytes=0)
            payload = ct_bytes * (300_000 // len(ct_bytes) + 1)
            for path in ("/segment", "/jobs"):
                response = _post(live.url, path, payload)
                assert response.status_code == 507, response.text
                assert response.headers["content-type"] == "application/json"
                assert "no space left" in response.json()["detail"]
            (work / "filler.bin").unlink()
            assert _post(live.url, "/segment", ct_bytes).status_code == 200


def test_read_only_results_fail_the_job_with_the_reason(tmp_path: Path, ct_bytes: bytes) -> None:
    settings = make_settings(tmp_path)
    with live_server(settings, FakeSegmenter()) as live:
        results = tmp_path / "work" / "results"
        with small_tmpfs(results, 256, read_only=True):
            job = _post(live.url, "/jobs", ct_bytes).json()
            wait_until(lambda: httpx.get(f"{live.url}{job['status_url']}").json()["status"] == "failed")
            error = httpx.get(f"{live.url}{job['status_url']}").json()["error"]
        assert "read-only" in error and "internal error" not in error


def test_read_only_work_folder_at_startup_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "ro", 256, read_only=True) as work:
        done = subprocess.run(
            [sys.executable, "-c", _RUN_CLI, "serve", "--models-dir", str(tmp_path), "--port", "1"],
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "FLARE_SEG_WORK_DIR": str(work)},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "FLARE_SEG_WORK_DIR" in lines[0] and "read-only" in lines[0], done.stderr


def test_a_second_server_on_the_same_work_folder_is_refused(tmp_path: Path) -> None:
    server = ServerProcess({"FLARE_SEG_MODELS_DIR": str(tmp_path), "FLARE_SEG_WORK_DIR": str(tmp_path / "w")})
    try:
        done = subprocess.run(
            [sys.executable, "-c", _RUN_CLI, "serve", "--models-dir", str(tmp_path), "--port", "1"],
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "FLARE_SEG_WORK_DIR": str(tmp_path / "w")},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.stop()
    assert done.returncode == 2 and "in use by another flare-seg server" in done.stderr, done.stderr


# ------------------------------------------------------------------------------ restarts


def _status(url: str, job: dict[str, str]) -> dict[str, object]:
    info: dict[str, object] = httpx.get(f"{url}{job['status_url']}", timeout=10).json()
    return info


def test_jobs_survive_a_crash(tmp_path: Path, ct_bytes: bytes) -> None:
    env = {"FLARE_SEG_MODELS_DIR": str(tmp_path), "FLARE_SEG_WORK_DIR": str(tmp_path / "w")}
    server = ServerProcess(env, slow_s=60)
    done_job = _post(server.url, "/jobs", ct_bytes, "fast_0000.nii.gz").json()
    wait_until(lambda: _status(server.url, done_job)["status"] == "done")
    running = _post(server.url, "/jobs", ct_bytes, "slow_0000.nii.gz").json()
    queued = [_post(server.url, "/jobs", ct_bytes, f"q{i}_0000.nii.gz").json() for i in range(2)]
    wait_until(lambda: _status(server.url, running)["status"] == "running")
    server.stop(signal.SIGKILL)

    restarted = ServerProcess(env, slow_s=60)
    try:
        for job in queued:
            wait_until(lambda job=job: _status(restarted.url, job)["status"] == "done")
        failed = _status(restarted.url, running)
        assert failed["status"] == "failed" and failed["error"] == INTERRUPTED_REASON
        assert _status(restarted.url, done_job)["status"] == "done"
        result = httpx.get(f"{restarted.url}{done_job['result_url']}")
        assert result.status_code == 200 and result.headers["content-type"] == "application/gzip"
    finally:
        restarted.stop()


def test_sigterm_finishes_the_running_job_and_keeps_the_queued_ones(tmp_path: Path, ct_bytes: bytes) -> None:
    env = {"FLARE_SEG_MODELS_DIR": str(tmp_path), "FLARE_SEG_WORK_DIR": str(tmp_path / "w")}
    server = ServerProcess(env, slow_s=2)
    running = _post(server.url, "/jobs", ct_bytes, "slow_0000.nii.gz").json()
    queued = [_post(server.url, "/jobs", ct_bytes, f"slow{i}_0000.nii.gz").json() for i in range(2)]
    wait_until(lambda: _status(server.url, running)["status"] == "running")
    took_s = server.stop(signal.SIGTERM)
    assert took_s < 10, server.output  # the running job (2 s), not the queued ones
    assert "Traceback" not in server.output, server.output

    restarted = ServerProcess(env, slow_s=0)
    try:
        assert _status(restarted.url, running)["status"] == "done"
        for job in queued:
            wait_until(lambda job=job: _status(restarted.url, job)["status"] == "done")
            assert httpx.get(f"{restarted.url}{job['result_url']}").status_code == 200
    finally:
        restarted.stop()


# ---------------------------------------------------------------------- what /jobs checks before its 202


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1)


def test_jobs_refuses_before_202_what_segment_refuses(tmp_path: Path) -> None:
    """Absurd spacing, thin axes, a singular sform, an image over the byte limit: the same 4xx on
    /segment and on /jobs (never a 202 then a failed job)."""
    singular = bytearray(nifti1_header((16, 16, 16)))
    struct.pack_into("<hh", singular, 252, 0, 1)  # sform only,
    struct.pack_into("<12f", singular, 280, *([0.0] * 12))  # and singular
    cases = {
        "spacing 1e30": (_gz(nifti1_header((16, 16, 16), pixdim=(1e30, 1, 1)) + bytes(8192)), 422, "spacing"),
        "spacing 1e6": (_gz(nifti1_header((16, 16, 16), pixdim=(1, 1e6, 1)) + bytes(8192)), 422, "spacing"),
        "1 x 40 x 30": (_gz(nifti1_header((1, 40, 30)) + bytes(2400)), 422, "fewer than 4 voxels"),
        "40 x 1 x 30": (_gz(nifti1_header((40, 1, 30)) + bytes(2400)), 422, "fewer than 4 voxels"),
        "1 x 1 x 2": (_gz(nifti1_header((1, 1, 2)) + bytes(4)), 422, "fewer than 4 voxels"),
        "singular sform": (_gz(bytes(singular) + bytes(8192)), 422, "cannot read the NIfTI image"),
        "over the byte limit": (_gz(nifti1_header((4096, 4096, 89))), 413, "MiB of voxel data"),
    }
    with running(make_settings(tmp_path)) as client:
        for name, (data, status, words) in cases.items():
            for endpoint in ("/segment", "/jobs"):
                response = client.post(endpoint, files={"file": (f"{name}.nii.gz", data)})
                assert response.status_code == status, (name, endpoint, response.text)
                assert words in response.json()["detail"], (name, endpoint, response.text)


def test_a_start_removes_leftovers_but_keeps_what_jobs_name(tmp_path: Path, ct_bytes: bytes) -> None:
    settings = make_settings(tmp_path)
    with running(settings) as client:
        job = client.post("/jobs", files={"file": ("kept_0000.nii.gz", ct_bytes)}).json()
        wait_until(lambda: client.get(job["status_url"]).json()["status"] == "done")
    work = tmp_path / "work"
    (work / "uploads" / "cut-off.part").write_bytes(b"half an upload")
    (work / "results" / "orphan.nii.gz").write_bytes(b"no record names this")
    with running(settings) as client:
        assert not (work / "uploads" / "cut-off.part").exists()
        assert not (work / "results" / "orphan.nii.gz").exists()
        assert client.get(job["result_url"]).status_code == 200

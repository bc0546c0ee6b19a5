"""Load check on loopback: stalled uploads must not lock the server out, nor stretch a SIGTERM.

Starts ``serve`` in a subprocess (a fake segmenter: no models, no TensorFlow), measures one normal
case, then opens ``queue_size + 1`` uploads that send their headers and a few KB and stop, and
while they hang sends normal uploads one after another. Each must get 200 within the upload idle
timeout plus one case; the stalled ones must get 408 once the idle timeout has passed. Finally one
more stalled upload is opened and the server is sent SIGTERM: it must exit within a few seconds.

    python bench/stalled_uploads.py [--queue-size 4] [--idle-timeout-s 10] [--normal 3]

Bounded: ``queue_size + 2`` stalled connections, ``--normal`` uploads, about two idle timeouts
of wall time. Exit status 0 when every check holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.service.api.live import ServerProcess, read_status, stalled_upload  # noqa: E402
from tests.service.conftest import make_ct  # noqa: E402


def _post(url: str, data: bytes) -> tuple[int, float]:
    start = time.monotonic()
    response = httpx.post(f"{url}/segment", files={"file": ("case_0000.nii.gz", data)}, timeout=120)
    return response.status_code, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue-size", type=int, default=4)
    parser.add_argument("--idle-timeout-s", type=float, default=10.0)
    parser.add_argument(
        "--normal", type=int, default=3, help="normal uploads sent while the stalled ones hang"
    )
    args = parser.parse_args(argv)
    checks: list[tuple[str, bool]] = []
    with tempfile.TemporaryDirectory(prefix="flare-seg-load-") as tmp:
        ct_path = Path(tmp) / "ct.nii.gz"
        sitk.WriteImage(make_ct((96, 96, 40)), str(ct_path), useCompression=True)
        data = ct_path.read_bytes()
        env = {
            "FLARE_SEG_MODELS_DIR": tmp,
            "FLARE_SEG_WORK_DIR": f"{tmp}/work",
            "FLARE_SEG_QUEUE_SIZE": str(args.queue_size),
            "FLARE_SEG_UPLOAD_IDLE_TIMEOUT_S": str(args.idle_timeout_s),
            "FLARE_SEG_LOG_LEVEL": "warning",
        }
        server = ServerProcess(env, slow_s=0)
        status, case_s = _post(server.url, data)
        print(f"one case alone: {status} in {case_s:.2f} s")
        start = time.monotonic()
        stalled = [stalled_upload(server.port, data) for _ in range(args.queue_size + 1)]
        print(f"{len(stalled)} stalled uploads open (queue size {args.queue_size})")
        bound_s = args.idle_timeout_s + case_s + 1.0
        for i in range(args.normal):
            status, took_s = _post(server.url, data)
            ok = status == 200 and took_s <= bound_s
            checks.append(
                (f"normal upload {i + 1} while stalled: {status} in {took_s:.2f} s (bound {bound_s:.1f})", ok)
            )
        answers = [read_status(sock, timeout_s=args.idle_timeout_s + 10) for sock in stalled]
        answered_s = time.monotonic() - start
        for sock in stalled:
            sock.close()
        checks.append(
            (f"stalled uploads answered {answers} after {answered_s:.1f} s", all(a == 408 for a in answers))
        )
        last = stalled_upload(server.port, data)
        time.sleep(0.5)
        took_s = server.stop(signal.SIGTERM)
        last_status = read_status(last, timeout_s=5)
        last.close()
        clean = "Traceback" not in server.output and " 500 " not in server.output
        checks.append(
            (f"SIGTERM with a stalled upload open: exit in {took_s:.2f} s, it got {last_status}", took_s < 5)
        )
        checks.append(("no traceback and no 500 in the server log", clean))
    for line, ok in checks:
        print(f"{'ok  ' if ok else 'FAIL'} {line}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())

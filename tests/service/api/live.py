"""Real servers on loopback for the tests that need real sockets: stalled, vanishing and slow
clients, signals, crashes. ``live_server`` runs uvicorn in a thread; ``ServerProcess`` runs
``serve`` in a subprocess (for SIGTERM and SIGKILL)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn

from flare_seg.service.api import create_app
from flare_seg.service.io import CtVolume
from flare_seg.service.settings import Settings
from tests.service.conftest import FakeSegmenter

REPO = Path(__file__).resolve().parents[3]
BOUNDARY = "flaresegboundary"


@dataclass
class NamedSlowSegmenter(FakeSegmenter):
    """Sleeps ``slow_s`` seconds in every segmentation of an upload whose name starts with 'slow'."""

    slow_s: float = 3.0
    _names: list[str] = field(default_factory=list)

    def read_volume(
        self,
        path: Path,
        max_voxels: int,
        *,
        display_name: str | None = None,
        max_image_bytes: int | None = None,
    ) -> CtVolume:
        self._names.append(display_name or "")
        return super().read_volume(
            path, max_voxels, display_name=display_name, max_image_bytes=max_image_bytes
        )

    def segment_volume(self, volume: CtVolume, release_input: bool = False):  # type: ignore[no-untyped-def]
        if self._names and self._names[-1].startswith("slow"):
            time.sleep(self.slow_s)
        return super().segment_volume(volume, release_input)


def multipart(data: bytes, filename: str = "case01_0000.nii.gz") -> tuple[bytes, bytes]:
    """(head, tail) of a multipart body with ``data`` as the field ``file`` between them."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/gzip\r\n\r\n"
    ).encode()
    return head, f"\r\n--{BOUNDARY}--\r\n".encode()


def request_head(path: str, content_length: int, port: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {content_length}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n"
    ).encode()


def stalled_upload(port: int, data: bytes, path: str = "/segment", sent_bytes: int = 4096) -> socket.socket:
    """A connection that sends the headers and the first ``sent_bytes`` (at most half) of the body,
    then stops."""
    head, tail = multipart(data)
    body = head + data + tail
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(request_head(path, len(body), port) + body[: min(sent_bytes, len(body) // 2)])
    return sock


def read_status(sock: socket.socket, timeout_s: float = 30) -> int | None:
    """The status code the server answers on ``sock`` (None: closed without an answer)."""
    sock.settimeout(timeout_s)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except (TimeoutError, ConnectionResetError):
        return None
    if not data.startswith(b"HTTP/1.1 "):
        return None
    return int(data.split(b" ", 2)[1])


@dataclass
class LiveServer:
    port: int
    server: uvicorn.Server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def live_server(settings: Settings, segmenter: FakeSegmenter) -> Iterator[LiveServer]:
    """The app on a free loopback port, in a thread, until the block ends."""
    app = create_app(settings, lambda s: segmenter)
    sock = _bound_socket()
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    live = LiveServer(sock.getsockname()[1], server)
    try:
        wait_ready(live.url)
        yield live
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def wait_ready(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} never became ready")


_SERVE = """
import sys
from flare_seg.service.api import serve
from flare_seg.service.settings import load_settings
from tests.service.api.live import NamedSlowSegmenter
serve(load_settings(), lambda s: NamedSlowSegmenter(slow_s=float(sys.argv[1])))
"""


class ServerProcess:
    """``serve`` with a ``NamedSlowSegmenter`` in a subprocess (settings from ``env``)."""

    def __init__(self, env: dict[str, str], slow_s: float = 3.0) -> None:
        with _bound_socket() as probe:
            self.port = probe.getsockname()[1]
        full_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FLARE_SEG_")},
            "PYTHONPATH": str(REPO),
            "FLARE_SEG_HOST": "127.0.0.1",
            "FLARE_SEG_PORT": str(self.port),
            **env,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SERVE, str(slow_s)],
            cwd=REPO,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            wait_ready(self.url)
        except AssertionError:
            self.stop(signal.SIGKILL)
            raise AssertionError(f"the server did not start:\n{self.output}") from None
        self.output = ""

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> float:
        """Send ``sig`` and wait for the exit; returns the seconds it took (output in ``output``)."""
        start = time.monotonic()
        self.process.send_signal(sig)
        out, _ = self.process.communicate(timeout=timeout_s)
        self.output = out
        return time.monotonic() - start

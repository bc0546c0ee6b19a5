"""The container as far as this machine can check it without a Docker engine: the Dockerfile lints
clean, a real compose implementation accepts docker-compose.yml with what the services need, and
the image's own server command serves real requests over loopback and stops cleanly on SIGTERM.
(``predict.sh`` on a workspace laid out like the container's is tested in tests/service/test_cli.py.)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import SimpleITK as sitk

from flare_seg.geometry import Geometry
from tests.conftest import REPO, ct_image, oblique_direction


def _tool(name: str) -> str:
    """A command-line tool installed with the dev extras (next to this Python, or on PATH)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} not found: install the dev extras (pip install -e '.[dev]')"
    return found


def test_dockerfile_lints_clean() -> None:
    proc = subprocess.run(
        [_tool("hadolint"), "Dockerfile"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_file_is_valid_and_reserves_a_gpu(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLARE_SEG_")}
    proc = subprocess.run(
        [_tool("docker-compose"), "--profile", "batch", "config", "--format", "json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    services = json.loads(proc.stdout)["services"]
    assert set(services) == {"server", "batch"}
    for service in services.values():
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d["capabilities"] and d["driver"] == "nvidia" for d in devices)
    server, batch = services["server"], services["batch"]
    assert [(p["target"], p["published"]) for p in server["ports"]] == [(8000, "8000")]
    assert any("/ready" in part for part in server["healthcheck"]["test"])
    assert server["environment"]["FLARE_SEG_API_TOKEN"] == ""  # authentication off unless set
    assert batch["profiles"] == ["batch"] and batch["command"] == ["./predict.sh"]
    mounts = {v["target"]: v for v in batch["volumes"]}
    assert mounts["/workspace/inputs"].get("read_only") is True
    assert not mounts["/workspace/outputs"].get("read_only", False)


def _image_command(port: int) -> list[str]:
    """The Dockerfile's CMD (exec form), with only the port changed."""
    lines = [line for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("CMD ")]
    assert len(lines) == 1
    command = json.loads(lines[0].removeprefix("CMD "))
    assert command[:2] == ["flare-seg", "serve"] and "--port" in command
    command[command.index("--port") + 1] = str(port)
    return [_tool("flare-seg"), *command[1:]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_server_command_of_the_image_serves_and_stops_on_sigterm(tiny_models: Path, tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLARE_SEG_")},
        "FLARE_SEG_MODELS_DIR": str(tiny_models),
        "FLARE_SEG_WORK_DIR": str(tmp_path / "work"),
    }
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(_image_command(port), env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            deadline = time.monotonic() + 240
            while True:
                assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
                try:
                    if client.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the server did not become ready"
                time.sleep(0.5)

            path = tmp_path / "case_0000.nii.gz"
            sitk.WriteImage(ct_image(direction=oblique_direction(8.0)), str(path))
            response = client.post("/segment", files={"file": (path.name, path.read_bytes())})
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "application/gzip"
            mask_path = tmp_path / "case.nii.gz"
            mask_path.write_bytes(response.content)
            assert Geometry.of(sitk.ReadImage(str(mask_path))) == Geometry.of(sitk.ReadImage(str(path)))

            bad = client.post("/segment", files={"file": ("x_0000.nii.gz", b"not a nifti")})
            assert 400 <= bad.status_code < 500 and bad.json()["detail"]
            assert client.get("/health").status_code == 200

        server.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal: "terminated by SIGTERM" (143 in
        # a container) is the normal end, after the lifespan has finished.
        assert server.wait(timeout=60) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in (tmp_path / "server.log").read_text()
        assert not list((tmp_path / "work").glob("**/*.nii*"))  # uploads and results cleaned up
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        log.close()

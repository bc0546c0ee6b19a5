"""Tests for flare_seg.service.api.app: the app factory, its lifespan (model loading) and the docs.

With a fake segmenter (no TensorFlow, no models)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from flare_seg.service.api import create_app
from flare_seg.service.settings import Settings
from tests.service.api.conftest import (
    make_settings,
    upload,
    wait_until,
)
from tests.service.conftest import FakeSegmenter

pytestmark = pytest.mark.usefixtures("clean_env")


def test_import_creates_no_app_or_settings() -> None:
    """Importing the API with a broken environment succeeds: nothing is built at import time."""
    env = {**os.environ, "FLARE_SEG_PORT": "not-a-port", "FLARE_SEG_MODELS_DIR": "/nonexistent"}
    code = (
        "import fastapi, flare_seg.service.api as api, flare_seg.service.settings as s;"
        "assert not [v for v in vars(api).values() if isinstance(v, (fastapi.FastAPI, s.Settings))]"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


def test_ready_503_before_load_and_200_after(tmp_path: Path, ct_bytes: bytes) -> None:
    loaded = threading.Event()
    segmenter = FakeSegmenter()

    def slow_factory(settings: Settings) -> FakeSegmenter:
        assert loaded.wait(timeout=20)
        return segmenter

    app = create_app(make_settings(tmp_path), slow_factory)
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        response = client.get("/ready")
        assert response.status_code == 503 and response.json()["status"] == "loading"
        busy = client.post("/segment", **upload(ct_bytes))
        assert busy.status_code == 503 and "loading" in busy.json()["detail"]
        assert "retry-after" in busy.headers
        assert client.get("/models").status_code == 503

        loaded.set()
        wait_until(lambda: client.get("/ready").status_code == 200)
        assert client.get("/ready").json() == {"status": "ready", "model_version": "fake-1.0", "detail": None}
        assert segmenter.warmed_up


def test_load_failure_reported(tmp_path: Path) -> None:
    failures: list[BaseException] = []

    def broken_factory(settings: Settings) -> FakeSegmenter:
        raise FileNotFoundError("manifest.json missing")

    app = create_app(make_settings(tmp_path), broken_factory, on_load_failure=failures.append)
    with TestClient(app) as client:
        wait_until(lambda: bool(failures))
        response = client.get("/ready")
        assert response.status_code == 503
        assert response.json()["status"] == "failed" and "manifest.json missing" in response.json()["detail"]
        assert client.get("/health").status_code == 200
    assert isinstance(failures[0], FileNotFoundError)


def test_docs_and_openapi(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    for path in ("/segment", "/jobs", "/jobs/{job_id}", "/jobs/{job_id}/result", "/health", "/ready"):
        assert path in spec["paths"]
    assert "multipart/form-data" in spec["paths"]["/segment"]["post"]["requestBody"]["content"]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_their_assets_from_this_server(client: TestClient, page: str) -> None:
    """No CDN: every script and stylesheet of the docs pages is a local path this server answers."""
    html = client.get(page).text
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html) + re.findall(r"url: *'([^']+)'", html)
    assert urls and not [u for u in urls if "://" in u or u.startswith("//")], urls
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts, html
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, url
        if url.endswith(".js"):
            assert len(response.content) > 100_000  # the real bundle, not a placeholder
    assert "fonts.googleapis" not in html


def test_no_api_module_creates_an_app_or_settings_at_import() -> None:
    """Every module of the package imports with a broken environment and holds no app or settings."""
    env = {**os.environ, "FLARE_SEG_PORT": "not-a-port", "FLARE_SEG_MODELS_DIR": "/nonexistent"}
    code = (
        "import importlib, pkgutil, fastapi, flare_seg.service.api as api, flare_seg.service.settings as s;"
        "names = [m.name for m in pkgutil.walk_packages(api.__path__, api.__name__ + '.')];"
        "assert len(names) >= 10, names;"
        "mods = [importlib.import_module(n) for n in names];"
        "bad = [(m.__name__, k) for m in mods for k, v in vars(m).items()"
        " if isinstance(v, (fastapi.FastAPI, s.Settings))];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)

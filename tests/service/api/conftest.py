"""Helpers and fixtures for the API tests: settings in a temporary folder, a running app with a fake
segmenter, multipart uploads."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient

from flare_seg.service.api import Service, create_app
from flare_seg.service.settings import Settings, load_settings
from tests.service.conftest import FakeSegmenter


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    return load_settings(models_dir=tmp_path, work_dir=tmp_path / "work", **overrides)


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


@contextmanager
def running(
    settings: Settings, segmenter: FakeSegmenter | None = None, wait_ready: bool = True, **kwargs: Any
) -> Iterator[TestClient]:
    segmenter = segmenter or FakeSegmenter()
    app = create_app(settings, lambda s: segmenter, **kwargs)
    with TestClient(app) as client:
        if wait_ready:
            wait_until(lambda: client.get("/ready").status_code == 200)
        yield client


def upload(data: bytes, filename: str = "case01_0000.nii.gz") -> dict[str, Any]:
    return {"files": {"file": (filename, data, "application/gzip")}}


def service_of(client: TestClient) -> Service:
    service: Service = client.app.state.service  # type: ignore[attr-defined]
    return service


@pytest.fixture
def ct_bytes(ct_file: Path) -> bytes:
    return ct_file.read_bytes()


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with running(make_settings(tmp_path)) as c:
        yield c


def read_mask(data: bytes, tmp_path: Path) -> sitk.Image:
    path = tmp_path / "answer.nii.gz"
    path.write_bytes(data)
    return sitk.ReadImage(str(path))

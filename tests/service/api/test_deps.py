"""Tests for flare_seg.service.api.deps: the API token.

With a fake segmenter (no TensorFlow, no models)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.service.api.conftest import (
    make_settings,
    running,
    upload,
)

pytestmark = pytest.mark.usefixtures("clean_env")


def test_auth(tmp_path: Path, ct_bytes: bytes) -> None:
    with running(make_settings(tmp_path, api_token="t0ken")) as client:
        public = ("/health", "/ready", "/docs", "/redoc", "/docs-static/swagger-ui.css", "/openapi.json")
        for path in public:
            assert client.get(path).status_code == 200, path
        protected = (("GET", "/metrics"), ("GET", "/models"), ("GET", "/jobs/x"), ("POST", "/segment"))
        for method, path in protected:
            response = client.request(method, path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"] == "Bearer"
            assert "token" in response.json()["detail"]
        wrong = client.post("/segment", headers={"Authorization": "Bearer nope"}, **upload(ct_bytes))
        assert wrong.status_code == 401
        basic = client.get("/models", headers={"Authorization": "Basic dTpw"})
        assert basic.status_code == 401
        good = {"Authorization": "Bearer t0ken"}
        assert client.post("/segment", headers=good, **upload(ct_bytes)).status_code == 200
        assert client.get("/metrics", headers=good).status_code == 200


def test_auth_off_by_default(client: TestClient) -> None:
    assert client.get("/models").status_code == 200

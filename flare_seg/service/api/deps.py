"""Route dependencies: the running service and the API token check (``Annotated`` for reuse)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from flare_seg.service.api.errors import http_error
from flare_seg.service.api.service import Service
from flare_seg.service.settings import Settings


def get_service(request: Request) -> Service:
    """The app's service (set by its lifespan), or 503 while the app starts."""
    service: Service | None = getattr(request.app.state, "service", None)
    if service is None:
        raise http_error(503, "the server is starting", headers={"Retry-After": "5"})
    return service


ServiceDep = Annotated[Service, Depends(get_service)]
_bearer = HTTPBearer(auto_error=False, description="the server's API token (FLARE_SEG_API_TOKEN)")
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def require_token(request: Request, credentials: BearerDep) -> None:
    """401 unless ``Authorization: Bearer <token>`` matches the configured token (when one is set)."""
    settings: Settings = request.app.state.settings
    if settings.api_token is None:
        return
    expected = settings.api_token.get_secret_value().encode()
    given = credentials.credentials.encode() if credentials is not None else b""
    if credentials is None or not secrets.compare_digest(given, expected):
        raise http_error(
            401,
            "missing or invalid API token (send 'Authorization: Bearer <token>')",
            {"WWW-Authenticate": "Bearer"},
        )

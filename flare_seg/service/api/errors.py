"""Error answers: the HTTPException helper, the exception handlers and the documented error responses.

Every error answer is a JSON object with a one-sentence ``detail`` (``ErrorBody``).
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from flare_seg.service.api.schemas import ErrorBody
from flare_seg.service.io import InputError

# What each error status means, for the OpenAPI ``responses`` of the routes.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "malformed request",
        401: "missing or invalid API token",
        413: "upload over max_upload_mb, or an image over max_voxels / 4096 voxels per axis",
        415: "not multipart/form-data, or the file is not a NIfTI image",
        422: "missing or empty 'file' field, truncated or corrupt file, not a 3D scalar image",
        503: "models not loaded yet, or the queue is full (see Retry-After)",
    }.items()
}


def http_error(status: int, detail: str, headers: dict[str, str] | None = None) -> HTTPException:
    return HTTPException(status_code=status, detail=detail, headers=headers)


async def input_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """``InputError`` (a bad image) -> its status code (4xx) with its message."""
    assert isinstance(exc, InputError)
    return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """A bad parameter -> 422 whose ``detail`` names each bad parameter; ``errors`` has pydantic's list."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    messages = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        where = f"{loc[0]} parameter '{'.'.join(loc[1:])}'" if len(loc) > 1 else ".".join(loc) or "request"
        messages.append(f"{where}: {error.get('msg', 'invalid')}")
    return JSONResponse({"detail": "; ".join(messages), "errors": jsonable_encoder(errors)}, status_code=422)

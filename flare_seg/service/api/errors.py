"""Error answers: the HTTPException helper, the exception handlers and the documented error responses.

Every error answer is a JSON object with a one-sentence ``detail`` (``ErrorBody``).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from flare_seg.service.api.jobs.sqlite import JobStoreError
from flare_seg.service.api.schemas import ErrorBody
from flare_seg.service.io import InputError
from flare_seg.service.storage import StorageError

logger = logging.getLogger(__name__)

# What each error status means, for the OpenAPI ``responses`` of the routes.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "malformed request",
        408: "the upload stalled or was too slow (see upload_idle_timeout_s, upload_min_bytes_per_s)",
        401: "missing or invalid API token",
        413: "upload over max_upload_mb, or an image over max_voxels, max_image_mb or 4096 voxels per axis",
        415: "not multipart/form-data, or the file is not a NIfTI image",
        422: "missing or empty 'file' field, truncated or corrupt file, not a 3D scalar image, or a grid "
        "that is no CT (an axis under 4 voxels, a spacing outside 0.01-50 mm, a singular orientation)",
        503: "models not loaded yet, the queue or the upload slots are full, or the server is shutting "
        "down (see Retry-After)",
        507: "the server's work folder cannot take the upload or the result (disk full or read-only)",
    }.items()
}


def http_error(status: int, detail: str, headers: dict[str, str] | None = None) -> HTTPException:
    return HTTPException(status_code=status, detail=detail, headers=headers)


async def input_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """``InputError`` (a bad image) -> its status code (4xx) with its message."""
    assert isinstance(exc, InputError)
    return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)


async def storage_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """``StorageError`` (the work folder is full or read-only) -> 507 naming the disk problem."""
    assert isinstance(exc, StorageError)
    return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)


async def job_store_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """``JobStoreError`` -> 507 when the disk is the cause, else 500; never a traceback to the client."""
    assert isinstance(exc, JobStoreError)
    if exc.disk_problem:
        logger.error("%s", exc)
        return JSONResponse(
            {"detail": f"the job could not be recorded: {exc.client_reason}"}, status_code=507
        )
    logger.error("job store failure: %s", exc)
    return JSONResponse({"detail": "internal error: the job store failed"}, status_code=500)


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

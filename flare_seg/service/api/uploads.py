"""Uploads: checks on the request headers, and streaming the multipart field ``file`` to disk.

Uploads are streamed to disk under uuid names, never held in memory; the size limit is enforced
while streaming. The client's file name is only recorded (for messages and the case name), never
used in a path.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import anyio.to_thread
from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from flare_seg.service.api.errors import http_error
from flare_seg.service.guards import BodyPace, ServerDraining, UploadStalled, paced
from flare_seg.service.io import GZIP_MAGIC
from flare_seg.service.storage import is_disk_problem, storage_error

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

UPLOAD_FIELD = "file"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive
_MULTIPART_OVERHEAD_BYTES = 64 * 1024  # boundaries, part headers and small form fields around the file
_WRITE_BUFFER_BYTES = 1 << 20

_EMPTY_BODY = f"empty request body; expected a multipart upload in the form field '{UPLOAD_FIELD}'"


@dataclass(frozen=True)
class Upload:
    """An upload stored on disk under a uuid name (``path`` ends in .nii.gz, .nii or .zip by content)."""

    path: Path
    client_filename: str | None
    size_bytes: int

    @property
    def display_name(self) -> str:
        """The client's file name, safe to show in messages (base name only, printable, bounded)."""
        return display_name(self.client_filename)

    @property
    def case(self) -> str:
        return case_name(self.client_filename)

    @property
    def is_zip(self) -> bool:
        """A .zip (of DICOM files), recognized by its content."""
        return self.path.suffix == ".zip"


def display_name(client_filename: str | None) -> str:
    """The base name of a client's file name, printable and at most 200 characters; 'upload' if none."""
    base = re.split(r"[\\/]", client_filename or "")[-1]
    base = "".join(ch for ch in base if ch.isprintable())[:200]
    return base or "upload"


def case_name(client_filename: str | None) -> str:
    """A safe case name from a client's file name: base name, no .nii/.nii.gz, no nnU-Net ``_0000``
    channel suffix, only ``[A-Za-z0-9._-]``; 'mask' when nothing is left. Never used as a path."""
    base = re.split(r"[\\/]", client_filename or "")[-1]
    for ext in (".nii.gz", ".nii", ".gz", ".zip"):
        if base.lower().endswith(ext):
            base = base[: -len(ext)]
            break
    base = re.sub(r"_0000$", "", base)
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._-")[:128]
    return base or "mask"


def check_upload_headers(request: Request, max_upload_bytes: int) -> None:
    """Reject from the headers alone (before taking a queue place or reading the body).

    Raises:
        HTTPException: 400 bad Content-Length, 413 over the limit, 415 not multipart, 422 empty.
    """
    length_header = request.headers.get("content-length")
    if length_header is not None:
        try:
            length = int(length_header)
        except ValueError:
            raise http_error(400, f"invalid Content-Length header {length_header!r}") from None
        if length == 0:
            raise http_error(422, _EMPTY_BODY)
        if length > max_upload_bytes + _MULTIPART_OVERHEAD_BYTES:
            raise http_error(413, f"upload of {length} bytes is over the limit of {max_upload_bytes} bytes")
    media_type, _ = parse_options_header(request.headers.get("content-type", ""))
    if media_type != b"multipart/form-data":
        shown = media_type.decode("latin-1") or "none"
        raise http_error(
            415,
            f"expected Content-Type multipart/form-data with the image in the form field '{UPLOAD_FIELD}', "
            f"got {shown}",
        )


async def receive_upload(
    request: Request,
    dest_dir: Path,
    max_upload_bytes: int,
    *,
    pace: BodyPace | None = None,
    draining: asyncio.Event | None = None,
) -> Upload:
    """Stream the multipart form field ``file`` to ``dest_dir/<uuid>.nii[.gz]``, 1 MiB writes at a time.

    Stops reading as soon as the size limit is passed, when the body stalls or crawls (``pace``),
    or when the server begins to shut down (``draining``); on any error the partial file is deleted.

    Raises:
        HTTPException: 400 malformed or interrupted body, 408 a stalled or too slow body, 413 over
            the limit, 422 empty or missing field, 503 the server is shutting down.
        StorageError: the work folder cannot take the file (full, read-only): 507.
    """
    receiver = _FileFieldReceiver(_boundary(request), dest_dir / f"{uuid.uuid4().hex}.part", max_upload_bytes)
    try:
        async for chunk in paced(request.stream(), pace or BodyPace(), draining):
            await receiver.feed(chunk)
        receiver.check_complete()
    except ClientDisconnect:
        receiver.discard()
        raise http_error(400, "the client disconnected during the upload") from None
    except UploadStalled as e:
        receiver.discard()
        raise http_error(408, str(e), headers={"Connection": "close"}) from None
    except ServerDraining as e:
        receiver.discard()
        raise http_error(503, str(e), headers={"Connection": "close", "Retry-After": "10"}) from None
    except OSError as e:
        receiver.discard()
        if is_disk_problem(e):
            raise storage_error(e) from None
        raise
    except BaseException:
        receiver.discard()
        raise
    finally:
        receiver.close()
    return receiver.upload()


def _boundary(request: Request) -> bytes:
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise http_error(400, "malformed multipart/form-data request: no boundary in Content-Type")
    return boundary


class _MultipartEvents:
    """Collects python-multipart's synchronous callbacks as events to handle asynchronously."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self._field = bytearray()
        self._value = bytearray()
        self._headers: dict[bytes, bytes] = {}

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_part_data": self._part_data,
            "on_part_end": lambda: self.events.append(("part_end", None)),
            "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": lambda: self.events.append(("headers", dict(self._headers))),
            "on_end": lambda: self.events.append(("end", None)),
        }

    def _part_begin(self) -> None:
        self._headers = {}

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self.events.append(("data", data[start:end]))

    def _header_end(self) -> None:
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def pop(self) -> list[tuple[str, Any]]:
        events, self.events = self.events, []
        return events


class _FileFieldReceiver:
    """The state of one multipart body being received: the file part goes to ``part_path``, other
    fields are counted (and dropped). Every size limit is checked as the bytes arrive."""

    def __init__(self, boundary: bytes, part_path: Path, max_upload_bytes: int) -> None:
        self._events = _MultipartEvents()
        self._parser = MultipartParser(boundary, self._events.callbacks())
        self.part_path = part_path
        self._max_upload_bytes = max_upload_bytes
        self._body_bytes = self._file_bytes = self._other_bytes = 0
        self._client_filename: str | None = None
        self._found = self._in_file = self._ended = False
        self._buffer = bytearray()
        self._handle: BinaryIO | None = None
        self._handlers: dict[str, Callable[[Any], Awaitable[None]]] = {
            "headers": self._on_part_headers,
            "data": self._on_data,
            "part_end": self._on_part_end,
            "end": self._on_end,
        }

    def _over_limit(self) -> Exception:
        return http_error(413, f"upload is over the limit of {self._max_upload_bytes} bytes")

    async def feed(self, chunk: bytes) -> None:
        """Parse one chunk of the body and handle what it completes."""
        self._body_bytes += len(chunk)
        if self._body_bytes > self._max_upload_bytes + _MULTIPART_OVERHEAD_BYTES:
            raise self._over_limit()
        try:
            self._parser.write(chunk)
        except FormParserError as e:
            raise http_error(400, f"malformed multipart/form-data body ({e})") from None
        for kind, payload in self._events.pop():
            await self._handlers[kind](payload)

    async def _on_part_headers(self, headers: dict[bytes, bytes]) -> None:
        _, options = parse_options_header(headers.get(b"content-disposition", b""))
        if options.get(b"name") != UPLOAD_FIELD.encode():
            if b"filename" in options:  # a file in another field: say so now, whatever its size
                field = options.get(b"name", b"").decode("utf-8", "replace")[:100]
                raise http_error(
                    422,
                    f"missing form field '{UPLOAD_FIELD}': the file came in the field {field!r}; "
                    f"send it as '{UPLOAD_FIELD}' (curl -F {UPLOAD_FIELD}=@ct.nii.gz)",
                )
            return
        if self._found:
            raise http_error(422, f"more than one '{UPLOAD_FIELD}' field; upload one image")
        self._found = self._in_file = True
        raw_name = options.get(b"filename")
        self._client_filename = raw_name.decode("utf-8", "replace") if raw_name is not None else None
        self._handle = await anyio.to_thread.run_sync(open, self.part_path, "wb")

    async def _on_data(self, payload: bytes) -> None:
        if not self._in_file:
            self._other_bytes += len(payload)
            if self._other_bytes > _MULTIPART_OVERHEAD_BYTES:
                raise http_error(413, "form fields other than the file are too large")
            return
        self._file_bytes += len(payload)
        if self._file_bytes > self._max_upload_bytes:
            raise self._over_limit()
        self._buffer.extend(payload)
        if len(self._buffer) >= _WRITE_BUFFER_BYTES:
            await self._flush()

    async def _on_part_end(self, _: None) -> None:
        if self._in_file:
            self._in_file = False
            await self._flush()
            self.close()

    async def _on_end(self, _: None) -> None:
        self._ended = True

    async def _flush(self) -> None:
        """Write the buffered file bytes off the event loop."""
        assert self._handle is not None
        await anyio.to_thread.run_sync(self._handle.write, bytes(self._buffer))
        self._buffer.clear()

    def check_complete(self) -> None:
        """Once the body has ended: 422 empty body, 400 cut short, 422 no file field or an empty file."""
        if self._body_bytes == 0:
            raise http_error(422, _EMPTY_BODY)
        if not self._ended:
            raise http_error(400, "incomplete multipart/form-data body (was the upload interrupted?)")
        if not self._found:
            raise http_error(
                422,
                f"missing form field '{UPLOAD_FIELD}' (the .nii.gz or .nii image, or the .zip of a "
                "DICOM series, to segment)",
            )
        if self._file_bytes == 0:
            raise http_error(422, f"{display_name(self._client_filename)}: the uploaded file is empty")

    def close(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            handle.close()

    def discard(self) -> None:
        """Close and delete the partial file (a close that fails on a full disk is ignored)."""
        with contextlib.suppress(OSError):
            self.close()
        self.part_path.unlink(missing_ok=True)

    def upload(self) -> Upload:
        """The received file, renamed by its content so that SimpleITK reads it (it picks gzip by
        the suffix); a zip archive (of DICOM files) gets .zip."""
        with open(self.part_path, "rb") as f:
            head = f.read(4)
        suffix = ".zip" if head in ZIP_MAGICS else ".nii.gz" if head[:2] == GZIP_MAGIC else ".nii"
        path = self.part_path.with_suffix(suffix)
        self.part_path.rename(path)
        return Upload(path=path, client_filename=self._client_filename, size_bytes=self._file_bytes)

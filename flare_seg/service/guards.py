"""What keeps slow, stalled, vanished or late clients from holding the server's places.

* ``UploadSlots``: a cap on uploads in progress, separate from the inference queue (which a
  request joins only once its upload has arrived and been checked).
* ``paced``: reads a request body chunk by chunk, failing with ``UploadStalled`` (the server answers
  408) when no chunk comes for ``idle_timeout_s`` or the average rate falls under a minimum after
  a grace period, and with ``ServerDraining`` (503) as soon as the server begins to shut down, so
  that a stalled upload neither keeps a place nor stretches a SIGTERM.
* ``wait_for_disconnect``: returns when the client of a request goes away, so that work it queued
  and that has not started can be dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.types import Receive

_DRAIN_POLL_S = 0.25


class UploadStalled(Exception):
    """The client stopped sending the body, or sends it too slowly; the message says which."""

    status_code = 408


class ServerDraining(Exception):
    """The server is shutting down and takes no new work."""

    status_code = 503


@dataclass(frozen=True)
class BodyPace:
    """How slowly a request body may arrive.

    ``idle_timeout_s``: the longest wait for the next chunk. ``min_bytes_per_s``: the least
    average rate once ``grace_s`` seconds have passed (0: no minimum).
    """

    idle_timeout_s: float = 30.0
    min_bytes_per_s: float = 0.0
    grace_s: float = 30.0


class UploadSlots:
    """At most ``capacity`` uploads in progress at once (thread safe)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._in_use = 0

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._in_use

    def try_acquire(self) -> bool:
        with self._lock:
            if self._in_use >= self.capacity:
                return False
            self._in_use += 1
            return True

    def release(self) -> None:
        with self._lock:
            if self._in_use <= 0:
                raise RuntimeError("released an upload slot that was not taken")
            self._in_use -= 1


async def paced(
    chunks: AsyncIterator[bytes], pace: BodyPace, draining: asyncio.Event | None = None
) -> AsyncIterator[bytes]:
    """The chunks of ``chunks``, each awaited for at most ``pace.idle_timeout_s`` seconds.

    ``draining`` is looked at every ``_DRAIN_POLL_S`` seconds while waiting for a chunk and before
    each one.

    Raises:
        UploadStalled: no chunk for ``idle_timeout_s`` seconds, or the average rate is under
            ``min_bytes_per_s`` after ``grace_s`` seconds.
        ServerDraining: ``draining`` is set.
    """
    start = time.monotonic()
    received = 0
    iterator = aiter(chunks)
    while True:
        _check_draining(draining)
        next_chunk: asyncio.Future[bytes] = asyncio.ensure_future(anext(iterator))
        waited_from = time.monotonic()
        try:
            while not next_chunk.done():
                left = pace.idle_timeout_s - (time.monotonic() - waited_from)
                if left <= 0:
                    raise UploadStalled(
                        f"the upload stalled: no data for {pace.idle_timeout_s:g} s after {received} bytes"
                    )
                await asyncio.wait({next_chunk}, timeout=min(left, _DRAIN_POLL_S))
                _check_draining(draining)
        finally:
            if not next_chunk.done():
                next_chunk.cancel()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await next_chunk
        try:
            chunk = next_chunk.result()
        except StopAsyncIteration:
            return
        received += len(chunk)
        elapsed = time.monotonic() - start
        if pace.min_bytes_per_s > 0 and elapsed > pace.grace_s and received < pace.min_bytes_per_s * elapsed:
            raise UploadStalled(
                f"the upload is too slow: {received} bytes in {elapsed:.0f} s, under the minimum "
                f"of {pace.min_bytes_per_s:g} bytes/s"
            )
        yield chunk


def _check_draining(draining: asyncio.Event | None) -> None:
    if draining is not None and draining.is_set():
        raise ServerDraining("the server is shutting down; send the request again later")


async def wait_for_disconnect(receive: Receive) -> None:
    """Return once the client has gone (``http.disconnect``). Call only after the whole body has
    been read: it consumes the request's remaining messages."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return

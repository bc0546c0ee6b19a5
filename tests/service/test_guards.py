"""Tests for flare_seg.service.guards: upload slots, body pacing, disconnect watching."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from flare_seg.service.guards import (
    BodyPace,
    ServerDraining,
    UploadSlots,
    UploadStalled,
    paced,
    wait_for_disconnect,
)


async def _chunks(delays_s: list[float], size: int = 1000) -> AsyncIterator[bytes]:
    for delay in delays_s:
        await asyncio.sleep(delay)
        yield b"x" * size


async def _collect(chunks: AsyncIterator[bytes]) -> int:
    return sum([len(c) async for c in chunks])


def test_chunks_pass_through() -> None:
    got = asyncio.run(_collect(paced(_chunks([0, 0.01, 0]), BodyPace(idle_timeout_s=1))))
    assert got == 3000


def test_a_stalled_body_times_out() -> None:
    start = time.monotonic()
    with pytest.raises(UploadStalled, match=r"no data for 0.3 s after 2000 bytes"):
        asyncio.run(_collect(paced(_chunks([0, 0, 60]), BodyPace(idle_timeout_s=0.3))))
    assert time.monotonic() - start < 2


def test_a_trickle_under_the_minimum_rate_fails_after_the_grace() -> None:
    pace = BodyPace(idle_timeout_s=1, min_bytes_per_s=100_000, grace_s=0.2)
    with pytest.raises(UploadStalled, match="too slow"):
        asyncio.run(_collect(paced(_chunks([0.05] * 100, size=100), pace)))


def test_draining_ends_a_wait_at_once() -> None:
    async def scenario() -> float:
        draining = asyncio.Event()
        asyncio.get_running_loop().call_later(0.2, draining.set)
        start = time.monotonic()
        with pytest.raises(ServerDraining):
            await _collect(paced(_chunks([0, 60]), BodyPace(idle_timeout_s=30), draining))
        return time.monotonic() - start

    assert asyncio.run(scenario()) < 1.5


def test_upload_slots() -> None:
    slots = UploadSlots(2)
    assert slots.try_acquire() and slots.try_acquire()
    assert not slots.try_acquire()
    slots.release()
    assert slots.in_use == 1 and slots.try_acquire()
    slots.release()
    slots.release()
    with pytest.raises(RuntimeError):
        slots.release()


def test_wait_for_disconnect() -> None:
    messages = [{"type": "http.request", "body": b"", "more_body": False}, {"type": "http.disconnect"}]

    async def receive() -> dict[str, object]:
        await asyncio.sleep(0.01)
        return messages.pop(0)

    asyncio.run(asyncio.wait_for(wait_for_disconnect(receive), 2))  # type: ignore[arg-type]
    assert messages == []

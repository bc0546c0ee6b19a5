"""The single inference worker and its bounded queue.

* One inference at a time: a single worker thread runs the segmenter (it is not thread safe, and
  one model per device is all the memory budget allows).
* At most ``queue_size`` requests may wait for it; a request takes its place (a ``Ticket``) once
  its upload has arrived and been checked, and keeps it while waiting and running.
* Once told to stop taking work (``stop_taking``, when the server begins to shut down), the task
  running finishes; tasks that have not started end at once with ``WorkerDraining``.
"""

from __future__ import annotations

import concurrent.futures
import math
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from flare_seg.service.api.metrics import Metrics

_DEFAULT_RETRY_AFTER_S = 30
_MAX_RETRY_AFTER_S = 600

T = TypeVar("T")


class WorkerDraining(Exception):
    """The worker takes no new work: the server is shutting down."""


class Ticket:
    """A place in the inference queue, from admission (after the upload) until the work is done."""

    def __init__(self, worker: InferenceWorker) -> None:
        self._worker = worker
        self._released = False
        self.submitted = False

    def release(self) -> None:
        """Give the place back (idempotent)."""
        self._worker._release(self)

    def release_unless_submitted(self) -> None:
        """Give the place back unless work was submitted (then it is released when the work ends)."""
        if not self.submitted:
            self.release()


class InferenceWorker:
    """One thread that runs every model call, and a bounded count of requests allowed to wait for it."""

    def __init__(self, queue_size: int, metrics: Metrics) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="flare-seg-inference"
        )
        self._lock = threading.Lock()
        self._capacity = queue_size + 1  # the one running plus queue_size waiting
        self._admitted = 0
        self._running = 0
        self._mean_task_s: float | None = None
        self._metrics = metrics
        self._draining = threading.Event()

    def try_admit(self) -> Ticket | None:
        """A ticket, or None when ``queue_size`` requests already wait (and one runs)."""
        with self._lock:
            if self._admitted >= self._capacity:
                return None
            self._admitted += 1
            self._update_gauges()
        return Ticket(self)

    def has_room(self) -> bool:
        """Whether ``try_admit`` would give a ticket now (a hint: nothing is reserved)."""
        with self._lock:
            return self._admitted < self._capacity

    def admit_recovered(self) -> Ticket:
        """A ticket for a job queued before a restart, even past ``queue_size``: accepted work is
        never refused."""
        with self._lock:
            self._admitted += 1
            self._update_gauges()
        return Ticket(self)

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def stop_taking(self) -> None:
        """From now on, tasks that start end at once with ``WorkerDraining`` (the running one finishes)."""
        self._draining.set()

    def _release(self, ticket: Ticket) -> None:
        with self._lock:
            if ticket._released:
                return
            ticket._released = True
            self._admitted -= 1
            self._update_gauges()

    def _update_gauges(self) -> None:
        self._metrics.queue_depth.set(max(0, self._admitted - self._running))
        self._metrics.in_progress.set(self._running)

    def retry_after_s(self) -> int:
        """A guess at when a place frees up: the mean task time times the tasks ahead, in seconds."""
        with self._lock:
            if self._mean_task_s is None:
                return _DEFAULT_RETRY_AFTER_S
            return int(min(_MAX_RETRY_AFTER_S, max(1, math.ceil(self._mean_task_s * self._admitted))))

    def call(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run ``fn`` on the worker thread, outside the queue accounting (model loading)."""
        return self._executor.submit(fn)

    def run(self, ticket: Ticket, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run ``fn`` on the worker thread for ``ticket``; the ticket is released when ``fn`` ends
        (or when the future is cancelled before it starts)."""
        ticket.submitted = True

        def task() -> T:
            if self._draining.is_set():
                raise WorkerDraining("the server is shutting down")
            with self._lock:
                self._running += 1
                self._update_gauges()
            start = time.perf_counter()
            try:
                return fn()
            finally:
                elapsed = time.perf_counter() - start
                with self._lock:
                    self._running -= 1
                    self._mean_task_s = (
                        elapsed if self._mean_task_s is None else 0.7 * self._mean_task_s + 0.3 * elapsed
                    )
                    self._update_gauges()
                ticket.release()

        future = self._executor.submit(task)
        future.add_done_callback(lambda _: ticket.release())
        return future

    def cancel_if_waiting(self, future: concurrent.futures.Future[T]) -> bool:
        """Drop work that has not started (its ticket is released); False if it runs or ran."""
        return future.cancel()

    def shutdown(self) -> None:
        """Stop taking work, end the tasks that have not started and wait for the running one (blocking)."""
        self.stop_taking()
        self._executor.shutdown(wait=True, cancel_futures=True)

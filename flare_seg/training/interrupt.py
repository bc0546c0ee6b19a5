"""Stopping a training run cleanly: Ctrl-C (SIGINT) or SIGTERM sets a flag that the training loop
checks after each step; it then saves a checkpoint and ends, so a rerun resumes where it stopped.
A second signal while stopping interrupts at once (KeyboardInterrupt)."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving its checkpoint at ``step``."""

    def __init__(self, run_dir: Any, step: int, signal_name: str) -> None:
        super().__init__(
            f"{signal_name} at step {step}: checkpoint saved in {run_dir}; rerun the same command to resume"
        )
        self.run_dir, self.step, self.signal_name = run_dir, step, signal_name


class StopOnSignal:
    """Context manager: while inside, SIGINT and SIGTERM request a stop instead of killing.

    Outside the main thread (where Python cannot install signal handlers) it does nothing and
    ``requested`` stays False.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # the second signal: stop now
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        log.warning("%s: saving a checkpoint after this step, then stopping (again to stop at once)",
                    self.signal_name)  # fmt: skip

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

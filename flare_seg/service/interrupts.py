"""SIGINT and SIGTERM as one exception, so that a batch can write what it finished before it stops.

``docker stop`` sends SIGTERM, Ctrl-C sends SIGINT; by default the first kills the process at once
and the second raises ``KeyboardInterrupt`` anywhere. Inside ``signals_interrupt()`` both raise
``Interrupted`` in the main thread, which carries the conventional exit status (128 + the signal
number: 130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop by ``signum``; ``exit_code`` is 128 + ``signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise ``Interrupted`` (main thread only; elsewhere the
    block runs with the handlers unchanged). The previous handlers are restored after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in HANDLED}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def exit_code_of(error: KeyboardInterrupt) -> int:
    """130 for a plain KeyboardInterrupt (SIGINT), else the ``Interrupted`` signal's exit code."""
    return error.exit_code if isinstance(error, Interrupted) else 128 + signal.SIGINT

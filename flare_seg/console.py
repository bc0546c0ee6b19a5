"""How a ``flare-seg`` process ends: shared by the command (``flare_seg.cli``) and the benchmark's
worker processes (``python -m flare_seg.bench``)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys


def exit_now(code: int) -> None:
    """End the process with ``code`` once a command has finished.

    Once TensorFlow is loaded, the interpreter's own teardown takes over a second (it unwinds the
    loaded SavedModels and TensorFlow's modules) and does nothing a finished command needs: every
    output file is already complete and closed. So the logs and streams are flushed and the process
    ends at once; FLARE-style timing of ``predict.sh`` counts that second per run. Without
    TensorFlow loaded this is a plain ``sys.exit``.
    """
    if "tensorflow" not in sys.modules:
        sys.exit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say anyway
            stream.flush()
    os._exit(code)

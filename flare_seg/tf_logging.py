"""TensorFlow's own log lines: off by default in the ``flare-seg`` commands, shown with ``-v``.

TensorFlow's C++ code logs through absl. ``TF_CPP_MIN_LOG_LEVEL`` (read when TensorFlow is
imported) filters what it logs once absl's logging is initialized, but the lines logged while
TensorFlow's shared libraries load come earlier (the oneDNN notice, "Could not find cuda
drivers", each once per library) and absl writes them to stderr whatever the setting. So the
quiet import sets the level to 3 (fatal only: no cuInit error on a CPU-only machine, no oneDNN
or CPU-feature notices, no grappler warnings during training) and imports TensorFlow with file
descriptor 2 pointed at a temporary file; afterwards, the lines that are not TensorFlow's are
written to the real stderr.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import flare_seg

# "I0000 00:00:1796173187.462270   12168 port.cc:153] ..." and absl's pre-initialization notice.
_TF_LINE = re.compile(
    rb"^(?:[IWEF]\d{4} [\d:.]+\s+\d+\s+\S+:\d+\]"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions:)"
)
QUIET_LEVEL = "3"
PYTHON_LOGGERS = ("tensorflow", "absl", "h5py")


def is_tensorflow_line(line: bytes) -> bool:
    """True for a line in the format of TensorFlow's (absl's) C++ logging."""
    return bool(_TF_LINE.match(line))


def configure(verbose: bool) -> None:
    """Call before TensorFlow is imported. Not verbose: TensorFlow logs only fatal errors (unless
    ``TF_CPP_MIN_LOG_LEVEL`` was set by the user) and its Python loggers only errors. Verbose:
    everything (or the user's ``TF_CPP_MIN_LOG_LEVEL``)."""
    user_level = flare_seg.USER_TF_CPP_MIN_LOG_LEVEL
    if user_level is not None:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = user_level
    else:
        level = "0" if verbose else QUIET_LEVEL
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = os.environ[flare_seg.TF_LOG_LEVEL_MARK] = level
    for name in PYTHON_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.ERROR)


def quiet_tensorflow_import() -> None:
    """Make the first ``import tensorflow`` of this process, wherever it happens, keep TensorFlow's
    lines off stderr (a one-shot import hook; nothing to do when TensorFlow is already loaded)."""
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietFinder())


class _QuietFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    """The real loader, run with TensorFlow's log lines filtered out of stderr."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        with stderr_without_tensorflow_lines():
            self.loader.exec_module(module)

    def __getattr__(self, name: str) -> Any:  # resource readers and the like
        return getattr(self.loader, name)


@contextlib.contextmanager
def stderr_without_tensorflow_lines() -> Iterator[None]:
    """File descriptor 2 goes to a temporary file inside the block; afterwards the lines that are
    not TensorFlow's are written to the real stderr."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable stderr: nothing to keep clean
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().splitlines(keepends=True)
            kept = b"".join(line for line in lines if not is_tensorflow_line(line))
            if kept:
                with contextlib.suppress(OSError):
                    os.write(2, kept)

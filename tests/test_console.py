"""``exit_now``: a plain ``sys.exit`` without TensorFlow; with it, flushed streams and an immediate exit."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flare_seg.console import exit_now


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_without_tensorflow_it_is_a_plain_sys_exit(monkeypatch):
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    with pytest.raises(SystemExit) as exc:
        exit_now(3)
    assert exc.value.code == 3


def test_with_tensorflow_loaded_streams_are_flushed_and_teardown_is_skipped():
    # A stand-in module under TensorFlow's name: only its presence in sys.modules matters.
    proc = _run(
        "import atexit, sys, types\n"
        "sys.modules['tensorflow'] = types.ModuleType('tensorflow')\n"
        "atexit.register(lambda: print('teardown ran'))\n"
        "from flare_seg.console import exit_now\n"
        "sys.stdout.write('result line')\n"
        "sys.stderr.write('log line')\n"
        "exit_now(4)\n"
    )
    assert proc.returncode == 4
    assert proc.stdout == "result line"  # flushed, and the atexit handler never ran
    assert proc.stderr == "log line"


def test_without_tensorflow_teardown_runs():
    proc = _run(
        "import atexit\n"
        "atexit.register(lambda: print('teardown ran'))\n"
        "from flare_seg.console import exit_now\n"
        "exit_now(0)\n"
    )
    assert proc.returncode == 0
    assert proc.stdout == "teardown ran\n"

"""TensorFlow's log lines stay off stderr unless -v: checked in fresh processes, where TensorFlow
is imported for real (its first import is what logs before any setting applies)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flare_seg.tf_logging import is_tensorflow_line

REPO = Path(__file__).resolve().parents[1]
SCRIPT = """
import sys
from flare_seg import tf_logging
tf_logging.configure(verbose={verbose})
if not {verbose}:
    tf_logging.quiet_tensorflow_import()
print("before import", file=sys.stderr, flush=True)
import tensorflow as tf
print("after import", file=sys.stderr, flush=True)
tf.config.list_physical_devices()
print(float(tf.reduce_sum(tf.constant([1.0, 2.0]))))
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _tf_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if is_tensorflow_line(line.encode())]


def test_line_format() -> None:
    assert is_tensorflow_line(
        b"I0000 00:00:1796173187.462270   12168 port.cc:153] oneDNN custom operations are on."
    )
    assert is_tensorflow_line(b"E0000 00:00:1796173195.946027   12168 cuda_platform.cc:52] failed call")
    assert is_tensorflow_line(b"W0000 00:00:1.5  7 remapper.cc:12] remapper failed")
    assert is_tensorflow_line(b"WARNING: All log messages before absl::InitializeLog() is called are written")
    assert not is_tensorflow_line(b"01:02:47 INFO flare_seg.service.models: network precision: float32")
    assert not is_tensorflow_line(b"flare-seg predict: error: input folder x does not exist")


@pytest.mark.parametrize("verbose", [False, True])
def test_tensorflow_import_quiet_by_default_and_shown_when_verbose(verbose: bool) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(verbose=verbose)],
        capture_output=True, text=True, env=_env(), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "3.0"
    lines = proc.stderr.splitlines()
    assert "before import" in lines and "after import" in lines  # our own lines pass through
    if verbose:
        assert _tf_lines(proc.stderr), proc.stderr  # e.g. the oneDNN notice
    else:
        assert _tf_lines(proc.stderr) == [], proc.stderr
        assert [line for line in lines if line not in ("before import", "after import")] == []


@pytest.mark.slow
def test_demo_output_has_no_tensorflow_lines_unless_verbose(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "flare_seg"]
    args = ["demo", "--out", "mask.nii.gz"]  # the packaged models and example
    quiet = subprocess.run(base + args, capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=600)
    assert quiet.returncode == 0, quiet.stderr
    assert _tf_lines(quiet.stderr) == [], quiet.stderr
    # the product's own lines only: the models' two log lines
    assert [line.split(" ", 2)[1] for line in quiet.stderr.splitlines()] == ["INFO", "INFO"], quiet.stderr
    dice = [line for line in quiet.stdout.splitlines() if "Dice" in line]
    scores = [float(line.split("Dice ")[1].split()[0]) for line in dice]
    assert len(scores) == 4 and min(scores) > 0.8, quiet.stdout
    loud = subprocess.run(
        [*base, "-v", *args], capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=600
    )
    assert loud.returncode == 0, loud.stderr
    assert _tf_lines(loud.stderr), loud.stderr


def test_a_level_set_by_a_parent_flare_seg_process_is_not_taken_for_the_users(tmp_path: Path) -> None:
    """This process imported flare_seg (which set TF_CPP_MIN_LOG_LEVEL=2); a child that inherits
    the environment still runs quietly, while a level the user really set is kept."""
    import flare_seg

    assert os.environ.get(flare_seg.TF_LOG_LEVEL_MARK) == os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    code = "import flare_seg, os; print(flare_seg.USER_TF_CPP_MIN_LOG_LEVEL)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    inherited = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert inherited.stdout.strip() == "None"
    users = {k: v for k, v in env.items() if k != flare_seg.TF_LOG_LEVEL_MARK} | {"TF_CPP_MIN_LOG_LEVEL": "1"}
    chosen = subprocess.run([sys.executable, "-c", code], env=users, capture_output=True, text=True)
    assert chosen.stdout.strip() == "1"

"""TensorFlow's oneDNN CPU kernels: on whenever flare_seg is imported first, and a warning otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CHECK = (
    "import json; from flare_seg.service.models import onednn_enabled, onednn_warning;"
    "print(json.dumps([onednn_enabled(), onednn_warning()]))"
)


def _run(prelude: str) -> list:
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # the warning concerns CPU inference
    proc = subprocess.run(
        [sys.executable, "-c", prelude + CHECK], env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("prelude", "enabled"),
    [("import flare_seg, tensorflow;", True), ("import tensorflow, flare_seg;", False)],
    ids=["flare_seg-first", "tensorflow-first"],
)
def test_onednn_state_and_warning_follow_the_import_order(prelude: str, enabled: bool) -> None:
    state, warning = _run(prelude)
    if state is None:
        pytest.skip("this TensorFlow build does not say whether oneDNN is on")
    if enabled:
        assert state is True and warning is None
    else:
        # TensorFlow read TF_ENABLE_ONEDNN_OPTS (unset) at its import: some builds turn oneDNN on
        # by default on some CPUs; only when it is off must the user be told how to fix it.
        assert (warning is None) == state
        if warning is not None:
            assert "import flare_seg before tensorflow" in warning and "TF_ENABLE_ONEDNN_OPTS=1" in warning

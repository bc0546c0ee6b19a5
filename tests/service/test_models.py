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


@pytest.mark.parametrize(
    ("setting", "capabilities", "expected"),
    [
        ("auto", [], "float32"),  # CPU only
        ("auto", [(8, 0)], "mixed_float16"),
        ("auto", [(7, 0), (9, 0)], "mixed_float16"),
        ("auto", [(6, 1)], "float32"),  # no float16 tensor cores
        ("auto", [(8, 6), (6, 0)], "float32"),  # every GPU must have them
        ("auto", [None], "float32"),  # unknown capability
        ("float32", [(9, 0)], "float32"),
    ],
)
def test_choose_precision(setting: str, capabilities: list, expected: str) -> None:
    from flare_seg.service.models import choose_precision

    assert choose_precision(setting, capabilities) == expected


def test_choose_precision_rejects_unknown_settings() -> None:
    from flare_seg.service.models import choose_precision

    with pytest.raises(ValueError, match="auto, float32"):
        choose_precision("float16", [(8, 0)])


def test_mixed_precision_is_turned_on_only_for_capable_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """The graph rewrite is switched on exactly when the precision chosen is mixed float16."""
    import tensorflow as tf

    from flare_seg.service import models

    def amp_on() -> bool:
        return bool(tf.config.optimizer.get_experimental_options().get("auto_mixed_precision"))

    assert models._configure_precision("auto") == "float32"  # this machine: CPU only
    assert not amp_on()
    fake_gpu = object()
    monkeypatch.setattr(
        tf.config, "list_physical_devices", lambda kind=None: [fake_gpu] if kind == "GPU" else []
    )
    details = {"compute_capability": (6, 1)}
    monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda gpu: details)
    try:
        assert models._configure_precision("auto") == "float32"
        assert not amp_on()
        assert models._configure_precision("float32") == "float32"
        assert not amp_on()
        details["compute_capability"] = (8, 0)
        assert models._configure_precision("auto") == "mixed_float16"
        assert amp_on()
        assert models._configure_precision("float32") == "float32"  # a later load turns it off again
        assert not amp_on()
    finally:
        tf.config.optimizer.set_experimental_options({"auto_mixed_precision": False})

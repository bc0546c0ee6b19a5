"""Training ergonomics: SIGTERM saves a checkpoint and a rerun resumes from it; the resampling
cache is not written into the dataset; a too-small training split warns; a longer --steps on
resume is not a changed config; the first progress line comes after the first step."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytest
import tensorflow as tf

from flare_seg.training import train as train_module
from flare_seg.training.config import load_config
from flare_seg.training.interrupt import TrainingInterrupted

SMALL = {"filters": (4, 8, 8, 8), "val_cases": 1, "log_every": 1000, "checkpoint_every": 1000}


def _config(steps: int, **extra):
    return load_config("localization", steps=steps, **{**SMALL, **extra})


def test_sigterm_saves_a_checkpoint_and_a_rerun_resumes(
    phantom_dataset: Path, tmp_path: Path, monkeypatch, caplog
):
    real = train_module._distributed_step
    calls = []

    def stepper(state, loss_fn):
        step = real(state, loss_fn)

        def counted(x, y):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGTERM)  # arrives during step 3
            return step(x, y)

        return counted

    monkeypatch.setattr(train_module, "_distributed_step", stepper)
    run = tmp_path / "run"
    with (
        caplog.at_level(logging.INFO, logger="flare_seg.training.train"),
        pytest.raises(TrainingInterrupted) as info,
    ):
        train_module.train(phantom_dataset, run, _config(40))
    assert info.value.step == 3 and info.value.signal_name == "SIGTERM"
    assert "rerun the same command to resume" in str(info.value)
    assert Path(tf.train.latest_checkpoint(str(run / "checkpoints"))).name == "ckpt-3"
    messages = [r.getMessage() for r in caplog.records]
    # the first progress line comes after the first step, long before log_every (1000)
    assert any(m.startswith("localization 1/40 step") for m in messages), messages
    # the resampling cache is under the run, not in the dataset
    assert not (phantom_dataset / ".flare_seg_cache").exists() and list((run / "cache").glob("*.npz"))
    # 3 cases for training after 1 held out: too few, and said so
    assert any("only 3 of 4 cases are left for training" in m for m in messages)

    caplog.clear()
    monkeypatch.setattr(train_module, "_distributed_step", real)
    with caplog.at_level(logging.INFO, logger="flare_seg.training.train"):
        result = train_module.train(phantom_dataset, run, _config(5))  # resume, with fewer steps in all
    assert result.steps == 5
    messages = [r.getMessage() for r in caplog.records]
    assert any("at step 3" in m and "resumed" in m for m in messages), messages
    assert not any("changed config" in m for m in messages), messages  # only --steps changed
    with caplog.at_level(logging.WARNING, logger="flare_seg.training.train"):
        train_module.train(phantom_dataset, run, _config(5, learning_rate=1e-4))
    assert any("changed config (learning_rate" in r.getMessage() for r in caplog.records)

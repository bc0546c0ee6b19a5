"""SIGINT/SIGTERM during training request a stop (checkpoint first); a second one stops at once."""

from __future__ import annotations

import os
import signal

import pytest

from flare_seg.training.interrupt import StopOnSignal, TrainingInterrupted


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_first_signal_requests_a_stop_second_interrupts(sig: signal.Signals) -> None:
    before = signal.getsignal(sig)
    with StopOnSignal() as stop:
        os.kill(os.getpid(), sig)
        assert stop.requested and stop.signal_name == sig.name
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), sig)
    assert signal.getsignal(sig) is before  # handlers restored


def test_message_says_how_to_resume() -> None:
    e = TrainingInterrupted("runs/seg", 1234, "SIGTERM")
    assert str(e) == "SIGTERM at step 1234: checkpoint saved in runs/seg; rerun the same command to resume"

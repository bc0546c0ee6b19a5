"""Tests for flare_seg.service.interrupts: SIGINT and SIGTERM as Interrupted, exit codes 130/143."""

from __future__ import annotations

import os
import signal
import time

import pytest

from flare_seg.service.interrupts import Interrupted, exit_code_of, signals_interrupt


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_becomes_interrupted(sig: int, code: int) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as caught, signals_interrupt():
        os.kill(os.getpid(), sig)
        time.sleep(5)  # interrupted long before this ends
    assert caught.value.signum == sig and exit_code_of(caught.value) == code
    assert signal.getsignal(signal.SIGTERM) is before, "the previous handler is restored"


def test_plain_keyboard_interrupt_is_130() -> None:
    assert exit_code_of(KeyboardInterrupt()) == 130

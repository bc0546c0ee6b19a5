"""Progress: a tqdm bar on a terminal, plain log lines elsewhere (first at once, then throttled)."""

from __future__ import annotations

import io
import logging

import pytest

from flare_seg import progress as progress_module
from flare_seg.progress import Progress


def test_plain_lines_first_at_once_then_throttled_and_last(caplog, monkeypatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: clock[0])
    with (
        caplog.at_level(logging.INFO, logger="flare_seg.progress"),
        Progress(total=10, desc="train", unit="step", bar=False, log_every_s=30) as p,
    ):
        for _ in range(10):
            clock[0] += 5.0
            p.update(loss=0.25)
        assert not p.uses_bar
    lines = [r.getMessage() for r in caplog.records]
    # step 1 at once; then every 30 s (steps 7 at 135 s); and the last one
    assert [line.split()[1] for line in lines] == ["1/10", "7/10", "10/10"]
    assert lines[0] == "train 1/10 step  loss 0.25  0.20 step/s  eta 0:00:45"


def test_resumed_progress_counts_from_the_initial_step(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="flare_seg.progress"):
        p = Progress(total=100, desc="train", unit="step", initial=60, bar=False)
        p.update()
    assert caplog.records[0].getMessage().startswith("train 61/100 step")


def test_bar_on_a_terminal_and_lines_written_through_it(monkeypatch, capsys) -> None:
    fake_tty = io.StringIO()
    fake_tty.isatty = lambda: True  # type: ignore[method-assign]
    monkeypatch.setattr(progress_module.sys, "stderr", fake_tty)
    out = io.StringIO()
    with Progress(total=3, desc="predict", unit="case") as p:
        assert p.uses_bar
        p.write("case1: ok", file=out)
        p.update(status="ok")
    assert out.getvalue() == "case1: ok\n"
    assert "predict" in fake_tty.getvalue() and "1/3" in fake_tty.getvalue()


def test_no_bar_without_a_terminal(monkeypatch) -> None:
    monkeypatch.setattr(progress_module.sys, "stderr", io.StringIO())
    assert not Progress(total=1, desc="x").uses_bar
    assert progress_module.stderr_is_terminal() is False


@pytest.mark.parametrize(("rate_s", "text"), [(0.5, "2.00 case/s"), (20.0, "20.0 s/case")])
def test_rate_formats(monkeypatch, rate_s: float, text: str) -> None:
    clock = [0.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: clock[0])
    p = Progress(total=5, desc="predict", unit="case", bar=False)
    clock[0] = rate_s
    p.n = 1
    assert text in p.line()

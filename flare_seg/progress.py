"""Progress of long commands (batch prediction, training): a tqdm bar when stderr is a terminal,
plain log lines otherwise (files, pipes, CI logs, where a redrawn bar would be noise).

    with Progress(total=len(cases), desc="predict", unit="case") as progress:
        for case in cases:
            ...
            progress.write(report_line)       # a line of output that must not break the bar
            progress.update(status="ok")

Without a terminal, ``update`` logs ``desc i/total`` (with the postfix and an ETA) on the first
update, then at most every ``log_every_s`` seconds and on the last.
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import Any, TextIO

log = logging.getLogger(__name__)


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts ``total`` units of work; see the module docstring."""

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "it",
        *,
        initial: int = 0,
        bar: bool | None = None,
        log_every_s: float = 30.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self.total, self.desc, self.unit = int(total), desc, unit
        self.n = int(initial)
        self._start_n = self.n
        self._log = logger or log
        self._log_every_s = log_every_s
        self._t0 = time.monotonic()
        self._last_log: float | None = None
        self._bar: Any = None
        if stderr_is_terminal() if bar is None else bar:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total, initial=self.n, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True
            )

    @property
    def uses_bar(self) -> bool:
        return self._bar is not None

    def update(self, n: int = 1, *, log_now: bool = False, **postfix: Any) -> None:
        """``n`` more units done; ``postfix``: figures shown after the count (e.g. loss=0.12);
        ``log_now``: without a bar, log this update whatever the time since the last line."""
        self.n += n
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(n)
            return
        now = time.monotonic()
        first, last = self._last_log is None, self.n >= self.total
        if log_now or first or last or now - (self._last_log or 0.0) >= self._log_every_s:
            self._last_log = now
            self._log.info("%s", self.line(now, postfix))

    def line(self, now: float | None = None, postfix: dict[str, Any] | None = None) -> str:
        """``desc n/total unit  k=v ...  rate/s  eta h:mm:ss`` (the plain-line form)."""
        elapsed = (time.monotonic() if now is None else now) - self._t0
        done = self.n - self._start_n
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc} {self.n}/{self.total} {self.unit}"]
        parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in (postfix or {}).items()]
        if done and rate > 0:
            parts.append(f"{rate:.2f} {self.unit}/s" if rate >= 0.1 else f"{1 / rate:.1f} s/{self.unit}")
            parts.append(f"eta {_clock((self.total - self.n) / rate)}")
        return "  ".join(parts)

    def write(self, text: str, file: TextIO | None = None) -> None:
        """Print a line (stdout by default) without breaking the bar."""
        out = file or sys.stdout
        if self._bar is not None:
            self._bar.write(text, file=out)
        else:
            print(text, file=out, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

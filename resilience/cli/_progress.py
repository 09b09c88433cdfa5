"""Progress display for long commands: a bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["Progress"]


class Progress:
    """Shows events/s, checkpoints and restores of a running job.

    On a terminal it redraws one line; elsewhere (CI logs, pipes) it prints a
    line every `every_s` seconds so logs stay readable.
    """

    def __init__(
        self, total: int | None, *, stream: TextIO | None = None, every_s: float = 2.0,
        label: str = "events",
    ) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = every_s
        self.label = label
        self._t0 = time.monotonic()
        self._last_print = 0.0
        self._last: tuple[float, int] = (self._t0, 0)
        self._rate = 0.0

    def update(self, status: dict[str, Any]) -> None:
        now = time.monotonic()
        done = int(status.get("lines_read", 0))
        t_prev, d_prev = self._last
        if now - t_prev >= 0.5:
            inst = (done - d_prev) / (now - t_prev)
            # Smooth, but let restores (done going down) show up immediately.
            self._rate = inst if self._rate == 0 or inst < 0 else 0.7 * self._rate + 0.3 * inst
            self._last = (now, done)
        line = self._line(status, done)
        if self.tty:
            self.stream.write("\r" + line.ljust(110)[:110])
            self.stream.flush()
        elif now - self._last_print >= self.every_s:
            self._last_print = now
            self.stream.write(line + "\n")
            self.stream.flush()

    def _line(self, status: dict[str, Any], done: int) -> str:
        elapsed = time.monotonic() - self._t0
        ckpts = status.get("checkpoints_completed", 0)
        restores = max(len(status.get("restores", [])) - 1, 0)
        state = status.get("state", "?")
        if self.total:
            frac = min(done / self.total, 1.0)
            width = 24
            bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
            head = f"[{bar}] {frac * 100:5.1f}% {done:,}/{self.total:,} {self.label}"
        else:
            head = f"{done:,} {self.label}"
        return (f"{head}  {max(self._rate, 0):,.0f}/s  checkpoints {ckpts}  restores {restores}"
                f"  {state}  {elapsed:5.1f}s")

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

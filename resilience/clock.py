"""The project's clock: where the runtime's decisions read time, and what a drill skews.

The coordinator (checkpoint triggers, its leader lease deadline) and every task (barrier
alignment timeouts) read time through a `ProjectClock` named after them. Normally it is
the system clock. A clock fault skews one component's clock::

    skew(workdir, "coordinator", rate=0.2)         # runs at a fifth of real speed
    skew(workdir, "task:balances-0", offset_s=30)  # jumps 30 s ahead
    unskew(workdir, "coordinator")

From the moment of the skew the component's clock reads ``offset_s + rate * elapsed``
past where it stood, until `unskew`. The control is a small JSON file under the job's
workdir (``.resilience/clock/<component>``) that each clock re-reads at most every
50 ms, so a skew reaches every process of the component on this node, restarted ones
included.

When a skew ends, `monotonic` goes on at real speed from where it stands: no jump either
way, so healing a slow clock does not look like a sudden leap of time (which would be a
second fault), and it never goes backwards. `time` is a wall clock: it steps back to the
system's, backwards too, as a system clock stepped by NTP does.

What the clock is *not* used for: durations the job reports (checkpoint and recovery
times are measured in real time), and anything that etcd decides (lease expiry is the
server's, which is why a holder's slow clock cannot win a fenced write).
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProjectClock", "Skew", "skew", "unskew"]

_REFRESH_S = 0.05


@dataclass(frozen=True)
class Skew:
    """A clock running at `rate` times real speed, `offset_s` ahead, since real time `since`."""

    offset_s: float = 0.0
    rate: float = 1.0
    since: float = 0.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.offset_s):
            raise ValueError(f"clock skew offset_s must be finite, got {self.offset_s!r}")
        if not (math.isfinite(self.rate) and self.rate >= 0):
            raise ValueError(f"clock skew rate must be >= 0 (0 stops the clock), "
                             f"got {self.rate!r}")

    def apply(self, reading: float, real_wall_now: float) -> float:
        """The skewed value of `reading`, an unskewed clock read at `real_wall_now`."""
        elapsed = max(real_wall_now - self.since, 0.0)
        return reading + self.offset_s + (self.rate - 1.0) * elapsed


def _control(workdir: Path, component: str) -> Path:
    if not component or "/" in component or component.startswith("."):
        raise ValueError(f"not a clock component name: {component!r}")
    return workdir / ".resilience" / "clock" / component


def skew(workdir: Path, component: str, *, offset_s: float = 0.0, rate: float = 1.0) -> Skew:
    """Skew the clock of `component` (``coordinator``, ``task:<id>``) from now on."""
    s = Skew(offset_s=offset_s, rate=rate, since=time.time())
    path = _control(Path(workdir), component)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"offset_s": s.offset_s, "rate": s.rate, "since": s.since}))
    tmp.replace(path)
    return s


def unskew(workdir: Path, component: str) -> None:
    """Give `component` the system clock back (see the module doc for `monotonic`)."""
    _control(Path(workdir), component).unlink(missing_ok=True)


class ProjectClock:
    """The clock of one component; `ProjectClock(None, ...)` is the plain system clock."""

    def __init__(self, workdir: Path | None, component: str) -> None:
        self.component = component
        self._path = None if workdir is None else _control(Path(workdir), component)
        self._skew: Skew | None = None
        self._checked_at = -math.inf
        self._last_monotonic = -math.inf
        self._lock = threading.Lock()
        # What the monotonic clock keeps of the skews that ended: it goes on from there.
        self._carry = 0.0
        self._applied: Skew | None = None

    def __repr__(self) -> str:
        return f"ProjectClock({self.component!r}, skew={self._skew!r})"

    def current_skew(self) -> Skew | None:
        """The skew in force (re-read from the control file at most every 50 ms)."""
        if self._path is None:
            return None
        now = time.monotonic()
        if now - self._checked_at >= _REFRESH_S:
            self._checked_at = now
            self._skew = _read(self._path)
        return self._skew

    def monotonic(self) -> float:
        s = self.current_skew()
        base, wall = time.monotonic(), time.time()
        with self._lock:
            if s != self._applied:
                if self._applied is not None:
                    # The skew ended (or was replaced) at about now: keep where it took
                    # the clock (off by at most one refresh of the control file).
                    self._carry = self._applied.apply(base + self._carry, wall) - base
                self._applied = s
            value = base + self._carry if s is None else s.apply(base + self._carry, wall)
            if value < self._last_monotonic:
                return self._last_monotonic
            self._last_monotonic = value
            return value

    def time(self) -> float:
        s = self.current_skew()
        now = time.time()
        return now if s is None else s.apply(now, now)


def _read(path: Path) -> Skew | None:
    try:
        doc = json.loads(path.read_text())
        return Skew(float(doc["offset_s"]), float(doc["rate"]), float(doc["since"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        # Half-written or damaged: the control is replaced atomically, so this is a
        # mistake by hand. The system clock is the safe reading.
        return None

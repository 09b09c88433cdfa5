"""Named fault points: places in the runtime where a test or a chaos run can crash it.

A fault point is armed by a file ``<workdir>/.resilience/faults/<name>`` whose
content is the action: ``kill`` (SIGKILL this process, once: the file is
removed first so the restarted process goes on), ``pause <seconds>``, or
``enospc`` / ``eio`` (the code at the point fails with that errno while armed).
Storage points (`io_hook`, used by the checkpoint store for every write) also
take ``slow <seconds>``. With no
file the check costs one `stat`, so the points stay in production code: the
crash a chaos scenario injects is then the real one, at the exact place (for
example between a sink's pre-commit and its commit), not an imitation.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "ACTOR_BEFORE_REPLY",
    "POINTS",
    "SINK_BEFORE_COMMIT",
    "SINK_BEFORE_PRECOMMIT",
    "STORE_WRITE",
    "TASK_POINT",
    "arm",
    "disarm",
    "hit",
    "io_hook",
    "take",
]

STORE_WRITE = "store.write"
"""The fault point of every checkpoint store write."""

ACTOR_BEFORE_REPLY = "actor.before_reply"
"""`@resilient`: a call is durable in the log, its reply not sent yet (per actor directory)."""

SINK_BEFORE_PRECOMMIT = "{sink}.before_precommit"
SINK_BEFORE_COMMIT = "{sink}.before_commit"
"""A two-phase-commit stage named `sink` (``ledger`` in the payments job): before it
stages a checkpoint's rows, and between pre-commit and commit (the window 2PC exists for)."""

TASK_POINT = "{task}.{point}"
"""A point an operator of task `task` takes itself (`take`), e.g. the payments Java stage's
``balances-<i>.java_snapshot``."""

POINTS = {
    STORE_WRITE: "every checkpoint store write (io_hook): enospc, eio, slow S, kill, pause S",
    ACTOR_BEFORE_REPLY: "an actor call logged and durable, reply not sent: kill",
    SINK_BEFORE_PRECOMMIT: "a sink stage before staging a checkpoint's rows: kill, eio, ...",
    SINK_BEFORE_COMMIT: "a sink stage between pre-commit and commit: kill, pause S",
    TASK_POINT: "taken by an operator itself, one-shot (the payments Java stage: "
                "balances-<i>.java_snapshot kill)",
}
"""Every fault point of the product, named in this one place; the code passes these
names (formatted with the sink or task) to `hit`, `take` and `io_hook`."""

_ACTIONS = ("kill", "exit", "enospc", "eio", "on")


def _path(workdir: Path, name: str) -> Path:
    return workdir / ".resilience" / "faults" / name


def _maybe_armed(workdir: Path) -> bool:
    # Hot paths (every actor call) pay one stat of the faults folder, not a failed open.
    try:
        os.stat(workdir / ".resilience" / "faults")
    except FileNotFoundError:
        return False
    return True


def arm(workdir: Path, name: str, action: str = "kill") -> None:
    """Arm fault point `name` under `workdir` with `action` (``kill`` or ``pause S``)."""
    if action not in _ACTIONS and not action.startswith(("pause ", "slow ")):
        raise ValueError(
            f"unknown fault action {action!r} (use kill, exit, enospc, eio, on, 'pause S' "
            "or 'slow S')"
        )
    p = _path(workdir, name)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(action)
    tmp.replace(p)


def disarm(workdir: Path, name: str) -> None:
    _path(workdir, name).unlink(missing_ok=True)


def hit(workdir: Path, name: str) -> None:
    """Called by the runtime at fault point `name`: act if armed, else return at once."""
    if not _maybe_armed(workdir):
        return
    p = _path(workdir, name)
    try:
        action = p.read_text().strip()
    except FileNotFoundError:
        return
    if action == "kill":
        try:
            p.unlink()
        except FileNotFoundError:
            return  # another process took this one-shot fault
        os.kill(os.getpid(), signal.SIGKILL)
    elif action.startswith(("pause ", "slow ")):
        time.sleep(float(action.split()[1]))
    elif action in ("enospc", "eio"):
        code = errno.ENOSPC if action == "enospc" else errno.EIO
        raise OSError(code, os.strerror(code), name)


def take(workdir: Path, name: str) -> str | None:
    """The action of fault point `name` if it is armed, disarming it; else None.

    For one-shot faults that act on something other than the calling process (a Java
    stage kills its JVM, or makes its next restore throw): exactly one caller gets it.
    """
    if not _maybe_armed(workdir):
        return None
    p = _path(workdir, name)
    try:
        action = p.read_text().strip()
        p.unlink()
    except FileNotFoundError:
        return None
    return action


def io_hook(workdir: Path, name: str = STORE_WRITE) -> Callable[[str, int], None]:
    """A store `fault_hook` driven by fault point `name`: fails or slows writes while armed."""

    def hook(path: str, nbytes: int) -> None:
        try:
            action = _path(workdir, name).read_text().strip()
        except FileNotFoundError:
            return
        if action == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        if action == "eio":
            raise OSError(errno.EIO, os.strerror(errno.EIO), path)
        hit(workdir, name)

    return hook

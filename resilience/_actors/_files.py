"""The on-disk pieces of an actor's directory: the owner record, the writer lock and
the restart counts."""


from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

# -- on-disk pieces -------------------------------------------------------------------------


class _Owner:
    """Who writes the log: `{"epoch": e, "primary": index}`, changed under a file lock."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "owner.json"
        self.lock_path = directory / "owner.lock"

    def read(self) -> dict[str, int] | None:
        try:
            return dict(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return None

    def _write(self, record: dict[str, int]) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(record))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)

    def compare_and_set(self, expected_epoch: int | None, primary: int) -> dict[str, int]:
        """Make `primary` the writer if the epoch is still `expected_epoch`; return the record."""
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.read()
            epoch = 0 if current is None else current["epoch"]
            if current is not None and expected_epoch is not None and epoch != expected_epoch:
                return current
            if current is not None and expected_epoch is None:
                return current
            record = {"epoch": epoch + 1, "primary": primary}
            self._write(record)
            return record


class _WriterLock:
    """The exclusive right to append to the log, for the life of this process."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "writer.lock"
        self._file: Any = None

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def acquire(self, timeout_s: float) -> bool:
        if self._file is not None:
            return True
        f = open(self.path, "a")  # noqa: SIM115 - held until the process dies
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._file = f
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    f.close()
                    return False
                time.sleep(0.005)


def _restart_count(directory: Path, index: int) -> int:
    """Count this restart of replica `index` (persisted: Ray does not say how many)."""
    path = directory / f"restarts-{index}.json"
    try:
        n = int(json.loads(path.read_text())["restarts"])
    except (FileNotFoundError, ValueError, KeyError):
        n = 0
    n += 1
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"restarts": n}))
    tmp.replace(path)
    return n

"""`SideFile`: an append-only file an operator writes beside the job's output, exactly once.

A source that dead-letters bad lines, an operator that writes an audit trail: their
file is an external effect like a sink's rows, outside any two-phase commit. A
`SideFile` keeps it exact across restores and sites:

* `mark()`, in the synchronous half of a snapshot, makes the file durable (flush and
  fsync) and returns its size and the CRC-32 of its whole content; the operator puts
  the mark into its snapshot metadata under ``side_files``;
* `restore(mark)` cuts the file back to the marked size, so the replay after a restore
  writes every line again exactly once (records are deterministic). The kept prefix must
  still be the one the checkpoint marked (its size and CRC-32): a file that lost bytes, or
  was cut by another writer, raises `CheckpointCorrupt`, so the job falls back to an older
  checkpoint whose prefix is intact instead of padding the file with zeros;
* one writer at a time: `open` takes an exclusive lock on the file (`flock`), waiting for
  an earlier incarnation of the task (a worker being replaced after a hang) to die;
* with cross-datacenter replication, the bytes between two checkpoints' marks travel
  with the checkpoint (`resilience.replication`), verified against the CRC-32, so the
  standby site holds the same file at every checkpoint it applied.
"""

from __future__ import annotations

import fcntl
import os
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from checkpoint import CheckpointCorrupt

__all__ = ["SIDE_FILES_KEY", "SideFile", "crc32_of_prefix"]

SIDE_FILES_KEY = "side_files"
"""Where an operator's snapshot metadata lists its side files: ``{name: mark}``."""

_BLOCK = 1 << 20


def crc32_of_prefix(path: Path, size: int) -> int:
    """CRC-32 of the first `size` bytes of `path` (ValueError if it is shorter)."""
    crc = 0
    left = size
    with open(path, "rb") as f:
        while left > 0:
            block = f.read(min(_BLOCK, left))
            if not block:
                raise ValueError(f"{path} holds fewer than {size} bytes")
            crc = zlib.crc32(block, crc)
            left -= len(block)
    return crc


class SideFile:
    """An append-only file under the job's workdir, named `name` (a relative path)."""

    def __init__(self, name: str) -> None:
        if not name or Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"SideFile({name!r}): a relative path inside the workdir")
        self.name = name
        self.path: Path | None = None
        self._file: BinaryIO | None = None
        self._crc = 0
        self._size = 0

    def open(self, workdir: Path, *, lock_timeout_s: float = 60.0) -> None:
        """Open for appending (the file is created if absent); call from `Operator.open`.

        Waits up to `lock_timeout_s` for another process holding the file (an earlier
        incarnation of the task, being killed) to let go; then raises `RuntimeError`."""
        self.path = Path(workdir) / self.name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")  # noqa: SIM115 - lives as long as the operator
        deadline = time.monotonic() + lock_timeout_s
        while True:
            try:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self._file.close()
                    self._file = None
                    raise RuntimeError(
                        f"side file {self.path} is held by another process for more than "
                        f"{lock_timeout_s:g}s (an earlier incarnation of this task?)") from None
                time.sleep(0.05)
        self._size = os.fstat(self._file.fileno()).st_size
        self._crc = crc32_of_prefix(self.path, self._size)

    @property
    def _f(self) -> BinaryIO:
        if self._file is None:
            raise RuntimeError(f"side file {self.name} is not open")
        return self._file

    def write(self, data: bytes) -> None:
        self._f.write(data)
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)

    def mark(self) -> dict[str, int]:
        """Durable now: ``{"bytes": size, "crc32": crc}`` for the snapshot's metadata."""
        f = self._f
        f.flush()
        os.fsync(f.fileno())
        return {"bytes": self._size, "crc32": self._crc}

    def restore(self, mark: Mapping[str, Any] | None) -> None:
        """Cut the file back to `mark` (None: empty), as it was at that snapshot."""
        f = self._f
        size = 0 if mark is None else int(mark["bytes"])
        f.flush()
        assert self.path is not None
        actual = os.fstat(f.fileno()).st_size
        if actual < size:
            raise CheckpointCorrupt(str(self.path), f"holds {actual} bytes, fewer than the "
                                    f"{size} its checkpoint marked: bytes were lost")
        f.truncate(size)
        f.seek(size)
        crc = crc32_of_prefix(self.path, size) if size else 0
        expected = None if mark is None else mark.get("crc32")
        if expected is not None and int(expected) != crc:
            raise CheckpointCorrupt(str(self.path), f"its first {size} bytes are not those "
                                    "its checkpoint marked (CRC-32 differs)")
        self._crc = crc
        self._size = size

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

"""`SideFile`: an append-only file an operator writes beside the job's output, exactly once.

A source that dead-letters bad lines, an operator that writes an audit trail: their
file is an external effect like a sink's rows, outside any two-phase commit. A
`SideFile` keeps it exact across restores and sites:

* `mark()`, in the synchronous half of a snapshot, makes the file durable (flush and
  fsync) and returns its size and the CRC-32 of its whole content; the operator puts
  the mark into its snapshot metadata under ``side_files``;
* `restore(mark)` cuts the file back to the marked size, so the replay after a restore
  writes every line again exactly once (records are deterministic);
* with cross-datacenter replication, the bytes between two checkpoints' marks travel
  with the checkpoint (`resilience.replication`), verified against the CRC-32, so the
  standby site holds the same file at every checkpoint it applied.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

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

    def open(self, workdir: Path) -> None:
        """Open for appending (the file is created if absent); call from `Operator.open`."""
        self.path = Path(workdir) / self.name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")  # noqa: SIM115 - lives as long as the operator
        self._size = self._file.tell()
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
        f.truncate(size)
        f.seek(size)
        assert self.path is not None
        crc = None if mark is None else mark.get("crc32")
        self._crc = 0 if size == 0 else (int(crc) if crc is not None
                                         else crc32_of_prefix(self.path, size))
        self._size = size

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

"""Rewindable sources.

A source's checkpointed state is its read position; restoring seeks back there
and the same records come again, in the same order. Together with two-phase
commit sinks that is what makes replay exactly once.

It is exactly once only if the records *are* the same: a position also records a
CRC-32 of every byte read before it, and seeking to it checks the file still
starts with those bytes. Another file is refused (`InputChanged`); the same file
grown since (a stream appended to) is resumed.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

from checkpoint._errors import CheckpointError, InputChanged

__all__ = ["JsonLinesSource", "RewindableSource", "SourcePosition"]

_KNOWN_POSITIONS = 256


@dataclass(frozen=True)
class SourcePosition:
    """Where the next read starts: a byte offset and the 1-based number of the next line.

    `crc32` is the CRC-32 of the bytes before `offset` (None: not recorded, as in
    checkpoints written before it was); `tail_open` says the last line read ended
    at the end of the file without a newline. Neither takes part in equality.
    """

    offset: int = 0
    next_line: int = 1
    crc32: int | None = field(default=None, compare=False)
    tail_open: bool = field(default=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"offset": self.offset, "next_line": self.next_line}
        if self.crc32 is not None:
            doc.update(crc32=self.crc32, tail_open=self.tail_open)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SourcePosition:
        crc = doc.get("crc32")
        return cls(offset=int(doc["offset"]), next_line=int(doc["next_line"]),
                   crc32=None if crc is None else int(crc),
                   tail_open=bool(doc.get("tail_open", False)))


@runtime_checkable
class RewindableSource(Protocol):
    """A source that can report and return to a position."""

    def position(self) -> SourcePosition: ...

    def seek(self, position: SourcePosition) -> None: ...

    def read_batch(self, max_records: int) -> list[tuple[int, bytes]]: ...


class JsonLinesSource:
    """Reads a JSON Lines file as (line number, raw line without newline) pairs.

    Parsing is left to the job: a malformed line is still a record, so the job
    can dead-letter it with its line number. A final line without a newline is
    read too. A CRLF ending counts as the newline: one CR at the end of a line
    is removed, any other CR is line content.

    `seek` checks the file against the position's CRC-32 (see the module
    docstring) and raises `InputChanged` when it is not the file that was read.
    A final line read without its newline is resumed after if the file has grown
    by exactly that newline first; if the line itself grew, the file is refused.
    """

    def __init__(self, path: Path, *, read_size: int = 1 << 20) -> None:
        self.path = Path(path)
        self._read_size = read_size
        try:
            self._file: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        except OSError as e:
            raise CheckpointError(f"cannot open input {self.path}: {e.strerror}") from e
        self._next_line = 1
        self._offset = 0  # file offset of the first byte of _buffer
        self._crc = 0  # CRC-32 of the bytes before _offset
        self._tail_open = False
        self._buffer = b""
        self._eof = False
        stat = os.fstat(self._file.fileno())
        self._identity = (stat.st_dev, stat.st_ino)
        # Positions this process read itself: seeking back to one needs no re-reading.
        self._known: dict[int, int] = {}

    def position(self) -> SourcePosition:
        known = self._known
        known[self._offset] = self._crc
        if len(known) > _KNOWN_POSITIONS:
            del known[next(iter(known))]
        return SourcePosition(self._offset, self._next_line, self._crc, self._tail_open)

    def seek(self, position: SourcePosition) -> None:
        """Go back (or forward) to `position`; raises `InputChanged` when the file is not
        the one the position was read from."""
        offset, crc = position.offset, position.crc32
        if crc is not None:
            self._verify(offset, crc, position.next_line)
        else:
            crc = self._prefix_crc(offset)
        tail_open = position.tail_open
        if tail_open:
            ending = self._ending_after(offset, position.next_line - 1)
            if ending:
                crc = zlib.crc32(ending, crc)
                offset += len(ending)
                tail_open = False
        self._file.seek(offset)
        self._offset = offset
        self._crc = crc
        self._tail_open = tail_open
        self._next_line = position.next_line
        self._buffer = b""
        self._eof = False

    def _size(self) -> int:
        return os.fstat(self._file.fileno()).st_size

    def _prefix_crc(self, offset: int) -> int:
        """CRC-32 of the first `offset` bytes, read from the file (-1: it is shorter)."""
        self._file.seek(0)
        crc = 0
        left = offset
        while left > 0:
            chunk = self._file.read(min(left, 1 << 20))
            if not chunk:
                return -1
            crc = zlib.crc32(chunk, crc)
            left -= len(chunk)
        return crc

    def _verify(self, offset: int, crc: int, next_line: int) -> None:
        stat = os.fstat(self._file.fileno())
        if ((stat.st_dev, stat.st_ino) == self._identity and stat.st_size >= offset
                and self._known.get(offset) == crc):
            return
        if stat.st_size < offset:
            raise InputChanged(
                f"{self.path} holds {stat.st_size:,} bytes, fewer than the {offset:,} "
                f"(lines 1 to {next_line - 1:,}) already read from the job's input")
        if self._prefix_crc(offset) != crc:
            raise InputChanged(
                f"{self.path} is not the job's input: its first {offset:,} bytes "
                f"(lines 1 to {next_line - 1:,}) differ from what the job read")

    def _ending_after(self, offset: int, line: int) -> bytes:
        """The newline that completed a last line read without one, if the file grew by it."""
        if self._size() <= offset:
            return b""
        self._file.seek(offset)
        head = self._file.read(2)
        if head.startswith(b"\n"):
            return b"\n"
        if head == b"\r\n":
            return b"\r\n"
        raise InputChanged(
            f"{self.path}: line {line:,} was read at the end of the file without its "
            "newline, and it has grown since: the line now reads differently")

    @property
    def exhausted(self) -> bool:
        """True once every line has been returned."""
        return self._eof and not self._buffer

    def read_batch(self, max_records: int) -> list[tuple[int, bytes]]:
        """Up to `max_records` lines; an empty list means end of file."""
        out: list[tuple[int, bytes]] = []
        buf = self._buffer
        pos = 0  # index into buf; slicing buf per line would be quadratic
        line_no = self._next_line
        while len(out) < max_records:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                if self._eof:
                    if pos < len(buf):
                        out.append((line_no, buf[pos:].removesuffix(b"\r")))
                        line_no += 1
                        pos = len(buf)
                        self._tail_open = True
                    break
                more = self._file.read(self._read_size)
                if more:
                    self._crc = zlib.crc32(memoryview(buf)[:pos], self._crc)
                    buf = buf[pos:] + more
                    self._offset += pos
                    pos = 0
                else:
                    self._eof = True
                continue
            out.append((line_no, buf[pos:nl].removesuffix(b"\r")))
            line_no += 1
            pos = nl + 1
        self._crc = zlib.crc32(memoryview(buf)[:pos], self._crc)
        self._buffer = buf[pos:]
        self._offset += pos
        self._next_line = line_no
        return out

    def close(self) -> None:
        self._file.close()

    @staticmethod
    def count_lines(path: Path) -> int:
        """How many lines `path` holds (a last line without a newline counts too)."""
        with open(path, "rb") as f:
            n = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    n += 1
        return n

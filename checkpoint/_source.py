"""Rewindable sources.

A source's checkpointed state is its read position; restoring seeks back there
and the same records come again, in the same order. Together with two-phase
commit sinks that is what makes replay exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from checkpoint._errors import CheckpointError

__all__ = ["JsonLinesSource", "RewindableSource", "SourcePosition"]


@dataclass(frozen=True)
class SourcePosition:
    """Where the next read starts: a byte offset and the 1-based number of the next line."""

    offset: int = 0
    next_line: int = 1

    def to_json(self) -> dict[str, int]:
        return {"offset": self.offset, "next_line": self.next_line}

    @classmethod
    def from_json(cls, doc: dict[str, int]) -> SourcePosition:
        return cls(offset=int(doc["offset"]), next_line=int(doc["next_line"]))


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
        self._buffer = b""
        self._eof = False

    def position(self) -> SourcePosition:
        return SourcePosition(self._offset, self._next_line)

    def seek(self, position: SourcePosition) -> None:
        self._file.seek(position.offset)
        self._offset = position.offset
        self._next_line = position.next_line
        self._buffer = b""
        self._eof = False

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
                    break
                more = self._file.read(self._read_size)
                if more:
                    buf = buf[pos:] + more
                    self._offset += pos
                    pos = 0
                else:
                    self._eof = True
                continue
            out.append((line_no, buf[pos:nl].removesuffix(b"\r")))
            line_no += 1
            pos = nl + 1
        self._buffer = buf[pos:]
        self._offset += pos
        self._next_line = line_no
        return out

    def close(self) -> None:
        self._file.close()

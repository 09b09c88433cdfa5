"""A write-ahead log with group commit.

Records are appended to segment files ``<dir>/<first seq:020d>.wal``, each framed as
``length (u32) | crc32 (u32) | payload``. `append` only buffers; `flush` writes
everything buffered with one ``write`` and one ``fsync``, so many records share one
disk flush (group commit). A record is durable once `flush` covering its sequence
number returned.

Reading verifies every frame. A frame cut short at the very end of the last segment
is a torn write from a crash before its fsync returned: it was never durable, so the
reader stops there and a writer reopening the log truncates it. A bad frame anywhere
else is corruption and raises `CheckpointCorrupt`, naming the segment and offset.

`truncate_before(seq)` deletes whole segments whose records all precede `seq` (after
a snapshot made them redundant). `LogFollower` tails a log that another process
writes, for warm standbys.

Thread safety: one writer per log (enforce it with fencing above this layer);
`append` and `flush` may be called from different threads.
"""

from __future__ import annotations

import itertools
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

from checkpoint._errors import CheckpointCorrupt, StoreWriteError

__all__ = ["LogFollower", "WriteAheadLog", "read_log"]

_HEADER = struct.Struct("<II")
_SUFFIX = ".wal"


def _segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{_SUFFIX}"


def _segments(directory: Path) -> list[tuple[int, Path]]:
    out = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        if entry.name.endswith(_SUFFIX) and entry.name[:-len(_SUFFIX)].isdigit():
            out.append((int(entry.name[:-len(_SUFFIX)]), Path(entry.path)))
    return sorted(out)


def _read_frames(path: Path, data: bytes, *, last: bool) -> tuple[list[bytes], int]:
    """Frames of one segment and the offset where valid data ends."""
    frames = []
    pos = 0
    n = len(data)
    while pos < n:
        if pos + _HEADER.size > n:
            break
        length, crc = _HEADER.unpack_from(data, pos)
        end = pos + _HEADER.size + length
        if end > n:
            break
        payload = data[pos + _HEADER.size:end]
        if zlib.crc32(payload) != crc:
            if last and end == n:
                break  # a torn last frame whose length happened to fit
            raise CheckpointCorrupt(f"{path} at byte {pos}", "log record checksum mismatch")
        frames.append(payload)
        pos = end
    if pos < n and not last:
        raise CheckpointCorrupt(f"{path} at byte {pos}", "truncated record inside the log")
    return frames, pos


class WriteAheadLog:
    """Appends records with group-committed fsyncs. See the module docstring."""

    def __init__(self, directory: Path, *, segment_bytes: int = 64 << 20, fsync: bool = True
                 ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self._fsync = fsync
        self._lock = threading.Lock()  # guards the buffer and sequence numbers
        self._flush_lock = threading.Lock()  # one flush at a time
        self._buffer: list[bytes] = []
        segments = _segments(self.directory)
        last_seq = 0
        for i, (first, path) in enumerate(segments):
            data = path.read_bytes()
            frames, valid = _read_frames(path, data, last=i == len(segments) - 1)
            last_seq = first + len(frames) - 1 if frames else first - 1
            if valid < len(data):
                with open(path, "r+b") as f:  # drop the torn tail: it was never durable
                    f.truncate(valid)
                    os.fsync(f.fileno())
        self._next_seq = max(last_seq + 1, 1)
        self._durable_seq = self._next_seq - 1
        self._segment_first = segments[-1][0] if segments else self._next_seq
        self._file = open(self._segment_path(self._segment_first), "ab")  # noqa: SIM115
        self.flushes = 0

    def _segment_path(self, first_seq: int) -> Path:
        return self.directory / _segment_name(first_seq)

    @property
    def last_seq(self) -> int:
        """Sequence number of the last appended record (durable or not)."""
        return self._next_seq - 1

    @property
    def durable_seq(self) -> int:
        """Every record up to this sequence number is on disk."""
        return self._durable_seq

    def append(self, payload: bytes) -> int:
        """Buffer one record; return its sequence number (not durable until `flush`)."""
        frame = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            self._buffer.append(frame)
            return seq

    def flush(self) -> int:
        """Write and fsync everything appended so far; return the durable sequence number.

        Raises `StoreWriteError` on an I/O error (the records stay buffered and the
        next flush retries them).
        """
        with self._flush_lock:
            return self._flush_locked()

    def _flush_locked(self) -> int:
        with self._lock:
            frames, self._buffer = self._buffer, []
            upto = self._next_seq - 1
        if not frames:
            return self._durable_seq
        try:
            self._file.write(b"".join(frames))
            self._file.flush()
            if self._fsync:
                os.fsync(self._file.fileno())
        except OSError as e:
            with self._lock:
                self._buffer[:0] = frames
            raise StoreWriteError(f"write-ahead log {self.directory}: {e.strerror}") from e
        self._durable_seq = upto
        self.flushes += 1
        if self._file.tell() >= self.segment_bytes:
            self._roll(upto + 1)
        return upto

    def _roll(self, first_seq: int) -> None:
        self._file.close()
        self._segment_first = first_seq
        self._file = open(self._segment_path(first_seq), "ab")  # noqa: SIM115
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def roll(self) -> None:
        """Start a new segment now (after a snapshot, so old segments can be deleted).

        Records appended meanwhile by another thread go to the new segment: its
        name is the sequence number after the last record written to the old one.
        """
        with self._flush_lock:
            self._roll(self._flush_locked() + 1)

    def truncate_before(self, seq: int) -> int:
        """Delete segments whose every record precedes `seq`; return how many."""
        segments = _segments(self.directory)
        removed = 0
        for (first, path), nxt in itertools.pairwise(segments):
            if nxt[0] <= seq and first != self._segment_first:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def replay(self, after_seq: int = 0) -> Iterator[tuple[int, bytes]]:
        """Durable records with a sequence number > `after_seq`, in order."""
        yield from read_log(self.directory, after_seq=after_seq)

    def close(self) -> None:
        self.flush()
        self._file.close()


def read_log(directory: Path, *, after_seq: int = 0) -> Iterator[tuple[int, bytes]]:
    """Every complete record of the log at `directory` after `after_seq`, verified.

    Raises `CheckpointCorrupt` when the log no longer holds the record right after
    `after_seq` (its segment was truncated away): replaying from there would silently
    skip calls.
    """
    segments = _segments(Path(directory))
    expected = after_seq + 1
    for i, (first, path) in enumerate(segments):
        nxt = segments[i + 1][0] if i + 1 < len(segments) else None
        if nxt is not None and nxt <= after_seq + 1:
            continue
        frames, _ = _read_frames(path, path.read_bytes(), last=i == len(segments) - 1)
        for j, payload in enumerate(frames):
            seq = first + j
            if seq > after_seq:
                if seq != expected:
                    raise CheckpointCorrupt(
                        str(path), f"the log skips from record {expected - 1} to {seq}: "
                                   f"records {expected}..{seq - 1} were truncated away")
                expected += 1
                yield seq, payload


class LogFollower:
    """Reads the records another process appends to a log, as they become durable.

    `poll()` returns the new complete records since the last call. A record is seen
    only once its whole frame is on disk (the writer may be mid-write).
    """

    def __init__(self, directory: Path, *, after_seq: int = 0) -> None:
        self.directory = Path(directory)
        self.position = after_seq  # last sequence number delivered
        self._segment: tuple[int, Path] | None = None
        self._offset = 0
        self._next_in_segment = 0

    def poll(self) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        segments = _segments(self.directory)
        if not segments:
            return out
        for i, (first, path) in enumerate(segments):
            nxt = segments[i + 1][0] if i + 1 < len(segments) else None
            if nxt is not None and nxt <= self.position + 1:
                continue
            if self._segment != (first, path):
                self._segment = (first, path)
                self._offset = 0
                self._next_in_segment = first
            try:
                with open(path, "rb") as f:
                    f.seek(self._offset)
                    data = f.read()
            except FileNotFoundError:
                continue
            pos = 0
            while pos + _HEADER.size <= len(data):
                length, crc = _HEADER.unpack_from(data, pos)
                end = pos + _HEADER.size + length
                if end > len(data):
                    break
                payload = data[pos + _HEADER.size:end]
                if zlib.crc32(payload) != crc:
                    break  # being written; retry on the next poll
                seq = self._next_in_segment
                self._next_in_segment += 1
                if seq > self.position:
                    out.append((seq, payload))
                    self.position = seq
                pos = end
            self._offset += pos
        return out

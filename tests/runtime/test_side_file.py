"""`SideFile`: one writer at a time, and a restore that never pads a damaged file.

Seen in CI: a source worker that hung was replaced while the old one still held its
dead-letter file; the file ended with a run of NUL bytes where dead letters should have
been (a restore extended it to a mark longer than what was left). Now the second writer
waits for the first, and a restore whose prefix is not the one its checkpoint marked
raises `CheckpointCorrupt` (the job then falls back to an older checkpoint).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from checkpoint import CheckpointCorrupt
from resilience.pipeline import SideFile


def test_a_second_writer_waits_for_the_first_to_let_go(tmp_path: Path) -> None:
    first = SideFile("dead.jsonl")
    first.open(tmp_path)
    first.write(b"one\n")
    opened = threading.Event()

    def second() -> None:
        f = SideFile("dead.jsonl")
        f.open(tmp_path, lock_timeout_s=10)
        opened.set()
        f.close()

    t = threading.Thread(target=second)
    t.start()
    time.sleep(0.5)
    assert not opened.is_set()  # held by the first
    first.mark()
    first.close()
    t.join(timeout=10)
    assert opened.is_set()


def test_a_writer_that_never_lets_go_is_an_error_naming_the_file(tmp_path: Path) -> None:
    first = SideFile("dead.jsonl")
    first.open(tmp_path)
    with pytest.raises(RuntimeError, match=r"dead\.jsonl is held by another process"):
        SideFile("dead.jsonl").open(tmp_path, lock_timeout_s=0.3)
    first.close()


def test_a_restore_cuts_back_to_the_mark_and_the_replay_appends(tmp_path: Path) -> None:
    f = SideFile("dead.jsonl")
    f.open(tmp_path)
    f.write(b"a\n")
    mark = f.mark()
    f.write(b"b\n")
    f.mark()
    f.restore(mark)
    f.write(b"c\n")
    f.mark()
    assert (tmp_path / "dead.jsonl").read_bytes() == b"a\nc\n"
    f.restore(None)
    assert (tmp_path / "dead.jsonl").read_bytes() == b""
    f.close()


def test_a_file_shorter_than_its_mark_is_corrupt_never_padded(tmp_path: Path) -> None:
    f = SideFile("dead.jsonl")
    f.open(tmp_path)
    f.write(b"a\nb\nc\n")
    mark = f.mark()
    # Another writer cut the file back (what a replaced worker did).
    with (tmp_path / "dead.jsonl").open("r+b") as other:
        other.truncate(2)
    with pytest.raises(CheckpointCorrupt, match="fewer than the 6 its checkpoint marked"):
        f.restore(mark)
    assert b"\0" not in (tmp_path / "dead.jsonl").read_bytes()
    f.close()


def test_a_prefix_unlike_the_marked_one_is_corrupt(tmp_path: Path) -> None:
    f = SideFile("dead.jsonl")
    f.open(tmp_path)
    f.write(b"a\nb\n")
    mark = f.mark()
    f.write(b"c\n")
    f.mark()
    with (tmp_path / "dead.jsonl").open("r+b") as other:
        other.write(b"\0")  # same size, other bytes
    with pytest.raises(CheckpointCorrupt, match="CRC-32 differs"):
        f.restore(mark)
    f.close()

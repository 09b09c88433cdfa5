"""The write-ahead log: group commit, torn tails, corruption, segments, followers."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from checkpoint import CheckpointCorrupt
from checkpoint._wal import LogFollower, WriteAheadLog, read_log


def test_records_are_durable_only_after_flush(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    assert wal.append(b"a") == 1
    assert wal.append(b"b") == 2
    assert wal.durable_seq == 0
    assert list(read_log(tmp_path)) == []
    assert wal.flush() == 2
    assert list(read_log(tmp_path)) == [(1, b"a"), (2, b"b")]
    assert wal.flushes == 1  # two records, one fsync: group commit


def test_reopen_continues_the_sequence(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    for i in range(5):
        wal.append(str(i).encode())
    wal.close()
    again = WriteAheadLog(tmp_path)
    assert again.last_seq == 5
    assert again.append(b"x") == 6
    again.flush()
    assert [s for s, _ in again.replay(after_seq=4)] == [5, 6]


def test_torn_tail_is_dropped_and_truncated(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.append(b"one")
    wal.append(b"two")
    wal.close()
    segment = next(tmp_path.glob("*.wal"))
    data = segment.read_bytes()
    segment.write_bytes(data[:-2])  # crash in the middle of the last frame
    assert [p for _, p in read_log(tmp_path)] == [b"one"]
    again = WriteAheadLog(tmp_path)
    assert again.last_seq == 1
    assert again.append(b"three") == 2
    again.flush()
    assert [p for _, p in read_log(tmp_path)] == [b"one", b"three"]


def test_corruption_before_the_tail_is_an_error(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, segment_bytes=1)  # one record a segment
    for p in (b"aaaa", b"bbbb", b"cccc"):
        wal.append(p)
        wal.flush()
    wal.close()
    first = sorted(tmp_path.glob("*.wal"))[0]
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorrupt, match="checksum"):
        list(read_log(tmp_path))


def test_truncate_before_keeps_what_is_needed(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, segment_bytes=1)
    for i in range(1, 6):
        wal.append(bytes([i]))
        wal.flush()
    assert wal.truncate_before(4) == 3  # segments holding 1, 2, 3
    assert [s for s, _ in read_log(tmp_path, after_seq=3)] == [4, 5]
    assert [s for s, _ in read_log(tmp_path, after_seq=4)] == [5]
    # Replaying from before the truncation would skip calls: refused, not silent.
    with pytest.raises(CheckpointCorrupt, match=r"records 1\.\.3 were truncated away"):
        list(read_log(tmp_path))


def test_follower_sees_records_as_they_become_durable(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, segment_bytes=40)
    follower = LogFollower(tmp_path)
    assert follower.poll() == []
    wal.append(b"first")
    assert follower.poll() == []  # buffered, not written
    wal.flush()
    assert follower.poll() == [(1, b"first")]
    for i in range(10):  # crosses several segments
        wal.append(b"r%d" % i)
        wal.flush()
    got = follower.poll()
    assert [s for s, _ in got] == list(range(2, 12))
    assert follower.poll() == []


def test_a_flushed_record_survives_sigkill(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from checkpoint._wal import WriteAheadLog
        wal = WriteAheadLog({str(tmp_path)!r})
        wal.append(b"durable")
        wal.flush()
        wal.append(b"lost")  # buffered only
        print("ready", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL
    assert "ready" in proc.stdout
    assert [p for _, p in read_log(tmp_path)] == [b"durable"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.binary(max_size=30), max_size=6), max_size=8),
       st.integers(min_value=16, max_value=200), st.integers(min_value=0, max_value=40))
def test_any_history_reads_back_in_order(tmp_path_factory: pytest.TempPathFactory,
                                         batches: list[list[bytes]], segment: int,
                                         cut: int) -> None:
    d = tmp_path_factory.mktemp("wal")
    wal = WriteAheadLog(d, segment_bytes=segment, fsync=False)
    expected: list[bytes] = []
    for batch in batches:
        for p in batch:
            wal.append(p)
        wal.flush()
        expected.extend(batch)
    wal.close()
    assert [p for _, p in read_log(d)] == expected
    assert [s for s, _ in read_log(d)] == list(range(1, len(expected) + 1))
    # Tear the tail of the last segment by `cut` bytes: a prefix survives, in order.
    segs = sorted(d.glob("*.wal"))
    if segs and cut:
        last = segs[-1]
        data = last.read_bytes()
        last.write_bytes(data[: max(0, len(data) - cut)])
        got = [p for _, p in read_log(d)]
        assert got == expected[: len(got)]


def test_roll_while_another_thread_appends_keeps_sequence_numbers(tmp_path: Path) -> None:
    # A roll used to name the new segment after records appended but not yet written,
    # shifting the sequence number of every later record.
    import threading

    wal = WriteAheadLog(tmp_path, fsync=False)
    given_seq: dict[int, bytes] = {}
    lock = threading.Lock()

    def appender(tag: int) -> None:
        for i in range(5_000):
            payload = f"{tag}:{i}".encode()
            seq = wal.append(payload)
            with lock:
                given_seq[seq] = payload

    import sys

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often enough to hit the window
    try:
        threads = [threading.Thread(target=appender, args=(t,)) for t in range(2)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            wal.roll()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    wal.close()
    records = list(read_log(tmp_path))
    assert len(records) == len(given_seq) == 10_000
    assert all(given_seq[seq] == payload for seq, payload in records)

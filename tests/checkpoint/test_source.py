"""JsonLinesSource: lines, line numbers, positions and seeking back (a restore)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checkpoint import (
    CheckpointError,
    InputChanged,
    JsonLinesSource,
    RewindableSource,
    SourcePosition,
)

Opener = Callable[..., JsonLinesSource]


@pytest.fixture
def open_source(tmp_path: Path) -> Iterator[Opener]:
    """Write `data` to a file and open a source on it; every source is closed afterwards."""
    opened: list[JsonLinesSource] = []
    counter = iter(range(10**9))

    def make(data: bytes, read_size: int = 1 << 20) -> JsonLinesSource:
        path = tmp_path / f"input-{next(counter)}.jsonl"
        path.write_bytes(data)
        source = JsonLinesSource(path, read_size=read_size)
        opened.append(source)
        return source

    yield make
    for source in opened:
        source.close()


def expected_lines(data: bytes) -> list[tuple[int, bytes]]:
    """The file split into lines: LF ends a line, one CR before it is part of the ending."""
    pieces = data.split(b"\n")
    if pieces[-1] == b"":
        pieces.pop()
    return [(i + 1, p.removesuffix(b"\r")) for i, p in enumerate(pieces)]


def read_all(source: JsonLinesSource, batch: int = 1000) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    while lines := source.read_batch(batch):
        out.extend(lines)
    return out


def test_reads_lines_with_line_numbers(open_source: Opener) -> None:
    source = open_source(b'{"a":1}\n{"a":2}\n{"a":3}\n')
    assert isinstance(source, RewindableSource)
    assert source.read_batch(2) == [(1, b'{"a":1}'), (2, b'{"a":2}')]
    assert not source.exhausted
    assert source.read_batch(2) == [(3, b'{"a":3}')]
    assert source.exhausted
    assert source.read_batch(2) == []
    assert source.position() == SourcePosition(24, 4)


def test_crlf_empty_lines_and_last_line_without_newline(open_source: Opener) -> None:
    data = b"one\r\n\r\n\ntwo\r\r\nthree\rx\nlast"
    source = open_source(data, read_size=3)
    assert read_all(source, batch=2) == [
        (1, b"one"),
        (2, b""),
        (3, b""),
        (4, b"two\r"),  # only the CR of the CRLF ending is removed
        (5, b"three\rx"),
        (6, b"last"),
    ]
    assert source.position() == SourcePosition(len(data), 7)


def test_final_carriage_return_without_newline(open_source: Opener) -> None:
    assert read_all(open_source(b"a\nb\r")) == [(1, b"a"), (2, b"b")]
    assert read_all(open_source(b"a\n\r")) == [(1, b"a"), (2, b"")]


def test_empty_file(open_source: Opener) -> None:
    source = open_source(b"")
    assert source.read_batch(10) == []
    assert source.exhausted
    assert source.position() == SourcePosition(0, 1)


def test_file_of_only_newlines(open_source: Opener) -> None:
    assert read_all(open_source(b"\n\n\n")) == [(1, b""), (2, b""), (3, b"")]


@pytest.mark.parametrize("read_size", [1, 2, 3, 7, 64])
def test_lines_split_across_read_buffers(open_source: Opener, read_size: int) -> None:
    lines = [b"x" * n for n in (0, 1, 5, 17, 3, 100, 2)]
    data = b"\n".join(lines) + b"\n"
    source = open_source(data, read_size=read_size)
    got = []
    while batch := source.read_batch(1):
        got.extend(batch)
        # The position always points at the first byte of the next line.
        assert data[: source.position().offset].count(b"\n") == len(got)
    assert got == list(enumerate(lines, start=1))


def test_position_and_seek_reproduce_the_same_lines(open_source: Opener, tmp_path: Path) -> None:
    data = b"".join(b'{"n":%d}\n' % i for i in range(100))
    source = open_source(data, read_size=13)
    first = source.read_batch(37)
    saved = source.position()
    assert saved.next_line == 38
    assert data[saved.offset :].startswith(b'{"n":37}\n')
    rest = read_all(source, batch=9)
    source.seek(saved)
    assert read_all(source, batch=50) == rest
    # Another reader (a restored task in another process) continues alike.
    other = open_source(data, read_size=5)
    other.seek(SourcePosition.from_json(saved.to_json()))
    assert read_all(other, batch=4) == rest
    source.seek(SourcePosition())
    assert read_all(source) == first + rest


def test_seek_back_after_end_of_file(open_source: Opener) -> None:
    source = open_source(b"a\nb\nc")
    start = source.position()
    assert read_all(source) == [(1, b"a"), (2, b"b"), (3, b"c")]
    assert source.exhausted
    source.seek(start)
    assert not source.exhausted
    assert read_all(source) == [(1, b"a"), (2, b"b"), (3, b"c")]


def test_source_position_json_round_trip() -> None:
    pos = SourcePosition(offset=12345, next_line=77)
    assert pos.to_json() == {"offset": 12345, "next_line": 77}
    assert SourcePosition.from_json(pos.to_json()) == pos
    assert SourcePosition.from_json({"offset": "3", "next_line": "2"}) == SourcePosition(3, 2)


def test_missing_file_raises_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="cannot open input"):
        JsonLinesSource(tmp_path / "absent.jsonl")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(
    data=st.lists(st.sampled_from([b"a", b"bc", b"\n", b"\r", b"\r\n", b"{}", b"\xff", b" "]),
                  max_size=60).map(b"".join),
    read_size=st.integers(1, 16),
    script=st.data(),
)
def test_any_reads_and_seeks_back_give_the_file_split_into_lines(
    open_source: Opener, data: bytes, read_size: int, script: st.DataObject
) -> None:
    expected = expected_lines(data)
    source = open_source(data, read_size=read_size)
    got: list[tuple[int, bytes]] = []
    saved: list[tuple[SourcePosition, int]] = [(source.position(), 0)]
    seeks = 0
    while True:
        if seeks < 3 and script.draw(st.booleans(), label="seek back"):
            position, count = script.draw(st.sampled_from(saved), label="to")
            seeks += 1
            if script.draw(st.booleans(), label="fresh reader"):
                source = open_source(data, read_size=read_size)
            source.seek(position)
            del got[count:]
            saved = [(p, n) for p, n in saved if n <= count]
        batch = source.read_batch(script.draw(st.integers(1, 5), label="batch"))
        if not batch:
            break
        got.extend(batch)
        assert source.position().next_line == len(got) + 1
        saved.append((source.position(), len(got)))
    assert got == expected
    assert source.exhausted
    assert source.position() == SourcePosition(len(data), len(expected) + 1)


# -- input identity ---------------------------------------------------------------------


def _read_to(path: Path, lines: int) -> SourcePosition:
    source = JsonLinesSource(path)
    try:
        source.read_batch(lines)
        return source.position()
    finally:
        source.close()


def _resume(path: Path, position: SourcePosition) -> list[tuple[int, bytes]]:
    source = JsonLinesSource(path)
    try:
        source.seek(SourcePosition.from_json(position.to_json()))  # as from a checkpoint
        return read_all(source)
    finally:
        source.close()


def test_another_file_is_refused_naming_what_differs(tmp_path: Path) -> None:
    first = tmp_path / "a.jsonl"
    first.write_bytes(b"one\ntwo\nthree\n")
    position = _read_to(first, 2)
    other = tmp_path / "b.jsonl"
    other.write_bytes(b"one\nTWO\nthree\n")  # same size, one byte class differs
    with pytest.raises(InputChanged, match=r"first 8 bytes \(lines 1 to 2\) differ"):
        _resume(other, position)
    shorter = tmp_path / "c.jsonl"
    shorter.write_bytes(b"one\n")
    with pytest.raises(InputChanged, match="holds 4 bytes, fewer than the 8"):
        _resume(shorter, position)
    # The same bytes under another name are the same input.
    copy = tmp_path / "d.jsonl"
    copy.write_bytes(first.read_bytes())
    assert _resume(copy, position) == [(3, b"three")]


def test_the_same_file_grown_since_is_resumed(tmp_path: Path) -> None:
    path = tmp_path / "stream.jsonl"
    path.write_bytes(b"one\ntwo\n")
    position = _read_to(path, 10)
    with path.open("ab") as f:
        f.write(b"three\nfour\n")
    assert _resume(path, position) == [(3, b"three"), (4, b"four")]


@pytest.mark.parametrize(("grown", "expected"), [
    (b"\nnext\n", [(2, b"next")]),  # the newline the last line lacked, then more lines
    (b"\r\nnext\n", [(2, b"next")]),
    (b"", []),  # not grown at all
])
def test_a_last_line_read_without_its_newline_is_resumed_after_it(
        tmp_path: Path, grown: bytes, expected: list[tuple[int, bytes]]) -> None:
    path = tmp_path / "stream.jsonl"
    path.write_bytes(b"partial")
    position = _read_to(path, 10)
    assert position.tail_open
    with path.open("ab") as f:
        f.write(grown)
    assert _resume(path, position) == expected


def test_a_last_line_that_grew_after_it_was_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "stream.jsonl"
    path.write_bytes(b"first\npart")
    position = _read_to(path, 10)
    with path.open("ab") as f:
        f.write(b"ial\n")  # the writer had not finished the line
    with pytest.raises(InputChanged, match="line 2 was read at the end of the file without"):
        _resume(path, position)


def test_a_position_from_before_the_crc_was_recorded_still_seeks(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"a\nb\nc\n")
    assert _resume(path, SourcePosition.from_json({"offset": 2, "next_line": 2})) == [
        (2, b"b"), (3, b"c")]

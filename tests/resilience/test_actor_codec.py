"""The two formats of `@resilient` actors' calls and snapshots (pure: no Ray).

The MessagePack records are checked with the `msgpack` package directly, not through
the codec, so a codec that wrote something else would fail here.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from checkpoint import CheckpointCorrupt
from resilience import JavaCallError
from resilience._actors._codec import MSGPACK_MAGIC, CallFailed, codec_for

PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8)
    | st.binary(max_size=8) | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=4),
    max_leaves=12,
)


def _doc(state: Any, results: list[tuple[str, tuple[int, tuple[str, Any]]]]) -> dict[str, Any]:
    return {"format": 1, "state": state, "results": results, "seq": 7}


@given(call_id=st.text(max_size=10), method=st.text(min_size=1, max_size=10),
       args=st.lists(PLAIN, max_size=3), kwargs=st.dictionaries(st.text(max_size=5), PLAIN,
                                                                max_size=2))
def test_a_msgpack_call_round_trips_and_is_plain_msgpack(
    call_id: str, method: str, args: list[Any], kwargs: dict[str, Any]
) -> None:
    blob = codec_for("msgpack").encode_call(call_id, method, tuple(args), kwargs)
    assert blob[:1] == MSGPACK_MAGIC
    assert msgpack.unpackb(blob[1:], raw=False, strict_map_key=False) == [
        call_id, method, args, kwargs]
    assert codec_for("msgpack").decode_call(blob) == (call_id, method, tuple(args), kwargs)
    # A pickle actor reads it too (a log written before a format change).
    assert codec_for("pickle").decode_call(blob) == (call_id, method, tuple(args), kwargs)


@given(state=PLAIN, value=PLAIN)
def test_a_msgpack_snapshot_round_trips(state: Any, value: Any) -> None:
    codec = codec_for("msgpack")
    doc = _doc(state, [("a", (3, ("ok", value)))])
    data = codec.encode_snapshot(doc)
    raw = msgpack.unpackb(data[1:], raw=False, strict_map_key=False)
    assert raw == {"format": 1, "state": state, "results": [["a", 3, "ok", value]], "seq": 7}
    assert codec.decode_snapshot(data) == doc


def test_recorded_errors_come_back_as_their_type_or_as_call_failed() -> None:
    codec = codec_for("msgpack")

    class Mine(Exception):
        pass

    doc = _doc({}, [
        ("v", (1, ("err", ValueError("bad amount")))),
        ("j", (2, ("err", JavaCallError("a.B", "add", "java.lang.ArithmeticException")))),
        ("m", (3, ("err", Mine("custom")))),
    ])
    back = dict(codec.decode_snapshot(codec.encode_snapshot(doc))["results"])
    v, j, m = (back[k][1][1] for k in "vjm")
    assert type(v) is ValueError
    assert str(v) == "bad amount"
    assert isinstance(j, JavaCallError)
    assert (j.class_name, j.method, j.cause) == (
        "a.B", "add", "java.lang.ArithmeticException")
    assert isinstance(m, CallFailed)
    assert (m.error_type, m.message) == ("Mine", "custom")
    assert pickle.loads(pickle.dumps(m)).error_type == "Mine"  # crosses Ray processes
    # Recorded again (a later snapshot): still the original type name.
    again = dict(codec.decode_snapshot(codec.encode_snapshot(
        _doc({}, [("m", (3, ("err", m)))])))["results"])
    assert again["m"][1][1].error_type == "Mine"


class _Boom:
    """Unpickling this creates a file: proof that code from the store ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def test_a_msgpack_actor_never_unpickles_what_it_finds_in_its_store(tmp_path: Path) -> None:
    codec = codec_for("msgpack")
    marker = tmp_path / "code-ran"
    evil = pickle.dumps(_doc({"x": _Boom(marker)}, []))
    with pytest.raises(CheckpointCorrupt, match="refusing to unpickle"):
        codec.decode_snapshot(evil)
    with pytest.raises(CheckpointCorrupt, match="refusing to unpickle"):
        codec.decode_call(pickle.dumps(("id", "add", (_Boom(marker),), {})))
    assert not marker.exists()
    # Whereas pickle would have run it: the test's proof is real.
    codec_for("pickle").decode_snapshot(evil)
    assert marker.exists()


@pytest.mark.parametrize("data", [MSGPACK_MAGIC + b"\x93\x01", MSGPACK_MAGIC + b"\xc1",
                                  MSGPACK_MAGIC + msgpack.packb([1, 2])])
def test_damaged_msgpack_records_are_corrupt_not_a_crash(data: bytes) -> None:
    codec = codec_for("msgpack")
    with pytest.raises(CheckpointCorrupt):
        codec.decode_snapshot(data)
    with pytest.raises(CheckpointCorrupt):
        codec.decode_call(data)


@pytest.mark.parametrize("results", [[["id", 1, "ok"]], [5], [["id", "x", "ok", 1]],
                                     [["id", 1, "err", 7]]])
def test_a_snapshot_with_malformed_results_is_corrupt(results: list[Any]) -> None:
    data = MSGPACK_MAGIC + msgpack.packb({"format": 1, "state": {}, "seq": 1,
                                          "results": results})
    with pytest.raises(CheckpointCorrupt, match="malformed results"):
        codec_for("msgpack").decode_snapshot(data)


def test_a_pickle_snapshot_that_is_not_one_is_corrupt() -> None:
    with pytest.raises(CheckpointCorrupt, match="not a pickle"):
        codec_for("pickle").decode_snapshot(b"\x80\x05garbage")


@pytest.mark.parametrize("value", [{1, 2}, object(), 2**64, {"k": {"nested": {3}}}])
def test_values_msgpack_cannot_hold_are_refused_up_front(value: Any) -> None:
    with pytest.raises(TypeError, match=r"add\(\) of an actor in format='msgpack'"):
        codec_for("msgpack").encode_call("id", "add", (value,), {})
    with pytest.raises((TypeError, ValueError, OverflowError)):
        codec_for("msgpack").check_value(value)

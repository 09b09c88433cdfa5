"""How a `@resilient` actor's calls and snapshots become bytes: pickle or MessagePack.

``format="pickle"`` (the default) takes any Python value. ``format="msgpack"`` takes
plain data only (None, bool, int within 64 bits, float, str, bytes, lists, str- or
int-keyed dicts; tuples come back as lists) and gives three things pickle cannot:

* the snapshot and the log are **language neutral**: the Java side reads a Java
  actor's snapshot (``io.fusionresilience.Inspect``) without any Python;
* restoring **never runs code** found in the store: a checksum tells corruption from
  good data, but only a data-only format keeps a tampered file from executing;
* the bytes are **inspectable** by any MessagePack tool.

A MessagePack record starts with the byte 0xC1, which MessagePack never uses and a
pickle (protocol 2 and later start with 0x80) never starts with, so a reader tells the
two apart, and an actor in MessagePack format refuses a pickle record instead of
loading it.

The snapshot document, in MessagePack::

    {"format": 1, "seq": <last applied log position>,
     "state": <the actor's state>,
     "results": [[call_id, seq, "ok", value] | [call_id, seq, "err", error], ...]}

with ``error`` a map ``{"type": name, "message": str}`` (plus ``class_name``,
``method`` and ``cause`` for a `JavaCallError`). A log record is
``[call_id, method, [args...], {kwargs}]``.
"""

from __future__ import annotations

import builtins
import pickle
from collections.abc import Callable
from typing import Any

import msgpack

from checkpoint import CheckpointCorrupt
from resilience._errors import CallFailed

__all__ = ["FORMATS", "MSGPACK_MAGIC", "CallFailed", "Codec", "codec_for"]

FORMATS = ("pickle", "msgpack")
MSGPACK_MAGIC = b"\xc1"

Call = tuple[str, str, tuple[Any, ...], dict[str, Any]]


class Codec:
    """Encodes calls, snapshot documents and single values in one format."""

    name = "pickle"

    def encode_call(self, call_id: str, method: str, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> bytes:
        return pickle.dumps((call_id, method, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)

    def decode_call(self, blob: bytes) -> Call:
        if blob[:1] == MSGPACK_MAGIC:
            return _MSGPACK.decode_call(blob)  # a log written before a format change
        call_id, method, args, kwargs = pickle.loads(blob)  # noqa: S301 - our own log
        return call_id, method, args, kwargs

    def encode_snapshot(self, doc: dict[str, Any]) -> bytes:
        return pickle.dumps(doc, protocol=pickle.HIGHEST_PROTOCOL)

    def decode_snapshot(self, data: bytes) -> dict[str, Any]:
        if data[:1] == MSGPACK_MAGIC:
            return _MSGPACK.decode_snapshot(data)
        try:
            doc = pickle.loads(data)  # noqa: S301 - our own snapshot, checksummed
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise CheckpointCorrupt("actor snapshot", f"not a pickle: {e}") from e
        if not isinstance(doc, dict):
            raise CheckpointCorrupt("actor snapshot", f"holds a {type(doc).__name__}")
        return doc

    def check_value(self, value: Any) -> None:
        """Raise if ``value`` cannot be encoded (names the culprit's type)."""
        pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


class MsgpackCodec(Codec):
    """Plain data in MessagePack, each record behind the 0xC1 marker byte."""

    name = "msgpack"

    def encode_call(self, call_id: str, method: str, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> bytes:
        try:
            return MSGPACK_MAGIC + _pack([call_id, method, list(args), kwargs])
        except (TypeError, ValueError, OverflowError) as e:
            raise TypeError(f"a call to {method}() of an actor in format='msgpack' takes "
                            f"plain data only: {e}") from None

    def decode_call(self, blob: bytes) -> Call:
        record = _unpack(blob, "actor log record")
        if not (isinstance(record, list) and len(record) == 4):
            raise CheckpointCorrupt("actor log record", "not [call_id, method, args, kwargs]")
        call_id, method, args, kwargs = record
        return str(call_id), str(method), tuple(args), dict(kwargs)

    def encode_snapshot(self, doc: dict[str, Any]) -> bytes:
        results = [[call_id, seq, kind, _encode_error(value) if kind == "err" else value]
                   for call_id, (seq, (kind, value)) in doc["results"]]
        return MSGPACK_MAGIC + _pack({**doc, "results": results})

    def decode_snapshot(self, data: bytes) -> dict[str, Any]:
        doc = _unpack(data, "actor snapshot")
        if not isinstance(doc, dict) or not {"state", "results", "seq"} <= doc.keys():
            raise CheckpointCorrupt("actor snapshot", "not a snapshot document")
        try:
            doc["results"] = [
                (call_id, (int(seq), (kind, _decode_error(value) if kind == "err" else value)))
                for call_id, seq, kind, value in doc["results"]]
        except (TypeError, ValueError, AttributeError) as e:
            raise CheckpointCorrupt("actor snapshot", f"malformed results: {e}") from e
        return dict(doc)

    def check_value(self, value: Any) -> None:
        _pack(value)


_PICKLE = Codec()
_MSGPACK = MsgpackCodec()


def codec_for(format_name: str) -> Codec:
    return _MSGPACK if format_name == "msgpack" else _PICKLE


def _pack(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True, strict_types=False)
    return data


def _unpack(data: bytes, what: str) -> Any:
    if data[:1] != MSGPACK_MAGIC:
        # Never unpickled: an actor in MessagePack format does not run code from its store.
        raise CheckpointCorrupt(what, "not a MessagePack record (refusing to unpickle it)")
    try:
        return msgpack.unpackb(data[1:], raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise CheckpointCorrupt(what, f"not valid MessagePack: {e}") from e


def _encode_error(error: BaseException) -> dict[str, str]:
    encoded = {"type": type(error).__name__, "message": str(error)}
    for attr in ("class_name", "method", "cause"):  # JavaCallError's fields
        value = getattr(error, attr, None)
        if isinstance(value, str):
            encoded[attr] = value
    if isinstance(error, CallFailed):  # replayed once already: keep the original type
        encoded.update(type=error.error_type, message=error.message)
    return encoded


def _decode_error(encoded: dict[str, str]) -> BaseException:
    name, message = encoded.get("type", "Exception"), encoded.get("message", "")
    if name == "JavaCallError" and {"class_name", "method", "cause"} <= encoded.keys():
        from resilience._errors import JavaCallError

        return JavaCallError(encoded["class_name"], encoded["method"], encoded["cause"])
    builtin: Callable[[str], BaseException] | None = getattr(builtins, name, None)
    if isinstance(builtin, type) and issubclass(builtin, Exception):
        return builtin(message)
    return CallFailed(name, message)

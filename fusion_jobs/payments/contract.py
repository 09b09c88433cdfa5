"""The payments job's input contract, enforced at the door (README, "The input contract").

Each rule exists because a line that broke it once got past validation and then
could not be processed or stored: an amount of 2^70 broke the state encoding, two
large transfers overflowed SQLite's 64-bit integers, a lone surrogate escape made
every later write of its id fail, and deep nesting blew the parser's recursion.
A line is judged here once; whatever is rejected is dead-lettered with the reason
and never reaches a stage that could choke on it.

The independent checker (`fusion_jobs.payments.checker`) implements the same rules on its
own; the two must agree line for line (tests/jobs/test_contract.py draws hostile
lines and holds them to that).
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

__all__ = [
    "BALANCE_MAX",
    "BALANCE_MIN",
    "MAX_AMOUNT",
    "MAX_ID_BYTES",
    "MAX_LINE_BYTES",
    "MAX_NESTING",
    "OUT_OF_RANGE_REASON",
    "apply_to_balances",
    "dead_letter_entry",
    "parse_transfer",
]

MAX_LINE_BYTES = 1 << 20
"""Longest line accepted, in bytes, without its line ending."""

MAX_NESTING = 16
"""Deepest nesting of arrays and objects accepted (the transfer object itself is 1)."""

MAX_ID_BYTES = 256
"""Longest `id`, `from` or `to`, in UTF-8 bytes: each is kept in state for good."""

MAX_AMOUNT = 2**53 - 1
"""Largest amount in cents: the integers every JSON implementation reads exactly."""

BALANCE_MIN = -(2**63)
BALANCE_MAX = 2**63 - 1
"""A balance always fits a signed 64-bit integer (SQLite's INTEGER, Java's long)."""

OUT_OF_RANGE_REASON = "balance out of range"
"""A transfer refused by rule 9 has a dead-letter reason starting with this."""

_FIELDS = ("id", "from", "to")
# A JSON string (its escapes included) as bytes; what is left outside them are the brackets.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class _HugeInt:
    """An integer literal too long to be an amount (Python refuses to read 4,300+ digits)."""

    def __repr__(self) -> str:
        return "an integer of more than 40 digits"


_HUGE = _HugeInt()


def _parse_int(text: str) -> Any:
    return int(text) if len(text) <= 40 else _HUGE


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
# Python refuses to read an integer of 4,300+ digits, which is valid JSON: only a line the
# plain decoder refuses for that is read again with a hook (a hook per integer would cost
# a tenth of the source's time on every line).
_HUGE_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_int=_parse_int)
# For the surrogate rule: objects as lists of pairs, so a value a repeated key
# replaced is judged too ("every string in it").
_PAIRS_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_int=_parse_int,
                                  object_pairs_hook=list)


def _nesting_depth(raw: bytes) -> int:
    """Deepest run of open brackets outside JSON strings (exact for valid JSON)."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_JSON_STRING.sub(b"", raw)):
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _lone_surrogate(doc: Any) -> str | None:
    """The first string at any depth holding a lone surrogate, if any.

    `doc` comes from `_PAIRS_DECODER`: objects are lists of (key, value) pairs.
    """
    if isinstance(doc, str):
        try:
            doc.encode("utf-8")
        except UnicodeEncodeError:
            return doc
        return None
    if isinstance(doc, (list, tuple)):
        for value in doc:
            found = _lone_surrogate(value)
            if found is not None:
                return found
    return None


def _escaped(text: str, limit: int = 80) -> str:
    """`text` as a printable, writable repr (lone surrogates escaped), cut at `limit`."""
    shown = repr(text[:limit])
    return shown + ("..." if len(text) > limit else "")


def parse_transfer(raw: bytes) -> tuple[str, str, str, int] | str:
    """(id, from, to, amount) of a line that passes rules 1-7, or why it does not.

    `raw` is the line without its ending. Rules 8 (duplicate ids) and 9 (balances)
    need the lines before it: the source applies them.
    """
    if len(raw) > MAX_LINE_BYTES:
        return f"line of {len(raw):,} bytes is longer than {MAX_LINE_BYTES:,}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not UTF-8: {e.reason} at byte {e.start}"
    if raw.count(b"[") + raw.count(b"{") > MAX_NESTING:
        depth = _nesting_depth(raw)
        if depth > MAX_NESTING:
            return f"nested {depth} deep, more than {MAX_NESTING}"
    try:
        try:
            doc = _DECODER.decode(text)
        except ValueError as e:
            if "integer string conversion" not in str(e):
                raise
            doc = _HUGE_DECODER.decode(text)
    except (ValueError, RecursionError) as e:
        return f"not valid JSON: {e}"
    if not isinstance(doc, dict):
        return f"not a JSON object but {type(doc).__name__}"
    if b"\\u" in raw:  # only an escape can make a lone surrogate in decoded UTF-8
        bad = _lone_surrogate(_PAIRS_DECODER.decode(text))
        if bad is not None:
            return f"string {_escaped(bad)} holds a lone surrogate: not valid Unicode"
    fields = []
    for name in _FIELDS:
        if name not in doc:
            return f"missing field {name!r}"
        value = doc[name]
        if not isinstance(value, str) or not value:
            return f"field {name!r} must be a non-empty string, got {_shown(value)}"
        if len(value) > MAX_ID_BYTES // 4 and len(value.encode("utf-8")) > MAX_ID_BYTES:
            return f"field {name!r} is longer than {MAX_ID_BYTES} bytes"
        fields.append(value)
    if "amount" not in doc:
        return "missing field 'amount'"
    amount = doc["amount"]
    if type(amount) is not int:
        return f"amount must be an integer number of cents, got {_shown(amount)}"
    if not 1 <= amount <= MAX_AMOUNT:
        return f"amount must be from 1 to {MAX_AMOUNT}, got {_shown(amount)}"
    return fields[0], fields[1], fields[2], amount


_TS = re.compile(rb'"ts"\s*:\s*(-?\d{1,18})\s*[,}]')


def transfer_ts(raw: bytes) -> int | None:
    """The event time (``"ts"``, integer milliseconds) of a line that passed
    `parse_transfer`, or None when it has none. Only orders labels against transfers; no
    rule depends on it."""
    found = _TS.search(raw)
    return int(found.group(1)) if found else None


def parse_label(raw: bytes) -> tuple[str, bool, int] | str:
    """(id, fraud, ts) of a labels line, or why it is refused.

    A label is a JSON object with a non-empty string ``id``, a boolean ``fraud`` and an
    optional integer ``ts`` (the event time it became known; without one it is due at
    once). The size, nesting, UTF-8 and surrogate rules of transfers apply.
    """
    if len(raw) > MAX_LINE_BYTES:
        return f"line of {len(raw):,} bytes is longer than {MAX_LINE_BYTES:,}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not UTF-8: {e.reason} at byte {e.start}"
    if raw.count(b"[") + raw.count(b"{") > MAX_NESTING:
        depth = _nesting_depth(raw)
        if depth > MAX_NESTING:
            return f"nested {depth} deep, more than {MAX_NESTING}"
    try:
        doc = _DECODER.decode(text)
    except (ValueError, RecursionError) as e:
        return f"not valid JSON: {e}"
    if not isinstance(doc, dict):
        return f"not a JSON object but {type(doc).__name__}"
    if b"\\u" in raw:
        bad = _lone_surrogate(_PAIRS_DECODER.decode(text))
        if bad is not None:
            return f"string {_escaped(bad)} holds a lone surrogate: not valid Unicode"
    tx_id = doc.get("id")
    if not isinstance(tx_id, str) or not tx_id:
        return f"field 'id' must be a non-empty string, got {_shown(tx_id)}"
    if len(tx_id.encode("utf-8")) > MAX_ID_BYTES:
        return f"field 'id' is longer than {MAX_ID_BYTES} bytes"
    fraud = doc.get("fraud")
    if type(fraud) is not bool:
        return f"field 'fraud' must be true or false, got {_shown(fraud)}"
    ts = doc.get("ts", -1)
    if type(ts) is not int or not -1 <= ts < 1 << 62:
        return f"field 'ts' must be an integer number of milliseconds, got {_shown(ts)}"
    return tx_id, fraud, ts


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def apply_to_balances(
    balance_of: Any, src: str, dst: str, amount: int
) -> tuple[int, int] | str:
    """Rule 9: the new (sender, receiver) balances, or why the transfer is refused.

    `balance_of(account)` gives an account's current balance (0 when new). The debit
    applies first, so a self-transfer can only fail on its debit.
    """
    after_debit = balance_of(src) - amount
    if after_debit < BALANCE_MIN:
        return (f"{OUT_OF_RANGE_REASON}: debiting {amount} would take {_escaped(src)} "
                f"to {after_debit}, below {BALANCE_MIN}")
    after_credit = (after_debit if dst == src else balance_of(dst)) + amount
    if after_credit > BALANCE_MAX:
        return (f"{OUT_OF_RANGE_REASON}: crediting {amount} would take {_escaped(dst)} "
                f"to {after_credit}, above {BALANCE_MAX}")
    return after_debit, after_credit


def dead_letter_entry(line_no: int, reason: str, raw: bytes) -> bytes:
    """One dead-letter line: the reason and the input line, losslessly.

    `raw` is kept as text when it is UTF-8, else as `raw_b64` (its bytes in base64).
    """
    entry: dict[str, Any] = {"line": line_no, "reason": reason}
    try:
        entry["raw"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        entry["raw_b64"] = base64.b64encode(raw).decode("ascii")
    # The reason may quote input; json.dumps escapes everything (ASCII output).
    return json.dumps(entry).encode("ascii") + b"\n"

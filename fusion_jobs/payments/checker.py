"""Independent exactly-once checker for the payments reference job.

``verify(input_path, workdir)`` re-reads the job's input and judges its output
(``workdir/ledger.sqlite`` and ``workdir/dead_letter.jsonl``): every valid transfer
applied exactly once, as exactly one debit and one credit leg, every rejected line
dead-lettered exactly once, every account's ``balance_after`` chain consistent and
the ``balances`` table equal to a recomputation from the input.

This module imports the standard library only, never the job, ``resilience``,
``checkpoint`` or ``chaos``: a bug in shared code must not be able to hide itself
by being wrong in the same way twice. It re-implements the input contract (README,
"The input contract"). A line ends at ``\\n``; one ``\\r`` right before that
``\\n`` belongs to the ending. Every line is judged in this order, the first broken
rule deciding:

1. INVALID when the line without its ending is longer than 1,048,576 bytes;
2. INVALID when it is not UTF-8;
3. INVALID when arrays and objects nest more than 16 deep: the most ``[``/``{``
   open at once outside JSON strings, counted on the bytes before any parsing, so
   a deeply nested line never reaches the JSON parser;
4. INVALID when it is not strict JSON (``NaN``, ``Infinity`` and ``-Infinity``
   are rejected; integers of any length are JSON) or not an object; a repeated key
   keeps its last value, as in ``json.loads``, and extra fields are ignored;
5. INVALID when any string in it, keys and the values of repeated keys included,
   holds a lone surrogate (an escape such as ``"\\ud800"`` without its pair;
   ``"\\ud83d\\ude00"`` is one character and fine);
6. INVALID when ``id``, ``from`` or ``to`` is missing, not a string, empty or longer
   than 256 bytes in UTF-8;
7. INVALID when ``amount`` is missing or not an integer from 1 to 2**53 - 1 (bools,
   ``10.0`` and ``"100"`` are not integers);
8. DUPLICATE when an earlier line that passed 1-7 has the same id: the first such
   line owns the id, even when rule 9 then rejects it;
9. OUT OF RANGE when applying the transfer would take the sender's balance below
   -2**63 (the debit) or, after the debit, the receiver's above 2**63 - 1 (the
   credit; a transfer to the sender itself can only fail on its debit). Balances
   start at 0 and change only by applied transfers, in input order; an OUT OF
   RANGE transfer changes no balance and keeps its id owned.

Every other line is VALID and applied once, as a debit leg (``from``,
``-amount``) and a credit leg (``to``, ``+amount``). ``parse_transfer`` applies
rules 1-7 to one line.

The dead-letter file holds one JSON object a line, ``{"line": <1-based input line>,
"reason": "<text>", "raw": "<the line without its ending>"}``, or for a line that
is not UTF-8 ``"raw_b64"`` (standard base64 of the line's bytes without the ending)
instead of ``"raw"``. The raw content is compared byte for byte with the input
line. A DUPLICATE's reason starts with ``"duplicate id"``, an OUT OF RANGE line's
with ``"balance out of range"``, an INVALID line's with neither. A missing
dead-letter file counts as an empty one.

When the ledger's postings have a ``model_version`` column (the fraud model's version
that scored the transfer), ``workdir/models_history.jsonl`` must hold the model's
history, one JSON object a line: ``{"model": "fraud", "kind": "publish", "version": V,
"position": P}`` for every published version (``P``: the input line of the last transfer
scored before it; null for a version published before any), and ``{"model": "fraud",
"kind": "move", "alias": "serving", "evidence": {"marked_bad": [V, ...], "position": P},
...}`` for every rollback. Then every posting's version must be an integer, published once,
at a position before the posting's line; both legs of a transfer carry the same version;
and no posting after a rollback's position carries a version it marked bad. With a
reference ledger that has the column too, versions must be equal row for row.

The input, the ledger and the dead letters are each streamed once. Kept per valid
event are its id, accounts (shared strings), amount and leg counters, about 250
bytes, so a million-line input needs some 250 MB and half a minute at worst; per
rejected line only its kind and a hash of its bytes are kept, per account its
balance. Most lines skip the nesting scan (at most 16 ``[``/``{`` bytes in all) and
the surrogate walk (no ``\\uD800``-``\\uDFFF`` escape in the bytes).
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sqlite3
import sys
import tempfile
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

__all__ = [
    "DUPLICATE_REASON_PREFIX",
    "MAX_AMOUNT",
    "MAX_BALANCE",
    "MAX_FIELD_BYTES",
    "MAX_LINE_BYTES",
    "MAX_NESTING",
    "MIN_BALANCE",
    "OUT_OF_RANGE_REASON_PREFIX",
    "SAMPLE_LIMIT",
    "SCORE_TOLERANCE",
    "CheckerInputError",
    "Transfer",
    "Verdict",
    "main",
    "parse_transfer",
    "run_cli",
    "verify",
]

DUPLICATE_REASON_PREFIX: Final = "duplicate id"
"""A dead-letter reason for a replayed id starts with this text."""

OUT_OF_RANGE_REASON_PREFIX: Final = "balance out of range"
"""A dead-letter reason for a transfer that would overflow a balance starts with this."""

MAX_LINE_BYTES: Final = 1_048_576
"""Longest valid line, in bytes without its ending (rule 1)."""

MAX_NESTING: Final = 16
"""Most arrays and objects open at once in a valid line (rule 3)."""

MAX_FIELD_BYTES: Final = 256
"""Longest valid ``id``, ``from`` or ``to``, in UTF-8 bytes (rule 6)."""

MAX_AMOUNT: Final = 2**53 - 1
"""Largest valid ``amount`` in cents (rule 7); the smallest is 1."""

MIN_BALANCE: Final = -(2**63)
MAX_BALANCE: Final = 2**63 - 1
"""Every balance stays within [MIN_BALANCE, MAX_BALANCE] (rule 9)."""

SAMPLE_LIMIT: Final = 10
"""At most this many offending ids, accounts or lines are kept per check."""

SCORE_TOLERANCE: Final = 1e-9
"""Absolute tolerance on ``score`` when comparing with a reference ledger."""

LEDGER_NAME: Final = "ledger.sqlite"
DEAD_LETTER_NAME: Final = "dead_letter.jsonl"
MODELS_HISTORY_NAME: Final = "models_history.jsonl"
FRAUD_MODEL: Final = "fraud"
"""The model whose version the ledger's ``model_version`` column names."""

_REQUIRED_COLUMNS: Final = {
    "postings": ("event_id", "account", "delta", "balance_after"),
    "balances": ("account", "balance"),
}


class CheckerInputError(Exception):
    """An input, ledger or dead-letter file is missing or unreadable (exit code 2)."""


@dataclass(frozen=True, slots=True)
class Transfer:
    """One line that passes rules 1-7: a transfer of ``amount`` cents."""

    id: str
    from_account: str
    to_account: str
    amount: int


def _reject_constant(name: str) -> Any:
    # json.loads accepts NaN and Infinity by default; RFC 8259 does not.
    raise ValueError(f"{name} is not valid JSON")


class _HugeInteger:
    """A JSON integer with more digits than ``int()`` converts (sys.int_max_str_digits)."""


_HUGE_INTEGER: Final = _HugeInteger()


def _integer(digits: str) -> int | _HugeInteger:
    # Python refuses to convert integers of thousands of digits (a ValueError), JSON
    # does not: such a number is valid JSON, only never a valid amount.
    try:
        return int(digits)
    except ValueError:
        return _HUGE_INTEGER


def _flatten_pairs(pairs: list[tuple[str, Any]]) -> list[Any]:
    return [item for pair in pairs for item in pair]


# One decoder for all lines: json.loads with a keyword builds a new one per call.
_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)
# For the rare line the fast decoder refuses: integers of any length.
_LENIENT_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant, parse_int=_integer)
# Every object as a flat list of its keys and values, repeated keys included: the
# strings rule 5 has to look at, dropped values too.
_ALL_STRINGS_DECODER: Final = json.JSONDecoder(
    parse_constant=_reject_constant, parse_int=_integer, object_pairs_hook=_flatten_pairs
)

# A JSON string (unterminated: to the end of the line) or one bracket, on the bytes.
# UTF-8 continuation bytes are >= 0x80, so they never look like '"', '\\' or brackets.
_NESTING_TOKEN: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]', re.DOTALL)
_QUOTE: Final = ord('"')
_OPENERS: Final = (ord("["), ord("{"))
# The only way to a surrogate in a UTF-8 line's JSON: an escape \uD800 to \uDFFF.
_BACKSLASH: Final = ord("\\")  # an int: `in` on bytes is then a fast byte search
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE: Final = re.compile(r"[\ud800-\udfff]")

# A character is at most 4 UTF-8 bytes: a field this short needs no encoding to measure.
_SHORT_FIELD: Final = MAX_FIELD_BYTES // 4

_JSON_TYPE_NAMES: Final = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def _nested_too_deep(content: bytes) -> bool:
    """Whether more than MAX_NESTING arrays/objects are open at once outside strings.

    Callers skip it for a line of at most MAX_NESTING ``[``/``{`` bytes in all.
    """
    depth = 0
    for token in _NESTING_TOKEN.finditer(content):
        first = content[token.start()]
        if first == _QUOTE:
            continue
        if first in _OPENERS:
            depth += 1
            if depth > MAX_NESTING:
                return True
        elif depth:
            depth -= 1
    return False


def _has_lone_surrogate(content: bytes, text: str) -> bool:
    """Whether any string of the (parsed, strict) JSON ``text`` holds a lone surrogate.

    Callers skip it for a line without a backslash: no escape, no surrogate.
    """
    if _SURROGATE_ESCAPE.search(content) is None:
        return False
    # Paired escapes become one character; a lone one stays a surrogate.
    pending: list[Any] = [_ALL_STRINGS_DECODER.decode(text)]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return True
        elif isinstance(value, list):
            pending.extend(value)
    return False


def _judge(content: bytes, text: str) -> tuple[str, str, str, int] | str:
    """Rules 3-7 for a line of at most MAX_LINE_BYTES ``content`` whose UTF-8 is ``text``.

    Returns (id, from, to, amount), or the reason the line is invalid.
    """
    # The fast paths are inline: this runs for every line of inputs of millions.
    if content.count(b"[") + content.count(b"{") > MAX_NESTING and _nested_too_deep(content):
        return f"arrays and objects nested more than {MAX_NESTING} deep"
    try:
        document = _DECODER.decode(text)
    except ValueError:  # JSONDecodeError is a ValueError
        try:
            document = _LENIENT_DECODER.decode(text)
        except ValueError as error:
            return f"invalid JSON: {error}"
    if not isinstance(document, dict):
        return f"not a JSON object but {_JSON_TYPE_NAMES.get(type(document), 'a value')}"
    if _BACKSLASH in content and _has_lone_surrogate(content, text):
        return "a string holds a lone surrogate"
    for name in ("id", "from", "to", "amount"):
        if name not in document:
            return f"missing field {name!r}"
    for name in ("id", "from", "to"):
        value = document[name]
        if not isinstance(value, str):
            return f"field {name!r} is not a string"
        if not value:
            return f"field {name!r} is empty"
        if (
            len(value) > _SHORT_FIELD
            and len(value.encode("utf-8", "surrogatepass")) > MAX_FIELD_BYTES
        ):
            return f"field {name!r} is longer than {MAX_FIELD_BYTES} UTF-8 bytes"
    amount = document["amount"]
    # type() rather than isinstance(): True is an int to isinstance, not to the contract.
    if type(amount) is not int:
        if amount is _HUGE_INTEGER:
            return f"amount is larger than {MAX_AMOUNT}"
        return "field 'amount' is not an integer"
    if amount < 1:
        return f"amount {amount} is not positive"
    if amount > MAX_AMOUNT:
        return f"amount is larger than {MAX_AMOUNT}"
    return document["id"], document["from"], document["to"], amount


def _too_long(length: int) -> str:
    return f"line of {length} bytes is longer than {MAX_LINE_BYTES}"


def parse_transfer(raw: str) -> Transfer | str:
    """Validate one input line (without its ending) against rules 1-7 of the contract.

    Returns the ``Transfer``, or the reason the line is invalid. Rule 1 measures
    the UTF-8 encoding of ``raw``; a ``raw`` holding a surrogate character cannot
    have come from UTF-8 (rule 2). Duplicate ids and balances out of range
    (rules 8 and 9) cannot be seen from one line; ``verify`` detects them.
    """
    try:
        content = raw.encode("utf-8")
    except UnicodeEncodeError:
        length = len(raw.encode("utf-8", "surrogatepass"))
        return _too_long(length) if length > MAX_LINE_BYTES else "not UTF-8"
    if len(content) > MAX_LINE_BYTES:
        return _too_long(len(content))
    parsed = _judge(content, raw)
    if isinstance(parsed, str):
        return parsed
    return Transfer(*parsed)


@dataclass(frozen=True)
class Verdict:
    """The checker's findings; ``ok`` is True only when every check holds.

    Counts of input: ``input_lines`` = ``valid_events`` (the transfers that must
    be applied) + ``invalid_lines`` + ``duplicate_lines`` + ``out_of_range_lines``
    (transfers rejected because a balance would leave the 64-bit range).
    Counts of output: ``posting_rows``, ``applied_events`` (valid events with at
    least one posting) and ``dead_lettered`` (entries in the dead-letter file).

    Error counts, each zero on a correct run:

    * ``missing_events``: valid events without any posting;
    * ``duplicated_events``: events with more than two postings or a leg twice;
    * ``unexpected_postings``: posting rows whose ``event_id`` is no valid event
      (unknown ids, ids of invalid lines and of out-of-range transfers);
    * ``leg_errors``: events whose postings are not exactly a debit of ``from``
      by ``-amount`` and a credit of ``to`` by ``+amount`` (a wrong or lacking leg);
    * ``dead_letter_errors``: rejected lines not dead-lettered, lines
      dead-lettered twice, entries for valid or nonexistent lines, malformed
      entries, a wrong kind of reason, a ``raw`` unlike the input line;
    * ``chain_errors``: accounts whose ``balance_after`` in rowid order is not the
      running sum of their deltas from 0;
    * ``balance_errors``: accounts missing from, extra in, or wrong in ``balances``
      (every account of an applied transfer needs a row, a zero balance too; an
      account named only by rejected lines has none);
    * ``reference_mismatches``: posting rows present in only one of this ledger
      and the reference ledger, or differing (None when no reference was given);
    * ``model_errors``: postings whose model version is not an integer, was never
      published or published after the posting's line, differs between the two legs,
      or was marked bad by a rollback before the posting's line; and problems of the
      history file itself (None when the ledger has no ``model_version`` column).
      ``model_versions`` and ``rollbacks`` count what the history holds.

    ``samples`` maps each error count's name to at most ``SAMPLE_LIMIT`` offending
    event ids, accounts, or ``"line N: problem"`` texts for dead letters. An id or
    account that is not printable as it is (a control character, a lone surrogate)
    is shown as its ``repr``, quotes included.
    """

    input_lines: int
    valid_events: int
    invalid_lines: int
    duplicate_lines: int
    out_of_range_lines: int
    posting_rows: int
    applied_events: int
    dead_lettered: int
    missing_events: int
    duplicated_events: int
    unexpected_postings: int
    leg_errors: int
    dead_letter_errors: int
    chain_errors: int
    balance_errors: int
    reference_mismatches: int | None = None
    model_errors: int | None = None
    model_versions: int = 0
    rollbacks: int = 0
    samples: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True only when every check holds."""
        return all(count == 0 for _, count, _ in self._checks())

    def _checks(self) -> list[tuple[str, int, str]]:
        checks = [
            ("missing_events", self.missing_events, "valid events without postings"),
            ("duplicated_events", self.duplicated_events, "events with extra or repeated legs"),
            ("unexpected_postings", self.unexpected_postings, "postings of no valid event"),
            ("leg_errors", self.leg_errors, "events whose legs do not match the transfer"),
            (
                "dead_letter_errors",
                self.dead_letter_errors,
                f"dead-letter problems ({self.dead_lettered} entries)",
            ),
            ("chain_errors", self.chain_errors, "accounts with a broken balance_after chain"),
            ("balance_errors", self.balance_errors, "accounts wrong in the balances table"),
        ]
        if self.model_errors is not None:
            checks.append((
                "model_errors", self.model_errors,
                f"postings whose model version was unpublished, bad or mixed "
                f"({self.model_versions} versions, {self.rollbacks} rollbacks)"))
        if self.reference_mismatches is not None:
            checks.append(
                (
                    "reference_mismatches",
                    self.reference_mismatches,
                    "posting rows unlike the reference ledger",
                )
            )
        return checks

    def summary(self) -> str:
        """Return a human-readable multi-line report, one line per check."""
        lines = [
            f"exactly-once check: {'OK' if self.ok else 'FAIL'}",
            f"  input: {self.input_lines} lines = {self.valid_events} valid events"
            f" + {self.invalid_lines} invalid + {self.duplicate_lines} duplicates"
            f" + {self.out_of_range_lines} out of range",
            f"  ledger: {self.posting_rows} posting rows,"
            f" {self.applied_events} of {self.valid_events} valid events applied",
        ]
        for name, count, description in self._checks():
            line = f"  {'OK  ' if count == 0 else 'FAIL'} {name:<21} {count:>8}  {description}"
            sample = self.samples.get(name, ())
            if count and sample:
                line += "; e.g. " + ", ".join(sample)
            lines.append(line)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Return the verdict as JSON-serialisable data, ``ok`` included."""
        return {
            "ok": self.ok,
            "input_lines": self.input_lines,
            "valid_events": self.valid_events,
            "invalid_lines": self.invalid_lines,
            "duplicate_lines": self.duplicate_lines,
            "out_of_range_lines": self.out_of_range_lines,
            "posting_rows": self.posting_rows,
            "applied_events": self.applied_events,
            "dead_lettered": self.dead_lettered,
            "missing_events": self.missing_events,
            "duplicated_events": self.duplicated_events,
            "unexpected_postings": self.unexpected_postings,
            "leg_errors": self.leg_errors,
            "dead_letter_errors": self.dead_letter_errors,
            "chain_errors": self.chain_errors,
            "balance_errors": self.balance_errors,
            "reference_mismatches": self.reference_mismatches,
            "model_errors": self.model_errors,
            "model_versions": self.model_versions,
            "rollbacks": self.rollbacks,
            "samples": {name: list(sample) for name, sample in self.samples.items()},
        }


def _printable(value: object) -> str:
    """``value`` as text, its ``repr`` when it holds anything unprintable.

    Ids and accounts come from the ledger, which could hold anything: a line feed
    would break the summary's layout, a lone surrogate its printing.
    """
    text = str(value)
    return text if text.isprintable() else repr(text)


class _Findings:
    """Error counts with bounded samples, filled in by the individual checks."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.samples: dict[str, list[str]] = {}

    def add(self, name: str, example: object, count: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + count
        sample = self.samples.setdefault(name, [])
        if len(sample) < SAMPLE_LIMIT:
            sample.append(_printable(example))

    def count(self, name: str) -> int:
        return self.counts.get(name, 0)


def _split_line(raw_line: bytes) -> bytes:
    """The line without its ending: ``\\n`` or the end of the file, with one ``\\r``
    right before it."""
    if raw_line.endswith(b"\n"):
        raw_line = raw_line[:-1]
    return raw_line[:-1] if raw_line.endswith(b"\r") else raw_line


# Kinds of rejected lines.
_INVALID: Final = 0
_DUPLICATE: Final = 1
_OUT_OF_RANGE: Final = 2


@dataclass
class _Input:
    """What the checker keeps of the input: per applied event, per rejected line.

    Applied events are numbered in input order; ``index_of`` maps an id to its
    number and the parallel lists hold the transfer. Rejected lines keep only
    their kind, whether they are UTF-8 and the hash of their bytes, which is all
    the dead-letter check needs, so a mostly-invalid input stays small too.
    ``balances`` holds every account of an applied transfer, after all of them.
    """

    lines: int = 0
    index_of: dict[str, int] = field(default_factory=dict)
    senders: list[str] = field(default_factory=list)
    receivers: list[str] = field(default_factory=list)
    amounts: list[int] = field(default_factory=list)
    line_of: array = field(default_factory=lambda: array("q"))  # type: ignore[type-arg]
    balances: dict[str, int] = field(default_factory=dict)
    rejected: dict[int, tuple[int, bool, int]] = field(default_factory=dict)
    invalid: int = 0
    duplicates: int = 0
    out_of_range: int = 0


def _read_input(input_path: Path) -> _Input:
    """Stream the input once, judging every line like the contract says."""
    seen = _Input()
    index_of, balances, rejected = seen.index_of, seen.balances, seen.rejected
    # Ids owned by a transfer that rule 9 rejected: their replays are duplicates.
    owned_unapplied: set[str] = set()
    # One string object per account: millions of events name a few accounts.
    accounts: dict[str, str] = {}
    intern = accounts.setdefault
    balance_of = balances.get
    judge, line_limit, lowest, highest = _judge, MAX_LINE_BYTES, MIN_BALANCE, MAX_BALANCE
    number = 0
    try:
        with input_path.open("rb") as source:
            for number, raw_line in enumerate(source, start=1):
                content = _split_line(raw_line)
                try:
                    text = content.decode("utf-8")
                except UnicodeDecodeError:  # rule 2, or rule 1 first: INVALID either way
                    rejected[number] = (_INVALID, False, hash(content))
                    seen.invalid += 1
                    continue
                # Rule 1, then rules 3-7; the reason itself does not matter here.
                parsed = "too long" if len(content) > line_limit else judge(content, text)
                if isinstance(parsed, str):
                    rejected[number] = (_INVALID, True, hash(content))
                    seen.invalid += 1
                    continue
                event_id, sender, receiver, amount = parsed
                if event_id in index_of or event_id in owned_unapplied:
                    rejected[number] = (_DUPLICATE, True, hash(content))
                    seen.duplicates += 1
                    continue
                sender = intern(sender, sender)
                receiver = intern(receiver, receiver)
                debited = balance_of(sender, 0) - amount
                credited = (debited if sender == receiver else balance_of(receiver, 0)) + amount
                if debited < lowest or credited > highest:
                    owned_unapplied.add(event_id)
                    rejected[number] = (_OUT_OF_RANGE, True, hash(content))
                    seen.out_of_range += 1
                    continue
                balances[sender] = debited
                balances[receiver] = credited  # a self-transfer: back where it was
                index_of[event_id] = len(index_of)
                seen.senders.append(sender)
                seen.receivers.append(receiver)
                seen.amounts.append(amount)
                seen.line_of.append(number)
    except OSError as error:
        raise CheckerInputError(f"cannot read input {input_path}: {error}") from error
    seen.lines = number
    return seen


def _lenient_text(value: bytes) -> str:
    # A ledger's TEXT need not be UTF-8; such a value is simply unlike every input id.
    return value.decode("utf-8", "surrogateescape")


def _schema_problem(ledger: sqlite3.Connection) -> str | None:
    for table, columns in _REQUIRED_COLUMNS.items():
        present = {row[1] for row in ledger.execute(f"PRAGMA table_info({table})")}
        if not present:
            return f"has no {table} table"
        lacking = [column for column in columns if column not in present]
        if lacking:
            return f"table {table} lacks column(s) {', '.join(lacking)}"
    return None


def _open_ledger(path: Path, what: str) -> sqlite3.Connection:
    if not path.is_file():
        raise CheckerInputError(f"{what} not found: {path}")
    # Read-only: the checker must never repair or lock the evidence it judges.
    ledger = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    ledger.text_factory = _lenient_text
    try:
        problem = _schema_problem(ledger)
    except sqlite3.Error as error:
        ledger.close()
        raise CheckerInputError(f"cannot read {what} {path}: {error}") from error
    if problem is not None:
        ledger.close()
        raise CheckerInputError(f"{what} {path} {problem}")
    return ledger


def _check_postings(ledger: sqlite3.Connection, seen: _Input, findings: _Findings) -> int:
    """Match postings with events and walk every account's chain; return the row count.

    One pass in rowid order does both. A posting is a debit when it moves
    ``-amount`` on ``from``, a credit when it moves ``+amount`` on ``to``, and
    wrong otherwise (both at once would need a zero amount); a correct event has
    exactly one debit and one credit. An account's chain is broken when some
    ``balance_after`` is not the sum of its deltas so far, starting from 0.
    """
    events = len(seen.index_of)
    # Compact per-event counters: a million events cost 24 MB here, not 100+.
    debits = array("l", [0]) * events
    credits = array("l", [0]) * events
    wrong = array("l", [0]) * events
    index_of, senders, receivers, amounts = (
        seen.index_of,
        seen.senders,
        seen.receivers,
        seen.amounts,
    )
    unexpected: dict[Any, int] = {}
    running: dict[Any, int] = {}
    broken: set[Any] = set()
    rows = 0
    for event_id, account, delta, balance_after in ledger.execute(
        "SELECT event_id, account, delta, balance_after FROM postings ORDER BY rowid"
    ):
        rows += 1
        if account not in broken:
            if type(delta) is int and type(balance_after) is int:
                balance = running.get(account, 0) + delta
                running[account] = balance
                if balance != balance_after:
                    broken.add(account)
            else:
                broken.add(account)
        index = index_of.get(event_id)
        if index is None:
            unexpected[event_id] = unexpected.get(event_id, 0) + 1
        elif account == senders[index] and delta == -amounts[index]:
            debits[index] += 1
        elif account == receivers[index] and delta == amounts[index]:
            credits[index] += 1
        else:
            wrong[index] += 1

    for event_id, count in unexpected.items():
        findings.add("unexpected_postings", event_id, count)
    for account in sorted(broken, key=str):
        findings.add("chain_errors", account)
    for event_id, index in index_of.items():
        debit, credit, bad = debits[index], credits[index], wrong[index]
        legs = debit + credit + bad
        if legs == 0:
            findings.add("missing_events", event_id)
            continue
        if legs > 2 or debit > 1 or credit > 1:
            findings.add("duplicated_events", event_id)
        if bad or not debit or not credit:
            findings.add("leg_errors", event_id)
    return rows


def _check_balances(ledger: sqlite3.Connection, seen: _Input, findings: _Findings) -> None:
    """The balances table must equal the balances recomputed from the applied transfers."""
    expected = seen.balances
    wrong: set[Any] = set()
    listed: set[Any] = set()
    for account, balance in ledger.execute("SELECT account, balance FROM balances"):
        # type() so that 5.0 or "5" is not taken for the integer 5.
        if account in listed or type(balance) is not int or expected.get(account) != balance:
            wrong.add(account)
        listed.add(account)
    wrong.update(account for account in expected if account not in listed)
    for account in sorted(wrong, key=str):
        findings.add("balance_errors", account)


def _dead_letter_entries(path: Path) -> Iterator[tuple[int, bytes]]:
    if not path.exists():
        return
    try:
        with path.open("rb") as source:
            yield from enumerate(source, start=1)
    except OSError as error:
        raise CheckerInputError(f"cannot read dead letters {path}: {error}") from error


def _entry_raw(entry: dict[str, Any]) -> tuple[bool, bytes | None] | None:
    """(whether as raw_b64, the bytes it stands for) of a dead-letter entry; None: malformed.

    The bytes are None for a ``raw`` holding a lone surrogate: no line of the input.
    """
    if ("raw" in entry) == ("raw_b64" in entry):
        return None  # both or neither
    if "raw" in entry:
        raw = entry["raw"]
        if not isinstance(raw, str):
            return None
        try:
            return False, raw.encode("utf-8")
        except UnicodeEncodeError:
            return False, None
    encoded = entry["raw_b64"]
    if not isinstance(encoded, str):
        return None
    try:
        decoded = base64.b64decode(encoded, validate=True)
    except ValueError:  # binascii.Error is one, so are non-ASCII characters
        return None
    # Standard base64 has one spelling per byte string: no excess or missing padding.
    if base64.b64encode(decoded).decode("ascii") != encoded:
        return None
    return True, decoded


def _reason_kind(reason: str) -> int:
    if reason.startswith(DUPLICATE_REASON_PREFIX):
        return _DUPLICATE
    if reason.startswith(OUT_OF_RANGE_REASON_PREFIX):
        return _OUT_OF_RANGE
    return _INVALID


def _reason_problem(kind: int, reason_kind: int) -> str:
    if kind == _DUPLICATE:
        return f"duplicate's reason does not start with {DUPLICATE_REASON_PREFIX!r}"
    if kind == _OUT_OF_RANGE:
        return f"out-of-range line's reason does not start with {OUT_OF_RANGE_REASON_PREFIX!r}"
    prefix = DUPLICATE_REASON_PREFIX if reason_kind == _DUPLICATE else OUT_OF_RANGE_REASON_PREFIX
    return f"invalid line's reason starts with {prefix!r}"


def _check_dead_letters(path: Path, seen: _Input, findings: _Findings) -> int:
    """Every rejected line dead-lettered once, with the right kind of reason and raw.

    Returns the number of entries in the dead-letter file.
    """
    problem = "dead_letter_errors"
    entries = 0
    times: dict[int, int] = {}
    for entries, raw_entry in _dead_letter_entries(path):
        try:
            entry = json.loads(_split_line(raw_entry).decode("utf-8"))
        except (ValueError, RecursionError):
            entry = None
        raw = _entry_raw(entry) if isinstance(entry, dict) else None
        if (
            raw is None
            or not isinstance(entry, dict)
            or type(entry.get("line")) is not int
            or not isinstance(entry.get("reason"), str)
        ):
            findings.add(problem, f"entry {entries}: malformed dead-letter entry")
            continue
        line: int = entry["line"]
        times[line] = times.get(line, 0) + 1
        if not 1 <= line <= seen.lines:
            findings.add(problem, f"line {line}: no such input line")
            continue
        if line not in seen.rejected:
            findings.add(problem, f"line {line}: valid line dead-lettered")
            continue
        kind, is_utf8, raw_hash = seen.rejected[line]
        reason_kind = _reason_kind(entry["reason"])
        if reason_kind != kind:
            findings.add(problem, f"line {line}: {_reason_problem(kind, reason_kind)}")
        as_base64, raw_bytes = raw
        if as_base64 == is_utf8:
            findings.add(
                problem,
                f"line {line}: "
                + ("raw_b64 for a UTF-8 line" if is_utf8 else "raw for a line that is not UTF-8"),
            )
        elif raw_bytes is None or hash(raw_bytes) != raw_hash:
            findings.add(problem, f"line {line}: raw differs from the input line")
    for line, count in sorted(times.items()):
        if count > 1:
            findings.add(problem, f"line {line}: dead-lettered {count} times")
    for line in seen.rejected:
        if line not in times:
            findings.add(problem, f"line {line}: rejected line not dead-lettered")
    return entries


def _has_column(ledger: sqlite3.Connection, table: str, column: str) -> bool:
    return any(row[1] == column for row in ledger.execute(f"PRAGMA table_info({table})"))


@dataclass
class _History:
    published: dict[int, int | None] = field(default_factory=dict)  # version -> position
    rollbacks: list[tuple[int, frozenset[int]]] = field(default_factory=list)


def _read_history(path: Path, findings: _Findings) -> _History:
    history = _History()
    if not path.is_file():
        findings.add("model_errors", f"{path.name}: missing (the ledger names model versions)")
        return history
    with path.open("rb") as source:
        for number, raw in enumerate(source, start=1):
            try:
                entry = json.loads(raw)
            except ValueError:
                findings.add("model_errors", f"{path.name} line {number}: not JSON")
                continue
            if not isinstance(entry, dict) or entry.get("model") != FRAUD_MODEL:
                continue
            kind = entry.get("kind")
            if kind == "publish":
                version, position = entry.get("version"), entry.get("position")
                if type(version) is not int or not (position is None
                                                    or type(position) is int):
                    findings.add("model_errors", f"{path.name} line {number}: bad publish")
                elif version in history.published:
                    findings.add("model_errors", f"version {version} published twice")
                else:
                    history.published[version] = position
            elif kind == "move":
                evidence = entry.get("evidence")
                if not isinstance(evidence, dict):
                    evidence = {}
                bad = evidence.get("marked_bad")
                if entry.get("alias") != "serving" or not bad:
                    continue
                if not isinstance(bad, list):
                    findings.add("model_errors", f"{path.name} line {number}: bad rollback")
                    continue
                position = evidence.get("position")
                if type(position) is not int or not all(type(v) is int for v in bad):
                    findings.add("model_errors", f"{path.name} line {number}: bad rollback")
                    continue
                history.rollbacks.append((position, frozenset(bad)))
    history.rollbacks.sort(key=lambda r: r[0])
    return history


def _check_models(ledger: sqlite3.Connection, history_path: Path, seen: _Input,
                  findings: _Findings) -> _History:
    """Every posting's model version against the model's history (module docstring)."""
    history = _read_history(history_path, findings)
    published, rollbacks = history.published, history.rollbacks
    index_of, line_of = seen.index_of, seen.line_of
    versions: dict[int, int] = {}  # event index -> the version of its first leg
    for event_id, version in ledger.execute(
            "SELECT event_id, model_version FROM postings ORDER BY rowid"):
        index = index_of.get(event_id)
        if index is None:
            continue  # an unexpected posting: counted by _check_postings
        if type(version) is not int:
            findings.add("model_errors", f"{event_id}: model_version {version!r}")
            continue
        first = versions.setdefault(index, version)
        if first != version:
            findings.add("model_errors", f"{event_id}: legs scored by versions {first} "
                                         f"and {version}")
        line = line_of[index]
        if version not in published:
            findings.add("model_errors", f"{event_id}: version {version} never published")
            continue
        at = published[version]
        if at is not None and at >= line:
            findings.add("model_errors", f"{event_id} (line {line}): version {version} "
                                         f"published after it, at line {at}")
        for position, bad in rollbacks:
            if position >= line:
                break
            if version in bad:
                findings.add("model_errors", f"{event_id} (line {line}): version {version} "
                                             f"was rolled back at line {position}")
                break
    return history


def _check_reference(ledger_path: Path, reference_path: Path, findings: _Findings) -> None:
    """Compare posting rows with a crash-free run's ledger, in any global order.

    Rows are matched on (event_id, account, delta, n-th such row) and compared on
    balance_after, score and (when both ledgers have it) model_version; balance_after
    already pins each account's order.
    Both ledgers are copied into a scratch database in a temporary directory, so
    memory stays flat however long the ledgers are.
    """
    with tempfile.TemporaryDirectory(prefix="resilience-verify-") as scratch_dir:
        scratch = sqlite3.connect(Path(scratch_dir) / "scratch.sqlite")
        scratch.text_factory = _lenient_text
        try:
            # The scratch database is disposable: durability would only cost time.
            scratch.execute("PRAGMA journal_mode = OFF")
            scratch.execute("PRAGMA synchronous = OFF")
            for schema, path in (("run", ledger_path), ("reference", reference_path)):
                scratch.execute(
                    f"ATTACH DATABASE ? AS {schema}", (path.resolve().as_uri() + "?mode=ro",)
                )
            versioned = all(
                any(row[1] == "model_version"
                    for row in scratch.execute(f"PRAGMA {schema}.table_info(postings)"))
                for schema in ("run", "reference"))
            version = "model_version" if versioned else "NULL AS model_version"
            for schema in ("run", "reference"):
                scratch.execute(
                    f"CREATE TABLE {schema}_rows AS SELECT event_id, account, delta, "
                    f"balance_after, score, {version}, ROW_NUMBER() OVER (PARTITION BY "
                    "event_id, account, delta ORDER BY balance_after, score) AS nth "
                    f"FROM {schema}.postings"
                )
                scratch.execute(
                    f"CREATE INDEX {schema}_key ON {schema}_rows(event_id, account, delta, nth)"
                )
            for this, other in (("run_rows", "reference_rows"), ("reference_rows", "run_rows")):
                # From the run's side every difference shows; from the reference's
                # side only its rows absent from the run, or a difference counts twice.
                differs = (
                    "OR o.balance_after IS NOT t.balance_after "
                    "OR o.model_version IS NOT t.model_version OR NOT ("
                    "(o.score IS NULL AND t.score IS NULL) OR abs(o.score - t.score) <= ?)"
                    if this == "run_rows"
                    else ""
                )
                parameters: tuple[float, ...] = (SCORE_TOLERANCE,) if differs else ()
                for (event_id,) in scratch.execute(
                    f"SELECT t.event_id FROM {this} AS t LEFT JOIN {other} AS o "
                    "ON o.event_id IS t.event_id AND o.account IS t.account "
                    "AND o.delta IS t.delta AND o.nth = t.nth "
                    f"WHERE o.nth IS NULL {differs} ORDER BY t.event_id",
                    parameters,
                ):
                    findings.add("reference_mismatches", event_id)
        finally:
            scratch.close()


def verify(input_path: Path, workdir: Path, *, reference_ledger: Path | None = None) -> Verdict:
    """Judge whether the job in ``workdir`` processed ``input_path`` exactly once.

    Reads ``workdir/ledger.sqlite`` (read-only) and ``workdir/dead_letter.jsonl``
    (absent means empty). With ``reference_ledger``, the posting rows must also
    equal those of that ledger (a crash-free run), ``score`` within
    ``SCORE_TOLERANCE``.

    Raises CheckerInputError when the input or a ledger is missing or unreadable,
    or a ledger lacks the ``postings``/``balances`` tables or their columns.
    Everything else, however wrong, is reported in the Verdict.
    """
    if not input_path.is_file():
        raise CheckerInputError(f"input file not found: {input_path}")
    ledger_path = workdir / LEDGER_NAME
    findings = _Findings()
    try:
        ledger = _open_ledger(ledger_path, "ledger")
        try:
            if reference_ledger is not None:
                _open_ledger(reference_ledger, "reference ledger").close()
            seen = _read_input(input_path)
            posting_rows = _check_postings(ledger, seen, findings)
            _check_balances(ledger, seen, findings)
            history = (_check_models(ledger, workdir / MODELS_HISTORY_NAME, seen, findings)
                       if _has_column(ledger, "postings", "model_version") else None)
        finally:
            ledger.close()
        dead_lettered = _check_dead_letters(workdir / DEAD_LETTER_NAME, seen, findings)
        if reference_ledger is not None:
            _check_reference(ledger_path, reference_ledger, findings)
    except sqlite3.Error as error:
        raise CheckerInputError(f"cannot read a ledger: {error}") from error

    events = len(seen.index_of)
    return Verdict(
        input_lines=seen.lines,
        valid_events=events,
        invalid_lines=seen.invalid,
        duplicate_lines=seen.duplicates,
        out_of_range_lines=seen.out_of_range,
        posting_rows=posting_rows,
        applied_events=events - findings.count("missing_events"),
        dead_lettered=dead_lettered,
        missing_events=findings.count("missing_events"),
        duplicated_events=findings.count("duplicated_events"),
        unexpected_postings=findings.count("unexpected_postings"),
        leg_errors=findings.count("leg_errors"),
        dead_letter_errors=findings.count("dead_letter_errors"),
        chain_errors=findings.count("chain_errors"),
        balance_errors=findings.count("balance_errors"),
        reference_mismatches=(
            findings.count("reference_mismatches") if reference_ledger is not None else None
        ),
        model_errors=findings.count("model_errors") if history is not None else None,
        model_versions=len(history.published) if history is not None else 0,
        rollbacks=len(history.rollbacks) if history is not None else 0,
        samples={name: tuple(sample) for name, sample in findings.samples.items()},
    )


def _print(text: str, stream: TextIO) -> None:
    """Print ``text`` escaping whatever the stream cannot encode: never a crash.

    Samples are printable already, but an ASCII stream cannot take an account "é",
    and a path from the command line may hold a surrogate escape.
    """
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        text = text.encode(encoding, "backslashreplace").decode(encoding)
    except (LookupError, UnicodeError):
        text = text.encode("ascii", "backslashreplace").decode("ascii")
    print(text, file=stream)


def run_cli(
    input_path: Path,
    workdir: Path,
    json_out: Path | None = None,
    *,
    reference_ledger: Path | None = None,
) -> int:
    """Verify, print the summary, optionally write the verdict as JSON.

    Returns 0 iff the verdict is ok, 1 when a check fails, 2 (after a one-line
    ``error: ...`` on stderr, no traceback) when a file is missing or unreadable.
    """
    try:
        verdict = verify(input_path, workdir, reference_ledger=reference_ledger)
    except CheckerInputError as error:
        _print(f"error: {error}", sys.stderr)
        return 2
    _print(verdict.summary(), sys.stdout)
    if json_out is not None:
        try:
            json_out.write_text(json.dumps(verdict.to_dict(), indent=2) + "\n", encoding="utf-8")
        except OSError as error:
            _print(f"error: cannot write {json_out}: {error}", sys.stderr)
            return 2
    return 0 if verdict.ok else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resilience verify",
        description="Check that a payments run applied its input exactly once.",
    )
    parser.add_argument("--input", required=True, type=Path, help="the job's JSON Lines input")
    parser.add_argument("--workdir", required=True, type=Path, help="holds ledger.sqlite")
    parser.add_argument("--json", type=Path, default=None, help="also write the verdict here")
    parser.add_argument(
        "--reference", type=Path, default=None, help="a crash-free run's ledger.sqlite"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: ``--input FILE --workdir DIR [--json FILE] [--reference DB]``."""
    arguments = _parser().parse_args(argv)
    return run_cli(
        arguments.input, arguments.workdir, arguments.json, reference_ledger=arguments.reference
    )


if __name__ == "__main__":
    raise SystemExit(main())

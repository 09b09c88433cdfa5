"""Independent exactly-once checker for the payments reference job.

``verify(input_path, workdir)`` re-reads the job's input and judges its output
(``workdir/ledger.sqlite`` and ``workdir/dead_letter.jsonl``): every valid transfer
applied exactly once, as exactly one debit and one credit leg, every rejected line
dead-lettered exactly once, every account's ``balance_after`` chain consistent and
the ``balances`` table equal to a recomputation from the input.

This module imports the standard library only, never the job, ``resilience``,
``checkpoint`` or ``chaos``: a bug in shared code must not be able to hide itself
by being wrong in the same way twice. It re-implements the input contract:

* lines end at ``\\n`` (a ``\\r`` right before it belongs to the line ending);
* a line is INVALID when it is not UTF-8, not strict JSON (``NaN`` and
  ``Infinity`` are rejected), not an object, lacks ``id``, ``from``, ``to`` or
  ``amount``, has an ``id``/``from``/``to`` that is not a non-empty string, or an
  ``amount`` that is not an integer (bools, ``10.0`` and ``"100"`` are not) or is
  ``<= 0``; extra fields are ignored and a repeated key keeps its last value, as
  in ``json.loads``;
* a valid line whose id already appeared on an earlier valid line is a DUPLICATE.

The dead-letter file holds one JSON object a line, ``{"line": <1-based input line>,
"reason": "<text>", "raw": "<the line without its newline>"}``; a duplicate's reason
starts with ``"duplicate id"`` and an invalid line's reason must not. A missing
dead-letter file counts as an empty one.

The input, the ledger and the dead letters are each streamed once. Kept per valid
event are its id, accounts (shared strings), amount and leg counters, about 250
bytes, so a million-line input needs some 250 MB and half a minute at worst; per
rejected line only a hash of its text is kept.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

__all__ = [
    "DUPLICATE_REASON_PREFIX",
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

SAMPLE_LIMIT: Final = 10
"""At most this many offending ids, accounts or lines are kept per check."""

SCORE_TOLERANCE: Final = 1e-9
"""Absolute tolerance on ``score`` when comparing with a reference ledger."""

LEDGER_NAME: Final = "ledger.sqlite"
DEAD_LETTER_NAME: Final = "dead_letter.jsonl"

_REQUIRED_COLUMNS: Final = {
    "postings": ("event_id", "account", "delta", "balance_after"),
    "balances": ("account", "balance"),
}


class CheckerInputError(Exception):
    """An input, ledger or dead-letter file is missing or unreadable (exit code 2)."""


@dataclass(frozen=True, slots=True)
class Transfer:
    """One valid input line: a transfer of ``amount`` cents (> 0)."""

    id: str
    from_account: str
    to_account: str
    amount: int


def _reject_constant(name: str) -> Any:
    # json.loads accepts NaN and Infinity by default; RFC 8259 does not.
    raise ValueError(f"{name} is not valid JSON")


# One decoder for all lines: json.loads with a keyword builds a new one per call.
_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)

_JSON_TYPE_NAMES: Final = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def _parse(raw: str) -> tuple[str, str, str, int] | str:
    """Return (id, from, to, amount) of a valid line, else the reason it is invalid."""
    try:
        document = _DECODER.decode(raw)
    except (ValueError, RecursionError) as error:  # JSONDecodeError is a ValueError
        return f"invalid JSON: {error}"
    if not isinstance(document, dict):
        return f"not a JSON object but {_JSON_TYPE_NAMES.get(type(document), 'a value')}"
    for name in ("id", "from", "to", "amount"):
        if name not in document:
            return f"missing field {name!r}"
    for name in ("id", "from", "to"):
        value = document[name]
        if not isinstance(value, str):
            return f"field {name!r} is not a string"
        if not value:
            return f"field {name!r} is empty"
    amount = document["amount"]
    # type() rather than isinstance(): True is an int to isinstance, not to the contract.
    if type(amount) is not int:
        return "field 'amount' is not an integer"
    if amount <= 0:
        return f"amount {amount} is not positive"
    return document["id"], document["from"], document["to"], amount


def parse_transfer(raw: str) -> Transfer | str:
    """Validate one input line (without its newline) against the input contract.

    Returns the ``Transfer``, or the reason the line is invalid. Duplicate ids
    cannot be seen from one line; ``verify`` detects them across lines.
    """
    parsed = _parse(raw)
    if isinstance(parsed, str):
        return parsed
    return Transfer(*parsed)


@dataclass(frozen=True)
class Verdict:
    """The checker's findings; ``ok`` is True only when every check holds.

    Counts of input: ``input_lines``, ``valid_events`` (distinct valid transfers,
    the ones that must be applied), ``invalid_lines``, ``duplicate_lines``.
    Counts of output: ``posting_rows``, ``applied_events`` (valid events with at
    least one posting) and ``dead_lettered`` (entries in the dead-letter file).

    Error counts, each zero on a correct run:

    * ``missing_events``: valid events without any posting;
    * ``duplicated_events``: events with more than two postings or a leg twice;
    * ``unexpected_postings``: posting rows whose ``event_id`` is no valid event
      (unknown ids and ids of invalid lines);
    * ``leg_errors``: events whose postings are not exactly a debit of ``from``
      by ``-amount`` and a credit of ``to`` by ``+amount`` (a wrong or lacking leg);
    * ``dead_letter_errors``: rejected lines not dead-lettered, lines
      dead-lettered twice, entries for valid or nonexistent lines, malformed
      entries, a wrong kind of reason, a ``raw`` unlike the input line;
    * ``chain_errors``: accounts whose ``balance_after`` in rowid order is not the
      running sum of their deltas from 0;
    * ``balance_errors``: accounts missing from, extra in, or wrong in ``balances``
      (every account of an applied transfer needs a row, a zero balance too);
    * ``reference_mismatches``: posting rows present in only one of this ledger
      and the reference ledger, or differing (None when no reference was given).

    ``samples`` maps each error count's name to at most ``SAMPLE_LIMIT`` offending
    event ids, accounts, or ``"line N: problem"`` texts for dead letters.
    """

    input_lines: int
    valid_events: int
    invalid_lines: int
    duplicate_lines: int
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
            f" + {self.invalid_lines} invalid + {self.duplicate_lines} duplicates",
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
            "samples": {name: list(sample) for name, sample in self.samples.items()},
        }


class _Findings:
    """Error counts with bounded samples, filled in by the individual checks."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.samples: dict[str, list[str]] = {}

    def add(self, name: str, example: object, count: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + count
        sample = self.samples.setdefault(name, [])
        if len(sample) < SAMPLE_LIMIT:
            sample.append(str(example))

    def count(self, name: str) -> int:
        return self.counts.get(name, 0)


def _split_line(raw_line: bytes) -> bytes:
    if raw_line.endswith(b"\n"):
        raw_line = raw_line[:-1]
    if raw_line.endswith(b"\r"):
        raw_line = raw_line[:-1]
    return raw_line


@dataclass
class _Input:
    """What the checker keeps of the input: per valid event, per rejected line.

    Events are numbered in input order; ``index_of`` maps an id to its number and
    the parallel lists hold the transfer. Rejected lines keep only whether they
    are duplicates and the hash of their text (None when not UTF-8), which is
    all the dead-letter check needs, so a mostly-invalid input stays small too.
    """

    lines: int = 0
    index_of: dict[str, int] = field(default_factory=dict)
    senders: list[str] = field(default_factory=list)
    receivers: list[str] = field(default_factory=list)
    amounts: list[int] = field(default_factory=list)
    rejected: dict[int, tuple[bool, int | None]] = field(default_factory=dict)
    invalid: int = 0
    duplicates: int = 0


def _read_input(input_path: Path) -> _Input:
    """Stream the input once, validating every line like the contract says."""
    seen = _Input()
    index_of = seen.index_of
    # One string object per account: millions of events name a few accounts.
    accounts: dict[str, str] = {}
    intern = accounts.setdefault
    number = 0
    try:
        with input_path.open("rb") as source:
            for number, raw_line in enumerate(source, start=1):
                try:
                    raw = _split_line(raw_line).decode("utf-8")
                except UnicodeDecodeError:
                    seen.rejected[number] = (False, None)
                    seen.invalid += 1
                    continue
                parsed = _parse(raw)
                if isinstance(parsed, str):
                    seen.rejected[number] = (False, hash(raw))
                    seen.invalid += 1
                    continue
                event_id, sender, receiver, amount = parsed
                if event_id in index_of:
                    seen.rejected[number] = (True, hash(raw))
                    seen.duplicates += 1
                    continue
                index_of[event_id] = len(index_of)
                seen.senders.append(intern(sender, sender))
                seen.receivers.append(intern(receiver, receiver))
                seen.amounts.append(amount)
    except OSError as error:
        raise CheckerInputError(f"cannot read input {input_path}: {error}") from error
    seen.lines = number
    return seen


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
    """The balances table must equal the balances recomputed from the input."""
    expected: dict[str, int] = {}
    for sender, receiver, amount in zip(seen.senders, seen.receivers, seen.amounts, strict=True):
        expected[sender] = expected.get(sender, 0) - amount
        expected[receiver] = expected.get(receiver, 0) + amount
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
        if (
            not isinstance(entry, dict)
            or type(entry.get("line")) is not int
            or not isinstance(entry.get("reason"), str)
            or not isinstance(entry.get("raw"), str)
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
        is_duplicate, raw_hash = seen.rejected[line]
        if entry["reason"].startswith(DUPLICATE_REASON_PREFIX) != is_duplicate:
            findings.add(
                problem,
                f"line {line}: "
                + (
                    f"duplicate's reason does not start with {DUPLICATE_REASON_PREFIX!r}"
                    if is_duplicate
                    else f"invalid line's reason starts with {DUPLICATE_REASON_PREFIX!r}"
                ),
            )
        # The input's raw lost a "\r" before "\n" as line ending; so does the entry's.
        if raw_hash is not None and hash(entry["raw"].removesuffix("\r")) != raw_hash:
            findings.add(problem, f"line {line}: raw differs from the input line")
    for line, count in sorted(times.items()):
        if count > 1:
            findings.add(problem, f"line {line}: dead-lettered {count} times")
    for line in seen.rejected:
        if line not in times:
            findings.add(problem, f"line {line}: rejected line not dead-lettered")
    return entries


def _check_reference(ledger_path: Path, reference_path: Path, findings: _Findings) -> None:
    """Compare posting rows with a crash-free run's ledger, in any global order.

    Rows are matched on (event_id, account, delta, n-th such row) and compared on
    balance_after and score; balance_after already pins each account's order.
    Both ledgers are copied into a scratch database in a temporary directory, so
    memory stays flat however long the ledgers are.
    """
    with tempfile.TemporaryDirectory(prefix="resilience-verify-") as scratch_dir:
        scratch = sqlite3.connect(Path(scratch_dir) / "scratch.sqlite")
        try:
            # The scratch database is disposable: durability would only cost time.
            scratch.execute("PRAGMA journal_mode = OFF")
            scratch.execute("PRAGMA synchronous = OFF")
            for schema, path in (("run", ledger_path), ("reference", reference_path)):
                scratch.execute(
                    f"ATTACH DATABASE ? AS {schema}", (path.resolve().as_uri() + "?mode=ro",)
                )
                scratch.execute(
                    f"CREATE TABLE {schema}_rows AS SELECT event_id, account, delta, "
                    "balance_after, score, ROW_NUMBER() OVER (PARTITION BY event_id, account, "
                    "delta ORDER BY balance_after, score) AS nth "
                    f"FROM {schema}.postings"
                )
                scratch.execute(
                    f"CREATE INDEX {schema}_key ON {schema}_rows(event_id, account, delta, nth)"
                )
            for this, other in (("run_rows", "reference_rows"), ("reference_rows", "run_rows")):
                # From the run's side every difference shows; from the reference's
                # side only its rows absent from the run, or a difference counts twice.
                differs = (
                    "OR o.balance_after IS NOT t.balance_after OR NOT ("
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
        samples={name: tuple(sample) for name, sample in findings.samples.items()},
    )


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
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(verdict.summary())
    if json_out is not None:
        try:
            json_out.write_text(json.dumps(verdict.to_dict(), indent=2) + "\n", encoding="utf-8")
        except OSError as error:
            print(f"error: cannot write {json_out}: {error}", file=sys.stderr)
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

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

Memory stays small for inputs of millions of lines: the input is streamed into a
scratch SQLite database in a temporary directory and compared with set queries.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
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

_INVALID: Final = 0
_VALID: Final = 1
_DUPLICATE: Final = 2
_BATCH: Final = 10_000
_SQLITE_MAX_INTEGER: Final = 2**63 - 1
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
    * ``balance_errors``: accounts missing from, extra in, or wrong in ``balances``;
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


def _scan_input(scratch: sqlite3.Connection, input_path: Path) -> int:
    """Stream the input into the scratch ``lines`` table; return the line count."""
    insert = "INSERT INTO lines VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    batch: list[tuple[object, ...]] = []
    number = 0
    try:
        with input_path.open("rb") as source:
            for number, raw_line in enumerate(source, start=1):
                try:
                    raw = _split_line(raw_line).decode("utf-8")
                except UnicodeDecodeError:
                    # No text to compare a dead letter's raw with; the line is invalid.
                    batch.append((number, _INVALID, None, None, None, None, None, None))
                else:
                    parsed = _parse(raw)
                    if isinstance(parsed, str):
                        batch.append((number, _INVALID, None, None, None, None, None, raw))
                    else:
                        tx_id, from_account, to_account, amount = parsed
                        # The contract bounds no amount but SQLite integers stop at
                        # 2**63 - 1: larger ones are kept as text, so no leg can match.
                        if amount <= _SQLITE_MAX_INTEGER:
                            batch.append(
                                (number, _VALID, tx_id, from_account, to_account, amount, None, raw)
                            )
                        else:
                            batch.append(
                                (
                                    number,
                                    _VALID,
                                    tx_id,
                                    from_account,
                                    to_account,
                                    None,
                                    str(amount),
                                    raw,
                                )
                            )
                if len(batch) >= _BATCH:
                    scratch.executemany(insert, batch)
                    batch.clear()
    except OSError as error:
        raise CheckerInputError(f"cannot read input {input_path}: {error}") from error
    scratch.executemany(insert, batch)
    scratch.execute("CREATE INDEX lines_by_id ON lines(id, line)")
    # The first valid line of an id is the event; later valid lines replay it.
    # The subquery tests status != INVALID, which the update does not change.
    scratch.execute(
        "UPDATE lines SET status = ? WHERE status = ? AND line > "
        "(SELECT MIN(first.line) FROM lines AS first "
        " WHERE first.id = lines.id AND first.status != ?)",
        (_DUPLICATE, _VALID, _INVALID),
    )
    return number


def _attach(scratch: sqlite3.Connection, path: Path, schema: str, what: str) -> None:
    if not path.is_file():
        raise CheckerInputError(f"{what} not found: {path}")
    # Read-only: the checker must never repair or lock the evidence it judges.
    uri = path.resolve().as_uri() + "?mode=ro"
    try:
        scratch.execute(f"ATTACH DATABASE ? AS {schema}", (uri,))
        for table, columns in _REQUIRED_COLUMNS.items():
            present = {row[1] for row in scratch.execute(f"PRAGMA {schema}.table_info({table})")}
            if not present:
                raise CheckerInputError(f"{what} {path} has no {table} table")
            lacking = [column for column in columns if column not in present]
            if lacking:
                raise CheckerInputError(
                    f"{what} {path}: table {table} lacks column(s) {', '.join(lacking)}"
                )
    except sqlite3.DatabaseError as error:
        raise CheckerInputError(f"cannot read {what} {path}: {error}") from error


def _check_legs(scratch: sqlite3.Connection, findings: _Findings) -> int:
    """Match each event's postings with its transfer; return the applied events.

    A posting is a debit when it moves ``-amount`` on ``from``, a credit when it
    moves ``+amount`` on ``to``, and wrong otherwise (both at once would need a
    zero amount). A correct event has exactly one debit and one credit.
    """
    scratch.execute(
        "CREATE TABLE event_legs AS "
        "SELECT p.event_id AS event_id, MAX(e.line) AS line, COUNT(*) AS legs, "
        "SUM(CASE WHEN p.account = e.from_acct AND p.delta = -e.amount THEN 1 ELSE 0 END) "
        "  AS debits, "
        "SUM(CASE WHEN p.account = e.to_acct AND p.delta = e.amount THEN 1 ELSE 0 END) "
        "  AS credits "
        "FROM ledger.postings AS p "
        "LEFT JOIN lines AS e ON e.id = p.event_id AND e.status = ? "
        "GROUP BY p.event_id",
        (_VALID,),
    )
    scratch.execute("CREATE INDEX event_legs_by_id ON event_legs(event_id)")
    for event_id, legs in scratch.execute(
        "SELECT event_id, legs FROM event_legs WHERE line IS NULL ORDER BY event_id"
    ):
        findings.add("unexpected_postings", event_id, legs)
    for name, condition in (
        ("duplicated_events", "legs > 2 OR debits > 1 OR credits > 1"),
        ("leg_errors", "legs > debits + credits OR debits = 0 OR credits = 0"),
    ):
        for (event_id,) in scratch.execute(
            f"SELECT event_id FROM event_legs WHERE line IS NOT NULL AND ({condition}) "
            "ORDER BY line"
        ):
            findings.add(name, event_id)
    (applied,) = scratch.execute(
        "SELECT COUNT(*) FROM event_legs WHERE line IS NOT NULL"
    ).fetchone()
    return int(applied)


def _check_missing(scratch: sqlite3.Connection, findings: _Findings) -> None:
    for (event_id,) in scratch.execute(
        "SELECT id FROM lines WHERE status = ? AND NOT EXISTS "
        "(SELECT 1 FROM event_legs WHERE event_legs.event_id = lines.id) ORDER BY line",
        (_VALID,),
    ):
        findings.add("missing_events", event_id)


_BROKEN_CHAINS: Final = """
SELECT account FROM (
    SELECT account, balance_after,
           typeof(delta) AS delta_type, typeof(balance_after) AS balance_type,
           SUM(delta) OVER (PARTITION BY account ORDER BY rowid ROWS UNBOUNDED PRECEDING)
               AS running
    FROM ledger.postings
)
WHERE delta_type != 'integer' OR balance_type != 'integer' OR running != balance_after
GROUP BY account ORDER BY account
"""


def _check_chains(scratch: sqlite3.Connection, findings: _Findings) -> None:
    """Each account's balance_after, in rowid order, must be its running sum from 0."""
    try:
        broken = [account for (account,) in scratch.execute(_BROKEN_CHAINS)]
    except sqlite3.OperationalError as error:
        # SQLite's SUM refuses to leave 64 bits; Python's integers do not mind.
        if "overflow" not in str(error):
            raise
        broken = _broken_chains_exactly(scratch)
    for account in broken:
        findings.add("chain_errors", account)


def _broken_chains_exactly(scratch: sqlite3.Connection) -> list[Any]:
    running: dict[Any, int] = {}
    broken: set[Any] = set()
    for account, delta, balance_after in scratch.execute(
        "SELECT account, delta, balance_after FROM ledger.postings ORDER BY rowid"
    ):
        if account in broken:
            continue
        if type(delta) is not int or type(balance_after) is not int:
            broken.add(account)
            continue
        balance = running.get(account, 0) + delta
        running[account] = balance
        if balance != balance_after:
            broken.add(account)
    return sorted(broken, key=str)


_EXPECTED_BALANCES: Final = """
INSERT INTO expected
SELECT account, SUM(delta) FROM (
    SELECT from_acct AS account, -amount AS delta FROM lines WHERE status = ?
    UNION ALL
    SELECT to_acct, amount FROM lines WHERE status = ?
) GROUP BY account
"""

_WRONG_BALANCES: Final = """
SELECT account FROM ledger.balances GROUP BY account HAVING COUNT(*) > 1
UNION
SELECT b.account FROM ledger.balances AS b LEFT JOIN expected AS e ON e.account = b.account
WHERE e.account IS NULL OR e.balance IS NOT b.balance
UNION
SELECT e.account FROM expected AS e
WHERE NOT EXISTS (SELECT 1 FROM ledger.balances AS b WHERE b.account = e.account)
ORDER BY 1
"""


def _check_balances(scratch: sqlite3.Connection, findings: _Findings) -> None:
    """The balances table must equal the balances recomputed from the input."""
    has_big_amount = scratch.execute(
        "SELECT 1 FROM lines WHERE status = ? AND big_amount IS NOT NULL LIMIT 1", (_VALID,)
    ).fetchone()
    wrong: list[Any] | None = None
    if not has_big_amount:
        try:
            scratch.execute(_EXPECTED_BALANCES, (_VALID, _VALID))
            wrong = [account for (account,) in scratch.execute(_WRONG_BALANCES)]
        except sqlite3.OperationalError as error:
            if "overflow" not in str(error):
                raise
    if wrong is None:
        # Amounts or sums beyond 64 bits: recompute with Python's exact integers.
        wrong = _wrong_balances_exactly(scratch)
    for account in wrong:
        findings.add("balance_errors", account)


def _wrong_balances_exactly(scratch: sqlite3.Connection) -> list[Any]:
    expected: dict[str, int] = {}
    for from_account, to_account, small_amount, big_amount in scratch.execute(
        "SELECT from_acct, to_acct, amount, big_amount FROM lines WHERE status = ?", (_VALID,)
    ):
        amount = int(small_amount if small_amount is not None else big_amount)
        expected[from_account] = expected.get(from_account, 0) - amount
        expected[to_account] = expected.get(to_account, 0) + amount
    wrong: set[Any] = set()
    seen: set[Any] = set()
    for account, balance in scratch.execute("SELECT account, balance FROM ledger.balances"):
        if account in seen or account not in expected or expected[account] != balance:
            wrong.add(account)
        seen.add(account)
    wrong.update(account for account in expected if account not in seen)
    return sorted(wrong, key=str)


def _dead_letter_entries(path: Path) -> Iterator[tuple[int, bytes]]:
    if not path.exists():
        return
    try:
        with path.open("rb") as source:
            yield from enumerate(source, start=1)
    except OSError as error:
        raise CheckerInputError(f"cannot read dead letters {path}: {error}") from error


def _check_dead_letters(scratch: sqlite3.Connection, path: Path, findings: _Findings) -> int:
    """Every rejected line dead-lettered once, with the right kind of reason and raw."""
    problem = "dead_letter_errors"
    entries = 0
    batch: list[tuple[int, int, str]] = []
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
        is_duplicate = entry["reason"].startswith(DUPLICATE_REASON_PREFIX)
        batch.append((entry["line"], int(is_duplicate), entry["raw"]))
        if len(batch) >= _BATCH:
            scratch.executemany("INSERT INTO dead VALUES (?, ?, ?)", batch)
            batch.clear()
    scratch.executemany("INSERT INTO dead VALUES (?, ?, ?)", batch)
    scratch.execute("CREATE INDEX dead_by_line ON dead(line)")

    queries: list[tuple[str, tuple[int, ...], str]] = [
        (
            "SELECT line, 0 FROM lines WHERE status != ? "
            "AND NOT EXISTS (SELECT 1 FROM dead WHERE dead.line = lines.line) ORDER BY line",
            (_VALID,),
            "rejected line not dead-lettered",
        ),
        (
            "SELECT line, COUNT(*) FROM dead GROUP BY line HAVING COUNT(*) > 1 ORDER BY line",
            (),
            "dead-lettered {} times",
        ),
        (
            "SELECT dead.line, 0 FROM dead LEFT JOIN lines ON lines.line = dead.line "
            "WHERE lines.line IS NULL ORDER BY dead.line",
            (),
            "no such input line",
        ),
        (
            "SELECT dead.line, 0 FROM dead JOIN lines ON lines.line = dead.line "
            "WHERE lines.status = ? ORDER BY dead.line",
            (_VALID,),
            "valid line dead-lettered",
        ),
        (
            "SELECT dead.line, 0 FROM dead JOIN lines ON lines.line = dead.line "
            "WHERE lines.status = ? AND dead.duplicate_reason = 0 ORDER BY dead.line",
            (_DUPLICATE,),
            f"duplicate's reason does not start with {DUPLICATE_REASON_PREFIX!r}",
        ),
        (
            "SELECT dead.line, 0 FROM dead JOIN lines ON lines.line = dead.line "
            "WHERE lines.status = ? AND dead.duplicate_reason = 1 ORDER BY dead.line",
            (_INVALID,),
            f"invalid line's reason starts with {DUPLICATE_REASON_PREFIX!r}",
        ),
        (
            "SELECT dead.line, 0 FROM dead JOIN lines ON lines.line = dead.line "
            "WHERE lines.status != ? AND lines.raw IS NOT NULL AND lines.raw != dead.raw "
            "ORDER BY dead.line",
            (_VALID,),
            "raw differs from the input line",
        ),
    ]
    for query, parameters, description in queries:
        for line, times in scratch.execute(query, parameters):
            findings.add(problem, f"line {line}: {description.format(times)}")
    return entries


def _check_reference(scratch: sqlite3.Connection, findings: _Findings) -> None:
    """Compare posting rows with a crash-free run's ledger, in any global order.

    Rows are matched on (event_id, account, delta) and then compared on
    balance_after and score; balance_after already pins each account's order.
    """
    for schema, table in (("ledger", "run_rows"), ("reference", "reference_rows")):
        scratch.execute(
            f"CREATE TABLE {table} AS SELECT event_id, account, delta, balance_after, score, "
            "ROW_NUMBER() OVER (PARTITION BY event_id, account, delta "
            "ORDER BY balance_after, score) AS nth "
            f"FROM {schema}.postings"
        )
        scratch.execute(f"CREATE INDEX {table}_key ON {table}(event_id, account, delta, nth)")
    for this, other in (("run_rows", "reference_rows"), ("reference_rows", "run_rows")):
        # From the run's side every difference shows; from the reference's side
        # only its rows absent from the run, or a difference would count twice.
        differs = (
            "OR o.balance_after IS NOT t.balance_after "
            "OR NOT ((o.score IS NULL AND t.score IS NULL) OR abs(o.score - t.score) <= ?)"
            if this == "run_rows"
            else ""
        )
        parameters: tuple[float, ...] = (SCORE_TOLERANCE,) if differs else ()
        for (event_id,) in scratch.execute(
            f"SELECT t.event_id FROM {this} AS t LEFT JOIN {other} AS o "
            "ON o.event_id IS t.event_id AND o.account IS t.account "
            "AND o.delta IS t.delta AND o.nth = t.nth "
            f"WHERE o.nth IS NULL {differs}",
            parameters,
        ):
            findings.add("reference_mismatches", event_id)


_SCRATCH_SCHEMA: Final = """
CREATE TABLE lines (
    line INTEGER PRIMARY KEY, status INTEGER NOT NULL,
    id TEXT, from_acct TEXT, to_acct TEXT, amount INTEGER, big_amount TEXT, raw TEXT
);
CREATE TABLE dead (line, duplicate_reason INTEGER, raw TEXT);
CREATE TABLE expected (account TEXT PRIMARY KEY, balance);
"""


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
    with tempfile.TemporaryDirectory(prefix="resilience-verify-") as scratch_dir:
        scratch = sqlite3.connect(Path(scratch_dir) / "scratch.sqlite", uri=True)
        try:
            return _verify(scratch, input_path, workdir, reference_ledger)
        except sqlite3.DatabaseError as error:
            raise CheckerInputError(f"cannot read the ledger in {workdir}: {error}") from error
        finally:
            scratch.close()


def _verify(
    scratch: sqlite3.Connection,
    input_path: Path,
    workdir: Path,
    reference_ledger: Path | None,
) -> Verdict:
    # The scratch database is disposable: durability would only cost time.
    scratch.execute("PRAGMA journal_mode = OFF")
    scratch.execute("PRAGMA synchronous = OFF")
    scratch.execute("PRAGMA cache_size = -65536")
    scratch.executescript(_SCRATCH_SCHEMA)
    _attach(scratch, workdir / LEDGER_NAME, "ledger", "ledger")
    if reference_ledger is not None:
        _attach(scratch, reference_ledger, "reference", "reference ledger")
        columns = {row[1] for row in scratch.execute("PRAGMA reference.table_info(postings)")}
        columns &= {row[1] for row in scratch.execute("PRAGMA ledger.table_info(postings)")}
        if "score" not in columns:
            raise CheckerInputError("comparing with a reference needs a score column in both")

    input_lines = _scan_input(scratch, input_path)
    counts = dict(scratch.execute("SELECT status, COUNT(*) FROM lines GROUP BY status").fetchall())
    valid_events = counts.get(_VALID, 0)

    findings = _Findings()
    applied = _check_legs(scratch, findings)
    _check_missing(scratch, findings)
    (posting_rows,) = scratch.execute("SELECT COUNT(*) FROM ledger.postings").fetchone()
    _check_chains(scratch, findings)
    _check_balances(scratch, findings)
    dead_lettered = _check_dead_letters(scratch, workdir / DEAD_LETTER_NAME, findings)
    if reference_ledger is not None:
        _check_reference(scratch, findings)

    return Verdict(
        input_lines=input_lines,
        valid_events=valid_events,
        invalid_lines=counts.get(_INVALID, 0),
        duplicate_lines=counts.get(_DUPLICATE, 0),
        posting_rows=posting_rows,
        applied_events=applied,
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

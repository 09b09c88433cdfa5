"""The exactly-once checker passes a correct run and catches every kind of wrong one.

Ledgers are built by hand with sqlite3 through a deliberately plain reference
applier written here (its own validation, no project code), then broken one way
at a time to show that each check can fail, with the counter that names it. A
job that forgets one rule of the input contract is simulated by telling the
reference applier to ignore that rule.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusion_jobs.payments import checker
from fusion_jobs.payments.checker import (
    CheckerInputError,
    Transfer,
    Verdict,
    parse_transfer,
    verify,
)
from fusion_jobs.payments.generator import generate

SCHEMA = """
CREATE TABLE postings (
    event_id TEXT, account TEXT, delta INTEGER, balance_after INTEGER, score REAL
);
CREATE TABLE balances (account TEXT PRIMARY KEY, balance INTEGER);
"""

# The contract's numbers, written out here rather than taken from the checker.
LINE_LIMIT = 1_048_576
MAX_AMOUNT = 9_007_199_254_740_991
LOWEST = -9_223_372_036_854_775_808
HIGHEST = 9_223_372_036_854_775_807

BASE_LINES = [
    '{"id":"t1","from":"a","to":"b","amount":100}',
    '{"id":"t2","from":"b","to":"c","amount":50}',
    "not json",
    '{"id":"t3","from":"c","to":"a","amount":25,"ts":1}',
    '{"id":"t1","from":"a","to":"b","amount":100}',
    '{"id":"t4","from":"a","to":"a","amount":7}',
    '{"id":"t5","from":"a","to":"b","amount":0}',
    '{"id":"t6","from":"d","to":"b","amount":10}',
]
ERROR_COUNTS = (
    "missing_events",
    "duplicated_events",
    "unexpected_postings",
    "leg_errors",
    "dead_letter_errors",
    "chain_errors",
    "balance_errors",
)


# --- the plainest possible reference: its own validation and applier ----------------------


def _nesting(text: str) -> int:
    """The most arrays and objects open at once outside strings, one character at a time."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(depth - 1, 0)
    return deepest


def _no_constants(name: str) -> Any:
    raise ValueError(name)


def _any_integer(digits: str) -> object:
    # int() refuses thousands of digits; JSON does not. Such a number is never an amount.
    return int(digits) if len(digits) < 100 else "a huge integer"


def _keys_and_values(pairs: list[tuple[str, Any]]) -> list[Any]:
    return [item for pair in pairs for item in pair]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _simple_validate(line: bytes, ignore: Collection[int] = ()) -> tuple[str, str, str, int] | None:
    """Rules 1-7 of the contract, written the plainest way (independent of the checker).

    ``line`` is without its ending. Rules named in ``ignore`` are skipped, to play
    a job that forgot them (rule 2 then decodes with replacement characters).
    """
    if 1 not in ignore and len(line) > LINE_LIMIT:
        return None
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        if 2 not in ignore:
            return None
        text = line.decode("utf-8", "replace")
    if 3 not in ignore and _nesting(text) > 16:
        return None
    constants = {} if 4 in ignore else {"parse_constant": _no_constants}
    try:
        document = json.loads(text, parse_int=_any_integer, **constants)
        # Every key and value, those of repeated keys too, for rule 5.
        everything = json.loads(
            text, parse_int=_any_integer, object_pairs_hook=_keys_and_values, **constants
        )
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    if 5 not in ignore:
        for string in _strings(everything):
            if any(0xD800 <= ord(char) <= 0xDFFF for char in string):
                return None
    for name in ("id", "from", "to"):
        value = document.get(name)
        if not isinstance(value, str) or value == "":
            return None
        if 6 not in ignore and len(value.encode("utf-8", "surrogatepass")) > 256:
            return None
    amount = document.get("amount")
    if type(amount) is not int or amount < 1:
        return None
    if 7 not in ignore and amount > MAX_AMOUNT:
        return None
    return document["id"], document["from"], document["to"], amount


def _score(amount: int) -> float:
    return (amount % 997) / 997


def _as_int64(value: int) -> int:
    """What a 64-bit integer that overflowed would hold (a job forgetting rule 9)."""
    return (value + 2**63) % 2**64 - 2**63


def write_input(path: Path, lines: Iterable[str | bytes]) -> Path:
    with path.open("wb") as sink:
        for line in lines:
            sink.write((line if isinstance(line, bytes) else line.encode("utf-8")) + b"\n")
    return path


def input_lines(input_path: Path) -> list[bytes]:
    """The input's lines without their endings: "\\n" or the end of the file, with one
    "\\r" right before either."""
    pieces = input_path.read_bytes().split(b"\n")
    last = pieces.pop()  # after the last "\n": a line of its own unless empty
    return [piece.removesuffix(b"\r") for piece in [*pieces, *([last] if last else [])]]


def dead_letter(number: int, reason: str, line: bytes) -> dict[str, object]:
    try:
        return {"line": number, "reason": reason, "raw": line.decode("utf-8")}
    except UnicodeDecodeError:
        return {"line": number, "reason": reason, "raw_b64": base64.b64encode(line).decode()}


def reference_apply(
    input_path: Path,
    workdir: Path,
    *,
    ignore: Collection[int] = (),
    skip: Iterable[str] = (),
    out_of_range_owns: bool = True,
) -> dict[str, int]:
    """Apply the input the obviously-correct way (or wrongly, as told) into workdir.

    ``ignore`` names rules of the contract to forget: 1-7 let such lines through,
    8 applies replayed ids again, 9 applies transfers that overflow (wrapping to
    64 bits). ``skip`` names event ids to drop silently (neither applied nor
    dead-lettered); ``out_of_range_owns=False`` lets a later line take the id of an
    out-of-range transfer. Returns the count of each kind of line.
    """
    skipped = set(skip)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "ledger.sqlite").unlink(missing_ok=True)
    ledger = sqlite3.connect(workdir / "ledger.sqlite")
    ledger.executescript(SCHEMA)
    balances: dict[str, int] = {}
    owned: set[str] = set()
    dead: list[dict[str, object]] = []
    counts = {"valid": 0, "invalid": 0, "duplicate": 0, "out_of_range": 0}
    for number, line in enumerate(input_lines(input_path), start=1):
        transfer = _simple_validate(line, ignore)
        if transfer is None:
            counts["invalid"] += 1
            dead.append(dead_letter(number, "invalid line", line))
            continue
        event_id, sender, receiver, amount = transfer
        if event_id in skipped:
            continue
        if event_id in owned and 8 not in ignore:
            counts["duplicate"] += 1
            dead.append(dead_letter(number, f"duplicate id {event_id!r}", line))
            continue
        # The debit, then the credit, on a copy: a rejected transfer changes nothing.
        after = dict(balances)
        after[sender] = after.get(sender, 0) - amount
        debit_fits = after[sender] >= LOWEST
        after[receiver] = after.get(receiver, 0) + amount
        if (not debit_fits or after[receiver] > HIGHEST) and 9 not in ignore:
            counts["out_of_range"] += 1
            if out_of_range_owns:
                owned.add(event_id)
            dead.append(dead_letter(number, "balance out of range", line))
            continue
        counts["valid"] += 1
        owned.add(event_id)
        for account, delta in ((sender, -amount), (receiver, amount)):
            balances[account] = _as_int64(balances.get(account, 0) + delta)
            ledger.execute(
                "INSERT INTO postings VALUES (?, ?, ?, ?, ?)",
                (event_id, account, delta, balances[account], _score(amount)),
            )
    ledger.executemany("INSERT INTO balances VALUES (?, ?)", balances.items())
    ledger.commit()
    ledger.close()
    write_dead_letters(workdir, dead)
    return counts


def write_dead_letters(workdir: Path, entries: Iterable[object]) -> None:
    with (workdir / "dead_letter.jsonl").open("w", encoding="utf-8") as sink:
        for entry in entries:
            sink.write((entry if isinstance(entry, str) else json.dumps(entry)) + "\n")


def read_dead_letters(workdir: Path) -> list[dict[str, object]]:
    text = (workdir / "dead_letter.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def sql(workdir: Path, statement: str, parameters: tuple[object, ...] = ()) -> None:
    ledger = sqlite3.connect(workdir / "ledger.sqlite")
    ledger.execute(statement, parameters)
    ledger.commit()
    ledger.close()


def errors(verdict: Verdict) -> dict[str, int]:
    """The non-zero error counters of a verdict."""
    return {name: getattr(verdict, name) for name in ERROR_COUNTS if getattr(verdict, name)}


def counts(verdict: Verdict) -> dict[str, int]:
    """The verdict's count of each kind of input line, as reference_apply returns them."""
    return {
        "valid": verdict.valid_events,
        "invalid": verdict.invalid_lines,
        "duplicate": verdict.duplicate_lines,
        "out_of_range": verdict.out_of_range_lines,
    }


def transfer(event_id: str, sender: str, receiver: str, amount: int, **extra: object) -> str:
    document = {"id": event_id, "from": sender, "to": receiver, "amount": amount, **extra}
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def padded(event_id: str, size: int, pad: str = "x") -> str:
    """A valid transfer of exactly ``size`` UTF-8 bytes, padded in an extra field."""
    head, tail = transfer(event_id, "a", "b", 5, pad="")[:-2], '"}'
    room = size - len(head.encode()) - len(tail)
    width = len(pad.encode())
    return head + pad * (room // width) + "x" * (room % width) + tail


def nested(depth: int, inner: str = "1") -> str:
    """``depth`` arrays around ``inner``."""
    return "[" * depth + inner + "]" * depth


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, Path]:
    """A small input with every kind of line and its correct output."""
    input_path = write_input(tmp_path / "input.jsonl", BASE_LINES)
    workdir = tmp_path / "work"
    reference_apply(input_path, workdir)
    return input_path, workdir


# --- a correct run ---------------------------------------------------------------


def test_correct_run_passes_with_exact_counts(run: tuple[Path, Path]) -> None:
    verdict = verify(*run)
    assert verdict.ok, verdict.summary()
    assert errors(verdict) == {}
    assert (verdict.input_lines, verdict.valid_events) == (8, 5)
    assert (verdict.invalid_lines, verdict.duplicate_lines, verdict.out_of_range_lines) == (2, 1, 0)
    assert (verdict.posting_rows, verdict.applied_events, verdict.dead_lettered) == (10, 5, 3)
    assert verdict.reference_mismatches is None
    assert verdict.samples == {}


def test_summary_and_dict_of_a_passing_run(run: tuple[Path, Path]) -> None:
    verdict = verify(*run)
    summary = verdict.summary()
    assert summary.splitlines()[0] == "exactly-once check: OK"
    assert "FAIL" not in summary
    for name in ERROR_COUNTS:
        assert f"OK   {name}" in summary
    assert "8 lines = 5 valid events + 2 invalid + 1 duplicates + 0 out of range" in summary
    as_dict = json.loads(json.dumps(verdict.to_dict()))
    assert as_dict["ok"] is True
    assert as_dict["valid_events"] == 5
    assert as_dict["out_of_range_lines"] == 0


def test_empty_input_and_empty_ledger_pass(tmp_path: Path) -> None:
    input_path = write_input(tmp_path / "input.jsonl", [])
    reference_apply(input_path, tmp_path / "work")
    verdict = verify(input_path, tmp_path / "work")
    assert verdict.ok
    assert verdict.input_lines == 0


def test_missing_dead_letter_file_is_fine_when_nothing_was_rejected(tmp_path: Path) -> None:
    input_path = write_input(tmp_path / "input.jsonl", BASE_LINES[:2])
    reference_apply(input_path, tmp_path / "work")
    (tmp_path / "work" / "dead_letter.jsonl").unlink()
    assert verify(input_path, tmp_path / "work").ok


def test_crlf_line_endings_are_line_endings(tmp_path: Path) -> None:
    input_path = tmp_path / "input.jsonl"
    input_path.write_bytes("".join(line + "\r\n" for line in BASE_LINES).encode())
    workdir = tmp_path / "work"
    reference_apply(write_input(tmp_path / "plain.jsonl", BASE_LINES), workdir)
    assert verify(input_path, workdir).ok


# --- each check can fail -----------------------------------------------------------


def test_missing_event(run: tuple[Path, Path], tmp_path: Path) -> None:
    input_path, _ = run
    workdir = tmp_path / "skipped"
    reference_apply(input_path, workdir, skip={"t3"})
    verdict = verify(input_path, workdir)
    assert not verdict.ok
    assert verdict.missing_events == 1
    assert verdict.samples["missing_events"] == ("t3",)
    assert verdict.applied_events == 4
    # The ledger is consistent in itself, only its balances lack t3's transfer.
    assert errors(verdict) == {"missing_events": 1, "balance_errors": 2}
    assert verdict.samples["balance_errors"] == ("a", "c")


def test_duplicated_leg(run: tuple[Path, Path]) -> None:
    input_path, workdir = run
    sql(
        workdir,
        "INSERT INTO postings SELECT * FROM postings WHERE event_id = 't2' AND delta < 0",
    )
    verdict = verify(input_path, workdir)
    assert verdict.duplicated_events == 1
    assert verdict.samples["duplicated_events"] == ("t2",)
    assert verdict.leg_errors == 0
    assert verdict.chain_errors == 1  # b's copied balance_after skips the debit
    assert not verdict.ok


def test_wrong_balance_after(run: tuple[Path, Path]) -> None:
    input_path, workdir = run
    sql(workdir, "UPDATE postings SET balance_after = balance_after + 1 WHERE rowid = 3")
    verdict = verify(input_path, workdir)
    assert errors(verdict) == {"chain_errors": 1}
    assert verdict.samples["chain_errors"] == ("b",)


def test_balance_after_must_start_from_zero(run: tuple[Path, Path]) -> None:
    input_path, workdir = run
    sql(workdir, "UPDATE postings SET balance_after = balance_after + 5 WHERE account = 'd'")
    assert errors(verify(input_path, workdir)) == {"chain_errors": 1}


@pytest.mark.parametrize(
    ("statement", "wrong_account"),
    [
        ("UPDATE balances SET balance = balance + 1 WHERE account = 'c'", "c"),
        ("DELETE FROM balances WHERE account = 'd'", "d"),
        ("INSERT INTO balances VALUES ('zz', 0)", "zz"),
        ("UPDATE balances SET balance = CAST(balance AS REAL) + 0.5 WHERE account = 'a'", "a"),
    ],
    ids=["wrong-amount", "missing-account", "extra-account", "not-an-integer"],
)
def test_wrong_balances_table(run: tuple[Path, Path], statement: str, wrong_account: str) -> None:
    input_path, workdir = run
    sql(workdir, statement)
    verdict = verify(input_path, workdir)
    assert errors(verdict) == {"balance_errors": 1}
    assert verdict.samples["balance_errors"] == (wrong_account,)


def test_missing_dead_letter(run: tuple[Path, Path]) -> None:
    input_path, workdir = run
    entries = [entry for entry in read_dead_letters(workdir) if entry["line"] != 3]
    write_dead_letters(workdir, entries)
    verdict = verify(input_path, workdir)
    assert errors(verdict) == {"dead_letter_errors": 1}
    assert verdict.samples["dead_letter_errors"] == ("line 3: rejected line not dead-lettered",)


def test_missing_dead_letter_file_with_rejected_lines(run: tuple[Path, Path]) -> None:
    input_path, workdir = run
    (workdir / "dead_letter.jsonl").unlink()
    verdict = verify(input_path, workdir)
    assert verdict.dead_lettered == 0
    assert errors(verdict) == {"dead_letter_errors": 3}


def test_applied_duplicate_id(run: tuple[Path, Path], tmp_path: Path) -> None:
    input_path, _ = run
    workdir = tmp_path / "no-dedupe"
    reference_apply(input_path, workdir, ignore={8})
    verdict = verify(input_path, workdir)
    assert verdict.duplicated_events == 1
    assert verdict.samples["duplicated_events"] == ("t1",)
    assert verdict.leg_errors == 0
    assert verdict.dead_letter_errors == 1  # line 5 was applied, not dead-lettered
    assert verdict.balance_errors == 2  # a and b moved twice
    assert verdict.chain_errors == 0  # the chain itself is consistent
    assert not verdict.ok


def test_unknown_event_id(run: tuple[Path, Path]) -> None:
    input_path, workdir = run
    # A self-consistent transfer between fresh accounts: only its id gives it away.
    sql(workdir, "INSERT INTO postings VALUES ('t99', 'x', -5, -5, 0.0)")
    sql(workdir, "INSERT INTO postings VALUES ('t99', 'y', 5, 5, 0.0)")
    verdict = verify(input_path, workdir)
    assert errors(verdict) == {"unexpected_postings": 2}
    assert verdict.samples["unexpected_postings"] == ("t99",)


def test_posting_for_a_rejected_line_is_unexpected(run: tuple[Path, Path]) -> None:
    input_path, workdir = run
    sql(workdir, "INSERT INTO postings VALUES ('t5', 'x', 0, 0, 0.0)")
    verdict = verify(input_path, workdir)
    assert errors(verdict) == {"unexpected_postings": 1}
    assert verdict.samples["unexpected_postings"] == ("t5",)


def test_leg_on_the_wrong_account(run: tuple[Path, Path]) -> None:
    input_path, workdir = run
    sql(workdir, "UPDATE postings SET account = 'c' WHERE event_id = 't6' AND delta > 0")
    verdict = verify(input_path, workdir)
    assert verdict.leg_errors == 1
    assert verdict.samples["leg_errors"] == ("t6",)
    assert verdict.duplicated_events == 0
    assert verdict.missing_events == 0
    assert not verdict.ok


def test_leg_with_the_wrong_amount(run: tuple[Path, Path]) -> None:
    input_path, workdir = run
    sql(workdir, "UPDATE postings SET delta = -51 WHERE event_id = 't2' AND delta < 0")
    verdict = verify(input_path, workdir)
    assert verdict.leg_errors == 1
    assert verdict.chain_errors == 1


def test_half_applied_event(run: tuple[Path, Path]) -> None:
    input_path, workdir = run
    sql(workdir, "DELETE FROM postings WHERE event_id = 't6' AND delta > 0")
    verdict = verify(input_path, workdir)
    assert verdict.leg_errors == 1
    assert verdict.missing_events == 0
    assert verdict.applied_events == 5


def test_self_transfer_needs_both_legs(run: tuple[Path, Path]) -> None:
    input_path, workdir = run
    sql(workdir, "UPDATE postings SET delta = -7 WHERE event_id = 't4'")
    assert verify(input_path, workdir).leg_errors == 1


def test_null_event_id_is_unexpected(run: tuple[Path, Path]) -> None:
    input_path, workdir = run
    sql(workdir, "INSERT INTO postings VALUES (NULL, 'x', 0, 0, NULL)")
    verdict = verify(input_path, workdir)
    assert errors(verdict) == {"unexpected_postings": 1}


DeadLetterEdit = Callable[[list[dict[str, object]]], list[object]]


def _twice(entries: list[dict[str, object]]) -> list[object]:
    return [*entries, entries[0]]


def _valid_line(entries: list[dict[str, object]]) -> list[object]:
    return [*entries, {"line": 1, "reason": "oops", "raw": BASE_LINES[0]}]


def _no_such_line(entries: list[dict[str, object]]) -> list[object]:
    return [*entries, {"line": 99, "reason": "oops", "raw": ""}]


def _reason(line: int, reason: str) -> DeadLetterEdit:
    def edit(entries: list[dict[str, object]]) -> list[object]:
        return [
            {**entry, "reason": reason} if entry["line"] == line else entry for entry in entries
        ]

    return edit


def _raw_differs(entries: list[dict[str, object]]) -> list[object]:
    return [
        {**entry, "raw": "something else"} if entry["line"] == 7 else entry for entry in entries
    ]


def _malformed(entries: list[dict[str, object]]) -> list[object]:
    return [*entries, "{not json", '{"line": true, "reason": "x", "raw": ""}']


@pytest.mark.parametrize(
    ("edit", "expected_errors", "first_sample"),
    [
        (_twice, 1, "line 3: dead-lettered 2 times"),
        (_valid_line, 1, "line 1: valid line dead-lettered"),
        (_no_such_line, 1, "line 99: no such input line"),
        (_reason(5, "replayed"), 1, "line 5: duplicate's reason does not start with"),
        (_reason(3, "duplicate id?"), 1, "line 3: invalid line's reason starts with"),
        (_raw_differs, 1, "line 7: raw differs from the input line"),
        (_malformed, 2, "entry 4: malformed dead-letter entry"),
    ],
    ids=["twice", "valid-line", "no-such-line", "dup-reason", "invalid-reason", "raw", "malformed"],
)
def test_dead_letter_errors(
    run: tuple[Path, Path], edit: DeadLetterEdit, expected_errors: int, first_sample: str
) -> None:
    input_path, workdir = run
    write_dead_letters(workdir, edit(read_dead_letters(workdir)))
    verdict = verify(input_path, workdir)
    assert errors(verdict) == {"dead_letter_errors": expected_errors}
    assert verdict.samples["dead_letter_errors"][0].startswith(first_sample)


def test_summary_of_a_failing_run_names_the_failures(run: tuple[Path, Path]) -> None:
    input_path, workdir = run
    sql(workdir, "INSERT INTO postings VALUES ('t99', 'x', -5, -5, 0.0)")
    summary = verify(input_path, workdir).summary()
    assert summary.splitlines()[0] == "exactly-once check: FAIL"
    assert any(
        line.startswith("  FAIL unexpected_postings") and "e.g. t99" in line
        for line in summary.splitlines()
    )
    assert "OK   missing_events" in summary


def test_samples_are_bounded(tmp_path: Path) -> None:
    lines = [f'{{"id":"t{n}","from":"a","to":"b","amount":1}}' for n in range(30)]
    input_path = write_input(tmp_path / "input.jsonl", lines)
    workdir = tmp_path / "work"
    reference_apply(input_path, workdir)
    sql(workdir, "DELETE FROM postings")
    verdict = verify(input_path, workdir)
    assert verdict.missing_events == 30
    assert len(verdict.samples["missing_events"]) == checker.SAMPLE_LIMIT


# --- reference ledger ----------------------------------------------------------------


def test_reference_ledger_equal(run: tuple[Path, Path], tmp_path: Path) -> None:
    input_path, workdir = run
    reference = shutil.copy(workdir / "ledger.sqlite", tmp_path / "reference.sqlite")
    verdict = verify(input_path, workdir, reference_ledger=Path(reference))
    assert verdict.reference_mismatches == 0
    assert verdict.ok
    assert "OK   reference_mismatches" in verdict.summary()


def test_reference_ignores_the_interleaving_of_accounts(
    run: tuple[Path, Path], tmp_path: Path
) -> None:
    input_path, workdir = run
    reference = tmp_path / "reference.sqlite"
    copy = sqlite3.connect(reference)
    copy.executescript(SCHEMA)
    source = sqlite3.connect(workdir / "ledger.sqlite")
    # Each event's legs swapped: the global order differs, every row is the same.
    rows = source.execute("SELECT * FROM postings ORDER BY event_id, delta DESC").fetchall()
    copy.executemany("INSERT INTO postings VALUES (?, ?, ?, ?, ?)", rows)
    copy.commit()
    copy.close()
    source.close()
    assert verify(input_path, workdir, reference_ledger=reference).reference_mismatches == 0


@pytest.mark.parametrize(("nudge", "mismatches"), [(1e-12, 0), (1e-6, 1)])
def test_reference_score_tolerance(
    run: tuple[Path, Path], tmp_path: Path, nudge: float, mismatches: int
) -> None:
    input_path, workdir = run
    reference = Path(shutil.copy(workdir / "ledger.sqlite", tmp_path / "reference.sqlite"))
    sql(workdir, "UPDATE postings SET score = score + ? WHERE rowid = 1", (nudge,))
    verdict = verify(input_path, workdir, reference_ledger=reference)
    assert verdict.reference_mismatches == mismatches
    assert verdict.ok is (mismatches == 0)


def test_reference_counts_rows_missing_on_either_side(
    run: tuple[Path, Path], tmp_path: Path
) -> None:
    input_path, workdir = run
    reference = Path(shutil.copy(workdir / "ledger.sqlite", tmp_path / "reference.sqlite"))
    sql(workdir, "INSERT INTO postings VALUES ('t99', 'x', 0, 0, 0.0)")
    ledger = sqlite3.connect(reference)
    ledger.execute("DELETE FROM postings WHERE event_id = 't6'")
    ledger.commit()
    ledger.close()
    verdict = verify(input_path, workdir, reference_ledger=reference)
    assert verdict.reference_mismatches == 3  # t99 only in the run, t6's legs only there too
    assert set(verdict.samples["reference_mismatches"]) == {"t6", "t99"}


def test_reference_balance_after_must_match(run: tuple[Path, Path], tmp_path: Path) -> None:
    input_path, workdir = run
    reference = Path(shutil.copy(workdir / "ledger.sqlite", tmp_path / "reference.sqlite"))
    ledger = sqlite3.connect(reference)
    ledger.execute("UPDATE postings SET balance_after = 0 WHERE event_id = 't3' AND delta > 0")
    ledger.commit()
    ledger.close()
    verdict = verify(input_path, workdir, reference_ledger=reference)
    assert verdict.reference_mismatches == 1
    assert verdict.samples["reference_mismatches"] == ("t3",)


# --- input validation, one line at a time ----------------------------------------------

# Some over-long lines, built once: they are a megabyte each.
_EXACT_LIMIT = padded("big", LINE_LIMIT)
_OVER_LIMIT = padded("big", LINE_LIMIT + 1)
_OVER_LIMIT_IN_BYTES = padded("big", LINE_LIMIT + 1, pad="é")  # fewer characters than bytes


def test_the_long_lines_are_as_long_as_they_claim() -> None:
    assert len(_EXACT_LIMIT.encode()) == LINE_LIMIT
    assert len(_OVER_LIMIT.encode()) == LINE_LIMIT + 1
    assert len(_OVER_LIMIT_IN_BYTES.encode()) == LINE_LIMIT + 1
    assert len(_OVER_LIMIT_IN_BYTES) < LINE_LIMIT


@pytest.mark.parametrize(
    "raw",
    [
        # rule 1: longer than 1 MiB in UTF-8
        _OVER_LIMIT,
        _OVER_LIMIT_IN_BYTES,
        # rule 2: a str holding a surrogate character cannot have come from UTF-8
        '{"id":"t\udcff","from":"a","to":"b","amount":5}',
        # rule 3: nesting, counted outside strings
        nested(100_000, ""),
        "[" * 100_000,
        "{" * 100_000,
        transfer("t", "a", "b", 5)[:-1] + ',"x":' + nested(16) + "}",
        transfer("t", "a", "b", 5)[:-1] + ',"x":' + nested(15, '{"y":1}') + "}",
        transfer("t", "a", "b", 5)[:-1] + ',"x":"\\\\","y":' + nested(16) + "}",
        # rule 4: strict JSON, an object
        "",
        "   ",
        "not json",
        '{"id":"t","from":"a","to":"b","amount":5',
        '["t","a","b",5]',
        '"t"',
        "5",
        "null",
        '{"id":"t","from":"a","to":"b","amount":NaN}',
        '{"id":"t","from":"a","to":"b","amount":5,"x":Infinity}',
        '{"id":"t","from":"a","to":"b","amount":5,"x":[-Infinity]}',
        '{"id":"t","from":"a","to":"b","amount":5}}',
        "\ufeff" + transfer("t", "a", "b", 5),
        # rule 5: no lone surrogate in any string, keys and dropped values included
        r'{"id":"t\ud800","from":"a","to":"b","amount":5}',
        r'{"id":"t","from":"\udc00","to":"b","amount":5}',
        r'{"id":"t","from":"a","to":"b","amount":5,"x":"\uD800"}',
        r'{"id":"t","from":"a","to":"b","amount":5,"x":["y",{"z":"\udfff"}]}',
        r'{"id":"t","from":"a","to":"b","amount":5,"\ud83d":1}',
        r'{"id":"t","from":"a","to":"b","amount":5,"x":"\ude00\ud83d"}',
        r'{"id":"t","from":"a","to":"b","amount":5,"x":"\ud83d\u0041"}',
        r'{"id":"t","from":"a","to":"b","amount":5,"x":"\ud83d","x":"fine"}',
        # rule 6: id, from, to non-empty strings of at most 256 UTF-8 bytes
        '{"from":"a","to":"b","amount":5}',
        '{"id":"t","to":"b","amount":5}',
        '{"id":"t","from":"a","amount":5}',
        '{"id":5,"from":"a","to":"b","amount":5}',
        '{"id":null,"from":"a","to":"b","amount":5}',
        '{"id":"","from":"a","to":"b","amount":5}',
        '{"id":"t","from":"","to":"b","amount":5}',
        '{"id":"t","from":"a","to":["b"],"amount":5}',
        transfer("i" * 257, "a", "b", 5),
        transfer("t", "é" * 128 + "x", "b", 5),
        transfer("t", "a", "😀" * 64 + "x", 5),
        '{"id":"' + "\\ud83d\\ude00" * 65 + '","from":"a","to":"b","amount":5}',
        # rule 7: amount an integer from 1 to 2**53 - 1
        '{"id":"t","from":"a","to":"b"}',
        '{"id":"t","from":"a","to":"b","amount":0}',
        '{"id":"t","from":"a","to":"b","amount":-0}',
        '{"id":"t","from":"a","to":"b","amount":-5}',
        '{"id":"t","from":"a","to":"b","amount":10.0}',
        '{"id":"t","from":"a","to":"b","amount":1e3}',
        '{"id":"t","from":"a","to":"b","amount":"100"}',
        '{"id":"t","from":"a","to":"b","amount":true}',
        '{"id":"t","from":"a","to":"b","amount":null}',
        '{"id":"t","from":"a","to":"b","amount":9007199254740992}',
        '{"id":"t","from":"a","to":"b","amount":123456789012345678901234567890}',
        '{"id":"t","from":"a","to":"b","amount":' + "9" * 5000 + "}",
        '{"id":"t","from":"a","to":"b","amount":5,"amount":0}',
    ],
)
def test_invalid_lines(raw: str) -> None:
    reason = parse_transfer(raw)
    assert isinstance(reason, str)
    assert reason
    assert _simple_validate(raw.encode("utf-8", "surrogatepass")) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"id":"t","from":"a","to":"b","amount":5}', Transfer("t", "a", "b", 5)),
        (' {"amount":5,"to":"b","from":"a","id":"t","ts":1} ', Transfer("t", "a", "b", 5)),
        ('{"id":"t","from":"a","to":"a","amount":1}', Transfer("t", "a", "a", 1)),
        ('{"id":" ","from":"é","to":"b","amount":5,"x":[1]}', Transfer(" ", "é", "b", 5)),
        ('{"id":"t","from":"a","to":"b","amount":-1,"amount":5}', Transfer("t", "a", "b", 5)),
        # rule 1: exactly 1 MiB
        (_EXACT_LIMIT, Transfer("big", "a", "b", 5)),
        # rule 3: exactly 16 deep, and brackets in strings do not count
        (
            transfer("t", "a", "b", 5)[:-1] + ',"x":' + nested(15) + "}",
            Transfer("t", "a", "b", 5),
        ),
        (
            transfer("t", "a", "b", 5)[:-1] + ',"x":' + nested(14, '{"y":1}') + "}",
            Transfer("t", "a", "b", 5),
        ),
        (transfer("t", "a", "b", 5, x="[{" * 40), Transfer("t", "a", "b", 5)),
        (
            transfer("[[[[[[[[[[", "{{{{{{{{{{", "b", 5),
            Transfer("[[[[[[[[[[", "{{{{{{{{{{", "b", 5),
        ),
        (
            transfer("t", "a", "b", 5)[:-1] + ',"x":"\\"' + "[" * 20 + '","y":' + nested(15) + "}",
            Transfer("t", "a", "b", 5),
        ),
        # rule 4: integers of any length are JSON (extra fields are ignored)
        (
            '{"id":"t","from":"a","to":"b","amount":5,"x":' + "9" * 5000 + "}",
            Transfer("t", "a", "b", 5),
        ),
        # rule 5: a paired surrogate escape is one character; "\\ud800" is no escape
        (r'{"id":"\ud83d\ude00","from":"a","to":"b","amount":5}', Transfer("😀", "a", "b", 5)),
        (r'{"id":"\uD83D\uDE00","from":"a","to":"b","amount":5}', Transfer("😀", "a", "b", 5)),
        (r'{"id":"t","from":"\\ud800","to":"b","amount":5}', Transfer("t", "\\ud800", "b", 5)),
        (r'{"id":"t","from":"a","to":"\u00e9","amount":5}', Transfer("t", "a", "é", 5)),
        # rule 6: 256 UTF-8 bytes
        (transfer("i" * 256, "a", "b", 5), Transfer("i" * 256, "a", "b", 5)),
        (transfer("t", "é" * 128, "b", 5), Transfer("t", "é" * 128, "b", 5)),
        (transfer("t", "a", "😀" * 64, 5), Transfer("t", "a", "😀" * 64, 5)),
        (
            '{"id":"' + "\\ud83d\\ude00" * 64 + '","from":"a","to":"b","amount":5}',
            Transfer("😀" * 64, "a", "b", 5),
        ),
        # rule 7: 1 to 2**53 - 1
        (transfer("t", "a", "b", 1), Transfer("t", "a", "b", 1)),
        (transfer("t", "a", "b", MAX_AMOUNT), Transfer("t", "a", "b", MAX_AMOUNT)),
    ],
    ids=lambda value: None if isinstance(value, Transfer) else value[:60],
)
def test_valid_lines(raw: str, expected: Transfer) -> None:
    assert parse_transfer(raw) == expected
    as_tuple = (expected.id, expected.from_account, expected.to_account, expected.amount)
    assert _simple_validate(raw.encode()) == as_tuple


class _RefusingDecoder:
    def decode(self, text: str) -> object:
        raise AssertionError(f"the JSON parser was given {text[:40]!r}...")


def test_deep_nesting_never_reaches_the_json_parser(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    deep = [
        "[" * 100_000,
        nested(17),
        '{"a":' * 17 + "1" + "}" * 17,
        transfer("t", "a", "b", 5)[:-1] + ',"x":' + nested(16) + "}",
    ]
    input_path = write_input(tmp_path / "input.jsonl", deep)
    reference_apply(input_path, tmp_path / "work")
    for name in ("_DECODER", "_LENIENT_DECODER", "_ALL_STRINGS_DECODER"):
        monkeypatch.setattr(checker, name, _RefusingDecoder())
    for raw in deep:
        reason = parse_transfer(raw)
        assert isinstance(reason, str)
        assert "nested" in reason
    verdict = verify(input_path, tmp_path / "work")
    assert verdict.ok, verdict.summary()
    assert verdict.invalid_lines == 4


# --- each rule: counted by the checker, and a job that forgets it is caught ----------------

RULE_LINES: dict[int, tuple[list[str | bytes], list[str | bytes]]] = {
    # rule: (lines that just pass it, lines that break only it)
    1: (
        [_EXACT_LIMIT, padded("crlf", LINE_LIMIT).encode() + b"\r"],
        [_OVER_LIMIT.replace('"big"', '"long"'), _OVER_LIMIT_IN_BYTES.replace('"big"', '"wide"')],
    ),
    2: (
        [transfer("é", "à", "b", 5)],
        [
            b'{"id":"t\xff","from":"a","to":"b","amount":5}',
            b'{"id":"\xed\xa0\x80","from":"a","to":"b","amount":5}',
        ],
    ),
    3: (
        [
            transfer("t16", "a", "b", 5)[:-1] + ',"x":' + nested(15) + "}",
            transfer("brackets", "a", "b", 5, x="[{" * 40),
            transfer("quoted", "a", "b", 5)[:-1]
            + ',"x":"\\"'
            + "[" * 20
            + '","y":'
            + nested(15)
            + "}",
        ],
        [
            transfer("t17", "a", "b", 5)[:-1] + ',"x":' + nested(16) + "}",
            transfer("backslash", "a", "b", 5)[:-1] + ',"x":"\\\\","y":' + nested(16) + "}",
        ],
    ),
    4: (
        ['{"id":"last","from":"a","to":"b","amount":-1,"amount":5}'],
        ['{"id":"nan","from":"a","to":"b","amount":5,"x":NaN}'],
    ),
    5: (
        [r'{"id":"pair","from":"\ud83d\ude00","to":"b","amount":5}'],
        [
            r'{"id":"s1","from":"a","to":"b","amount":5,"x":"\ud800"}',
            r'{"id":"s2","from":"a","to":"b","amount":5,"\udc00":1}',
            r'{"id":"s3","from":"a","to":"b","amount":5,"x":"\ud800","x":"dropped"}',
        ],
    ),
    6: (
        [transfer("i" * 256, "é" * 128, "b", 5)],
        [transfer("i" * 257, "a", "b", 5), transfer("wide", "é" * 128 + "x", "b", 5)],
    ),
    7: (
        [transfer("max", "a", "b", MAX_AMOUNT)],
        [transfer("over", "a", "b", MAX_AMOUNT + 1)],
    ),
}


@pytest.mark.parametrize("rule", sorted(RULE_LINES))
def test_each_rule_is_counted_and_a_job_forgetting_it_is_caught(rule: int, tmp_path: Path) -> None:
    passing, breaking = RULE_LINES[rule]
    input_path = write_input(tmp_path / "input.jsonl", [BASE_LINES[0], *passing, *breaking])

    good = tmp_path / "good"
    assert reference_apply(input_path, good)["invalid"] == len(breaking)
    verdict = verify(input_path, good)
    assert verdict.ok, verdict.summary()
    assert verdict.valid_events == 1 + len(passing)
    assert verdict.invalid_lines == len(breaking)

    forgetful = tmp_path / "forgetful"
    assert reference_apply(input_path, forgetful, ignore={rule})["invalid"] == 0
    broken = verify(input_path, forgetful)
    assert not broken.ok
    assert broken.unexpected_postings == 2 * len(breaking), broken.summary()
    assert broken.dead_letter_errors == len(breaking)
    assert all(
        sample.endswith("rejected line not dead-lettered")
        for sample in broken.samples["dead_letter_errors"]
    )


# --- rules 8 and 9: ids and balances across lines --------------------------------------------


def _pump(count: int, sender: str, receiver: str, prefix: str = "pump") -> list[str]:
    """``count`` transfers of the largest amount: 1024 of them move 2**63 - 1024."""
    return [transfer(f"{prefix}{n}", sender, receiver, MAX_AMOUNT) for n in range(count)]


RANGE_LINES = [
    *_pump(1024, "p", "q"),  # p = -2**63 + 1024, q = 2**63 - 1024; lines 1-1024
    transfer("low-ok", "p", "r", 1024),  # 1025: p = -2**63 exactly, applied
    transfer("low-over", "p", "r", 1),  # 1026: one cent further: out of range
    transfer("self-low", "p", "p", 1),  # 1027: a self-transfer's debit fails
    transfer("high-ok", "s", "q", 1023),  # 1028: q = 2**63 - 1 exactly, applied
    transfer("high-over", "z", "q", 1),  # 1029: the credit fails; z stays untouched
    transfer("self-high", "q", "q", 5),  # 1030: debit, then the credit back: applied
    transfer("low-over", "r", "s", 5),  # 1031: the id is owned by line 1026: duplicate
    transfer("x0", "a", "b", 0),  # 1032: invalid, owns nothing
    transfer("x0", "a", "b", 5),  # 1033: so this one owns x0 and is applied
]
RANGE_BALANCES = {
    "p": LOWEST,
    "q": HIGHEST,
    "r": 1024,
    "s": -1023,
    "a": -5,
    "b": 5,
}


@pytest.fixture
def range_run(tmp_path: Path) -> tuple[Path, Path]:
    """Balances driven to both ends of the 64-bit range, and the correct output."""
    input_path = write_input(tmp_path / "range.jsonl", RANGE_LINES)
    workdir = tmp_path / "range-work"
    reference_apply(input_path, workdir)
    return input_path, workdir


def test_balances_at_the_limits_pass_and_one_cent_further_is_out_of_range(
    range_run: tuple[Path, Path],
) -> None:
    input_path, workdir = range_run
    verdict = verify(input_path, workdir)
    assert verdict.ok, verdict.summary()
    assert counts(verdict) == {"valid": 1028, "invalid": 1, "duplicate": 1, "out_of_range": 3}
    assert verdict.input_lines == len(RANGE_LINES)
    assert verdict.dead_lettered == 5
    assert "1 duplicates + 3 out of range" in verdict.summary()
    assert verdict.to_dict()["out_of_range_lines"] == 3
    ledger = sqlite3.connect(workdir / "ledger.sqlite")
    assert dict(ledger.execute("SELECT account, balance FROM balances")) == RANGE_BALANCES
    ledger.close()
    reasons = {entry["line"]: entry["reason"] for entry in read_dead_letters(workdir)}
    assert sorted(reasons) == [1026, 1027, 1029, 1031, 1032]


def test_out_of_range_transfer_applied_anyway(range_run: tuple[Path, Path], tmp_path: Path) -> None:
    input_path, _ = range_run
    workdir = tmp_path / "overflowing"
    reference_apply(input_path, workdir, ignore={9})
    verdict = verify(input_path, workdir)
    assert not verdict.ok
    assert verdict.unexpected_postings == 6
    assert set(verdict.samples["unexpected_postings"]) == {"low-over", "self-low", "high-over"}
    assert verdict.dead_letter_errors == 3  # none of them dead-lettered
    assert verdict.balance_errors == 4  # p, r, q wrapped or moved; z exists at all
    assert verdict.missing_events == verdict.leg_errors == 0


def test_a_rejected_first_occurrence_still_owns_its_id(
    range_run: tuple[Path, Path], tmp_path: Path
) -> None:
    input_path, _ = range_run
    workdir = tmp_path / "forgets-owner"
    reference_apply(input_path, workdir, out_of_range_owns=False)
    verdict = verify(input_path, workdir)
    assert not verdict.ok
    assert verdict.samples["unexpected_postings"] == ("low-over",)
    assert verdict.unexpected_postings == 2
    assert verdict.samples["dead_letter_errors"] == ("line 1031: rejected line not dead-lettered",)
    assert set(verdict.samples["balance_errors"]) == {"r", "s"}


def test_an_invalid_first_occurrence_owns_nothing(range_run: tuple[Path, Path]) -> None:
    input_path, workdir = range_run
    # A job that let the invalid line 1032 own "x0" rejects line 1033 as a duplicate.
    sql(workdir, "DELETE FROM postings WHERE event_id = 'x0'")
    sql(workdir, "DELETE FROM balances WHERE account IN ('a', 'b')")
    line_1033 = {"line": 1033, "reason": "duplicate id 'x0'", "raw": RANGE_LINES[-1]}
    write_dead_letters(workdir, [*read_dead_letters(workdir), line_1033])
    verdict = verify(input_path, workdir)
    assert verdict.missing_events == 1
    assert verdict.samples["missing_events"] == ("x0",)
    assert verdict.samples["dead_letter_errors"] == ("line 1033: valid line dead-lettered",)


def test_an_account_of_rejected_transfers_only_has_no_balance(
    range_run: tuple[Path, Path],
) -> None:
    input_path, workdir = range_run
    sql(workdir, "INSERT INTO balances VALUES ('z', 0)")
    verdict = verify(input_path, workdir)
    assert errors(verdict) == {"balance_errors": 1}
    assert verdict.samples["balance_errors"] == ("z",)


def test_a_rejected_transfer_moves_no_balance(range_run: tuple[Path, Path]) -> None:
    input_path, workdir = range_run
    # As if line 1026 had been debited before its rejection.
    sql(workdir, "UPDATE balances SET balance = balance + 1 WHERE account = 'r'")
    verdict = verify(input_path, workdir)
    assert errors(verdict) == {"balance_errors": 1}
    assert verdict.samples["balance_errors"] == ("r",)


@pytest.mark.parametrize(
    ("line", "reason", "first_sample"),
    [
        (1026, "invalid line", "line 1026: out-of-range line's reason does not start with"),
        (1029, "duplicate id 'high-over'", "line 1029: out-of-range line's reason does not"),
        (1031, "balance out of range", "line 1031: duplicate's reason does not start with"),
        (1032, "balance out of range: no", "line 1032: invalid line's reason starts with"),
    ],
)
def test_out_of_range_reason_kinds(
    range_run: tuple[Path, Path], line: int, reason: str, first_sample: str
) -> None:
    input_path, workdir = range_run
    write_dead_letters(workdir, _reason(line, reason)(read_dead_letters(workdir)))
    verdict = verify(input_path, workdir)
    assert errors(verdict) == {"dead_letter_errors": 1}
    assert verdict.samples["dead_letter_errors"][0].startswith(first_sample)


# --- dead letters hold the raw line losslessly ---------------------------------------------

RAW_LINES: list[str | bytes] = [
    BASE_LINES[0],
    b"\xff\xfe not UTF-8!",  # line 2: 13 bytes, so its base64 is padded
    b"not json\r\r",  # line 3: "not json\r\r\n": its "\r\n" is the ending, one "\r" is left
    b'{"id":"t9","from":"a","to":"b","amount":5,"x":"\\ud800"}',  # line 4
]


@pytest.fixture
def raw_run(tmp_path: Path) -> tuple[Path, Path]:
    input_path = write_input(tmp_path / "raw.jsonl", RAW_LINES)
    workdir = tmp_path / "raw-work"
    reference_apply(input_path, workdir)
    return input_path, workdir


def test_raw_and_raw_b64_of_the_reference_pass(raw_run: tuple[Path, Path]) -> None:
    input_path, workdir = raw_run
    verdict = verify(input_path, workdir)
    assert verdict.ok, verdict.summary()
    assert verdict.invalid_lines == 3
    entries = {entry["line"]: entry for entry in read_dead_letters(workdir)}
    assert entries[2]["raw_b64"] == base64.b64encode(b"\xff\xfe not UTF-8!").decode()
    assert entries[3]["raw"] == "not json\r"
    assert entries[4]["raw"] == RAW_LINES[3].decode()


def _entry(line: int, **fields: object) -> DeadLetterEdit:
    """Replace the entry of ``line`` by one with these fields (None: without it)."""

    def edit(entries: list[dict[str, object]]) -> list[object]:
        replaced: list[object] = []
        for entry in entries:
            if entry["line"] == line:
                new = {"line": line, "reason": entry["reason"], **fields}
                replaced.append({name: value for name, value in new.items() if value is not None})
            else:
                replaced.append(entry)
        return replaced

    return edit


_B64_OF_LINE_2 = base64.b64encode(b"\xff\xfe not UTF-8!").decode()


@pytest.mark.parametrize(
    ("edit", "expected_errors", "first_sample"),
    [
        (_entry(2, raw_b64=base64.b64encode(b"\xff\xfe").decode()), 1, "line 2: raw differs"),
        (_entry(2, raw_b64=_B64_OF_LINE_2[:-4]), 1, "line 2: raw differs"),
        (_entry(2, raw="\ufffd\ufffd not UTF-8"), 1, "line 2: raw for a line that is not UTF-8"),
        (_entry(3, raw="not json"), 1, "line 3: raw differs"),
        (_entry(3, raw="not json\r\r"), 1, "line 3: raw differs"),
        (_entry(4, raw='{"id":"t9","from":"a","to":"b","amount":5,"x":"\ud800"}'), 1, "line 4"),
        (_entry(3, raw_b64=base64.b64encode(b"not json\r").decode()), 1, "line 3: raw_b64 for"),
        (_entry(2, raw="x", raw_b64=_B64_OF_LINE_2), 2, "entry 1: malformed dead-letter entry"),
        (_entry(2), 2, "entry 1: malformed dead-letter entry"),
        (_entry(2, raw_b64="not base64!"), 2, "entry 1: malformed dead-letter entry"),
        (_entry(2, raw_b64=_B64_OF_LINE_2 + "="), 2, "entry 1: malformed dead-letter entry"),
        (_entry(2, raw_b64=_B64_OF_LINE_2.rstrip("=")), 2, "entry 1: malformed dead-letter"),
        (_entry(2, raw_b64=_B64_OF_LINE_2[:-3] + "R=="), 2, "entry 1: malformed dead-letter"),
        (_entry(2, raw_b64=5), 2, "entry 1: malformed dead-letter entry"),
        (_entry(3, raw=["not json\r"]), 2, "entry 2: malformed dead-letter entry"),
    ],
    ids=[
        "b64-other-bytes",
        "b64-truncated",
        "raw-for-non-utf8",
        "cr-dropped",
        "cr-added",
        "surrogate-raw",
        "b64-for-utf8",
        "both",
        "neither",
        "b64-not-base64",
        "b64-bad-padding",
        "b64-no-padding",
        "b64-not-canonical",
        "b64-not-a-string",
        "raw-not-a-string",
    ],
)
def test_raw_is_checked_losslessly(
    raw_run: tuple[Path, Path], edit: DeadLetterEdit, expected_errors: int, first_sample: str
) -> None:
    input_path, workdir = raw_run
    write_dead_letters(workdir, edit(read_dead_letters(workdir)))
    verdict = verify(input_path, workdir)
    assert errors(verdict) == {"dead_letter_errors": expected_errors}, verdict.summary()
    assert verdict.samples["dead_letter_errors"][0].startswith(first_sample)


def test_a_last_line_without_newline_loses_one_carriage_return(tmp_path: Path) -> None:
    """The end of the file ends a line as a newline does (as the job's reader reads it)."""
    input_path = tmp_path / "input.jsonl"
    input_path.write_bytes(BASE_LINES[0].encode() + b"\nnot json\r\r")
    workdir = tmp_path / "work"
    reference_apply(input_path, workdir)
    assert read_dead_letters(workdir)[0]["raw"] == "not json\r"
    assert verify(input_path, workdir).ok
    write_dead_letters(workdir, [{"line": 2, "reason": "invalid", "raw": "not json\r\r"}])
    assert verify(input_path, workdir).samples["dead_letter_errors"] == (
        "line 2: raw differs from the input line",
    )


# --- command line ------------------------------------------------------------------------


def test_run_cli_ok_writes_json(
    run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    input_path, workdir = run
    json_out = tmp_path / "verdict.json"
    assert checker.run_cli(input_path, workdir, json_out) == 0
    assert capsys.readouterr().out.startswith("exactly-once check: OK")
    assert json.loads(json_out.read_text(encoding="utf-8"))["ok"] is True


def test_run_cli_failure_exits_1(
    run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    input_path, workdir = run
    sql(workdir, "DELETE FROM postings WHERE event_id = 't1'")
    assert checker.run_cli(input_path, workdir) == 1
    assert "FAIL" in capsys.readouterr().out


def test_main_parses_arguments(run: tuple[Path, Path], tmp_path: Path) -> None:
    input_path, workdir = run
    reference = shutil.copy(workdir / "ledger.sqlite", tmp_path / "reference.sqlite")
    argv = ["--input", str(input_path), "--workdir", str(workdir), "--reference", str(reference)]
    assert checker.main(argv) == 0


def test_unprintable_ids_from_the_ledger_are_printed_escaped(
    run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    input_path, workdir = run
    # The UTF-8 bytes of a lone surrogate U+D800, as TEXT: sqlite3 cannot bind such a str.
    sql(workdir, "INSERT INTO postings VALUES (CAST(X'EDA080' AS TEXT), 'x', 0, 0, 0.0)")
    sql(workdir, "INSERT INTO postings VALUES (?, 'y', 0, 0, 0.0)", ("t\n\x1b[2J",))
    assert checker.run_cli(input_path, workdir) == 1
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "unexpected_postings" in line)
    assert line.startswith("  FAIL unexpected_postings")
    assert "\\udced\\udca0\\udc80" in line  # repr of the bytes, surrogate-escaped
    assert "'t\\n\\x1b[2J'" in line
    assert "\x1b" not in out
    assert len(out.splitlines()) == 10  # no line feed got through
    verdict = verify(input_path, workdir)
    json.dumps(verdict.to_dict()).encode("ascii")


def test_summary_prints_on_an_ascii_stdout(
    run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    input_path, workdir = run
    sql(workdir, "INSERT INTO postings VALUES ('é', 'ü', 0, 0, 0.0)")
    sql(workdir, "INSERT INTO postings VALUES (CAST(X'EDA080' AS TEXT), 'x', 0, 0, 0.0)")
    sink = io.BytesIO()
    stdout = io.TextIOWrapper(sink, encoding="ascii")
    monkeypatch.setattr(sys, "stdout", stdout)
    assert checker.run_cli(input_path, workdir) == 1
    stdout.flush()
    out = sink.getvalue().decode("ascii")
    assert "e.g. \\xe9, '\\udced\\udca0\\udc80'" in out


def test_an_unreadable_path_is_printed_escaped(
    run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, workdir = run
    sink = io.BytesIO()
    stderr = io.TextIOWrapper(sink, encoding="ascii")
    monkeypatch.setattr(sys, "stderr", stderr)
    assert checker.run_cli(Path("/nonexistent/\udcff-é.jsonl"), workdir) == 2
    stderr.flush()
    assert sink.getvalue() == b"error: input file not found: /nonexistent/\\udcff-\\xe9.jsonl\n"


def _not_a_database(workdir: Path) -> None:
    (workdir / "ledger.sqlite").write_text("garbage " * 100, encoding="utf-8")


def _no_postings_table(workdir: Path) -> None:
    sql(workdir, "DROP TABLE postings")


def _no_ledger(workdir: Path) -> None:
    (workdir / "ledger.sqlite").unlink()


@pytest.mark.parametrize(
    ("break_workdir", "message"),
    [
        (_no_ledger, "ledger not found"),
        (_not_a_database, "cannot read ledger"),
        (_no_postings_table, "has no postings table"),
    ],
)
def test_unreadable_ledger_exits_2_with_one_line(
    run: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    break_workdir: Callable[[Path], None],
    message: str,
) -> None:
    input_path, workdir = run
    break_workdir(workdir)
    assert checker.run_cli(input_path, workdir) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ")
    assert message in captured.err
    assert captured.err.count("\n") == 1
    assert "Traceback" not in captured.err


def test_missing_input_exits_2(
    run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, workdir = run
    assert checker.main(["--input", str(tmp_path / "nope.jsonl"), "--workdir", str(workdir)]) == 2
    assert capsys.readouterr().err == f"error: input file not found: {tmp_path / 'nope.jsonl'}\n"


def test_missing_reference_raises(run: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(CheckerInputError, match="reference ledger not found"):
        verify(*run, reference_ledger=tmp_path / "nope.sqlite")


# --- generated input, end to end ------------------------------------------------------------


def test_generated_input_applied_correctly_passes(tmp_path: Path) -> None:
    input_path = tmp_path / "input.jsonl"
    stats = generate(
        input_path, events=3000, accounts=50, seed=11, invalid_rate=0.05, duplicate_rate=0.05
    )
    workdir = tmp_path / "work"
    expected = reference_apply(input_path, workdir)
    verdict = verify(input_path, workdir)
    assert verdict.ok, verdict.summary()
    assert counts(verdict) == expected
    assert verdict.input_lines == stats.lines
    assert verdict.valid_events == stats.valid
    assert verdict.invalid_lines == stats.invalid
    assert verdict.duplicate_lines == stats.duplicates
    assert verdict.out_of_range_lines == 0
    assert verdict.dead_lettered == stats.invalid + stats.duplicates


# --- property: a reference ledger passes, any single broken row fails ------------------------

ACCOUNTS = ["a", "b", "c", "d"]
# Each breaks one rule; "\udcff" is written as the byte 0xff, which is not UTF-8.
INVALID_TEMPLATES = [
    "garbage",
    '{{"id":"{id}","from":"a","to":"b","amount":0}}',
    '{{"id":"{id}","from":"a","to":"b","amount":1.5}}',
    '{{"id":"{id}","from":"a","amount":3}}',
    '{{"id":"{id}","from":"a","to":"b","amount":true}}',
    '{{"id":"{id}\udcff","from":"a","to":"b","amount":3}}',
    '{{"id":"{id}","from":"a","to":"b","amount":3,"x":' + nested(16) + "}}",
    '{{"id":"{id}","from":"a","to":"b","amount":3,"x":NaN}}',
    '{{"id":"{id}","from":"a","to":"b","amount":3,"x":"\\ud800"}}',
    '{{"id":"{id}","from":"a","to":"b","amount":3,"\\udc00":1}}',
    '{{"id":"{id}","from":"' + "é" * 128 + 'x","to":"b","amount":3}}',
    '{{"id":"{id}","from":"a","to":"b","amount":9007199254740992}}',
]
# Valid transfers written at the edges of rules 1-7.
TRANSFER_STYLES = [
    "",
    ',"x":' + nested(15),
    ',"x":"' + "[{" * 20 + '"',
    ',"x":"\\"' + "[" * 20 + '"',
    ',"x":"\\ud83d\\ude00"',
    ',"x":"\\\\ud800"',
    ',"amount":0,"x":' + "1" * 5000,
    "crlf",
    "long id",
]
amounts = st.one_of(
    st.integers(min_value=1, max_value=2000),
    st.integers(min_value=1, max_value=MAX_AMOUNT),
    st.just(MAX_AMOUNT),
)
operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("transfer"),
            st.sampled_from(ACCOUNTS),
            st.sampled_from(ACCOUNTS),
            amounts,
            st.integers(0, len(TRANSFER_STYLES) - 1),
        ),
        # A transfer from the pumped-down account (True) or to the pumped-up one.
        st.tuples(st.just("limit"), st.booleans(), st.sampled_from(ACCOUNTS), amounts),
        st.tuples(st.just("replay"), st.integers(min_value=0, max_value=50)),
        st.tuples(st.just("invalid"), st.integers(0, len(INVALID_TEMPLATES) - 1)),
    ),
    min_size=1,
    max_size=25,
)
# 1023 or 1024 transfers of the largest amount take one account to within 2**53 + 1023
# or 1024 cents of -2**63 and another as near 2**63 - 1.
pumps = st.none() | st.tuples(
    st.sampled_from([(a, b) for a in ACCOUNTS for b in ACCOUNTS if a != b]),
    st.integers(1023, 1024),
).map(lambda pump: (*pump[0], pump[1]))


def _styled(event_id: str, sender: str, receiver: str, amount: int, style: str) -> bytes:
    if style == "long id":
        event_id = (event_id + "-" + "i" * 256)[:256]
    head = transfer(event_id, sender, receiver, amount)
    if style == "crlf":
        return head.encode() + b"\r"  # written with "\n" after it: a CRLF ending
    if style.startswith(',"amount":0'):
        # A repeated amount: the last one counts; a 5000-digit number is still JSON.
        return (head[:-1] + style + f',"amount":{amount}' + "}").encode()
    return (head[:-1] + style + "}").encode()


def _lines_from(pump: tuple[str, str, int] | None, ops: list[tuple[Any, ...]]) -> list[bytes]:
    lines: list[bytes] = []
    low, high = ("a", "b") if pump is None else pump[:2]
    if pump is not None:
        lines.extend(line.encode() for line in _pump(pump[2], low, high))
    transfers: list[bytes] = []
    for number, op in enumerate(ops):
        if op[0] == "replay" and transfers:
            lines.append(transfers[op[1] % len(transfers)])
        elif op[0] == "invalid":
            line = INVALID_TEMPLATES[op[1]].format(id=f"t{number}")
            lines.append(line.encode("utf-8", "surrogateescape"))
        else:
            if op[0] == "transfer":
                _, sender, receiver, amount, style = op
            elif op[0] == "limit":
                _, from_low, other, amount = op
                sender, receiver, style = (low, other, 0) if from_low else (other, high, 0)
            else:  # a replay with nothing to replay yet
                sender, receiver, amount, style = "a", "b", 1, 0
            line_bytes = _styled(f"t{number}", sender, receiver, amount, TRANSFER_STYLES[style])
            transfers.append(line_bytes)
            lines.append(line_bytes)
    return lines


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(pump=pumps, ops=operations, data=st.data())
def test_property_reference_passes_and_any_single_row_change_fails(
    pump: tuple[str, str, int] | None, ops: list[tuple[Any, ...]], data: st.DataObject
) -> None:
    lines = _lines_from(pump, ops)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        input_path = write_input(root / "input.jsonl", lines)
        workdir = root / "work"
        expected = reference_apply(input_path, workdir)
        verdict = verify(input_path, workdir)
        assert verdict.ok, verdict.summary()
        assert counts(verdict) == expected

        ledger = sqlite3.connect(workdir / "ledger.sqlite")
        rowids = [rowid for (rowid,) in ledger.execute("SELECT rowid FROM postings")]
        ledger.close()
        if not rowids:
            return
        rowid = data.draw(st.sampled_from(rowids), label="rowid")
        if data.draw(st.booleans(), label="delete (else duplicate)"):
            sql(workdir, "DELETE FROM postings WHERE rowid = ?", (rowid,))
            broken = verify(input_path, workdir)
            assert broken.leg_errors == 1, broken.summary()
        else:
            sql(workdir, "INSERT INTO postings SELECT * FROM postings WHERE rowid = ?", (rowid,))
            broken = verify(input_path, workdir)
            assert broken.duplicated_events == 1, broken.summary()
        assert not broken.ok


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pump=pumps, ops=operations, data=st.data())
def test_property_every_rejected_line_must_be_dead_lettered_with_its_kind(
    pump: tuple[str, str, int] | None, ops: list[tuple[Any, ...]], data: st.DataObject
) -> None:
    lines = _lines_from(pump, ops)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        input_path = write_input(root / "input.jsonl", lines)
        workdir = root / "work"
        reference_apply(input_path, workdir)
        entries = read_dead_letters(workdir)
        if not entries:
            return
        index = data.draw(st.integers(0, len(entries) - 1), label="entry")
        reason = str(entries[index]["reason"])
        wrong = "balance out of range" if reason.startswith("duplicate id") else "duplicate id"
        if data.draw(st.booleans(), label="drop (else wrong reason)"):
            del entries[index]
        else:
            entries[index] = {**entries[index], "reason": wrong}
        write_dead_letters(workdir, entries)
        broken = verify(input_path, workdir)
        assert errors(broken) == {"dead_letter_errors": 1}, broken.summary()


# --- property: parse_transfer agrees with the plain validation --------------------------------

_CHARACTERS = [
    "a",
    "é",
    "😀",
    "[",
    "]",
    "{",
    "}",
    '"',
    "\\",
    "\ud800",
    "\udc00",
    "\ud83d",
    "\ude00",
]
_texts = st.text(alphabet=st.sampled_from(_CHARACTERS), max_size=6)
_leaves = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(), _texts)
_values = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_texts, inner, max_size=3),
    max_leaves=8,
)
_names = st.one_of(
    _texts,
    st.sampled_from(["t", "", "i" * 256, "i" * 257, "é" * 128, "é" * 128 + "x", "😀" * 64]),
    _leaves,
)
_amounts = st.one_of(
    st.sampled_from([0, 1, -1, MAX_AMOUNT, MAX_AMOUNT + 1, 10**30, True, 10.0, "5", None]),
    st.integers(min_value=-5, max_value=MAX_AMOUNT + 5),
)
_keys = st.sampled_from(["id", "from", "to", "amount", "x", "\ud800", "[{"])


def _nest(value: object, depth: int) -> object:
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@settings(max_examples=300, deadline=None)
@given(
    fields=st.tuples(_names, _names, _names, _amounts),
    extras=st.lists(st.tuples(_keys, _values, st.integers(0, 18)), max_size=3),
    ascii_only=st.booleans(),
)
def test_property_parse_transfer_agrees_with_the_plain_validation(
    fields: tuple[object, object, object, object],
    extras: list[tuple[str, object, int]],
    ascii_only: bool,
) -> None:
    pairs = list(zip(("id", "from", "to", "amount"), fields, strict=True))
    pairs += [(key, _nest(value, depth)) for key, value, depth in extras]
    text = (
        "{"
        + ",".join(
            json.dumps(key, ensure_ascii=ascii_only)
            + ":"
            + json.dumps(value, ensure_ascii=ascii_only)
            for key, value in pairs
        )
        + "}"
    )
    reference = _simple_validate(text.encode("utf-8", "surrogatepass"))
    result = parse_transfer(text)
    if reference is None:
        assert isinstance(result, str)
    else:
        assert result == Transfer(*reference)


# --- model versions ------------------------------------------------------------------
# The base input's valid events sit on lines 1 (t1), 2 (t2), 4 (t3), 6 (t4) and 8 (t6).

_LINE_OF = {"t1": 1, "t2": 2, "t3": 4, "t4": 6, "t6": 8}


def _versioned(workdir: Path, version_of: dict[str, int], history: list[dict[str, Any]]
               ) -> None:
    """Give the ledger's postings a model_version (per event) and write the history."""
    sql(workdir, "ALTER TABLE postings ADD COLUMN model_version INTEGER")
    for event_id, version in version_of.items():
        sql(workdir, "UPDATE postings SET model_version = ? WHERE event_id = ?",
            (version, event_id))
    with (workdir / "models_history.jsonl").open("w", encoding="utf-8") as sink:
        for entry in history:
            sink.write(json.dumps({"model": "fraud", **entry}) + "\n")


def _published(version: int, position: int | None) -> dict[str, Any]:
    return {"kind": "publish", "version": version, "position": position}


def _rollback(to: int, bad: list[int], position: int) -> dict[str, Any]:
    return {"kind": "move", "alias": "serving", "to": to,
            "evidence": {"marked_bad": bad, "position": position}}


# v1 from the start, v2 published after line 1, rolled back after line 4 (back to 1),
# v3 published after line 6.
_HISTORY = [_published(1, None), _published(2, 1), _rollback(1, [2], 4), _published(3, 6),
            {"kind": "move", "alias": "candidate", "to": 3, "evidence": {"position": 6}},
            {"model": "other", "kind": "publish", "version": 99, "position": 0}]
_VERSIONS = {"t1": 1, "t2": 2, "t3": 2, "t4": 1, "t6": 3}


def test_postings_whose_versions_follow_the_history_pass(run: tuple[Path, Path]) -> None:
    input_path, workdir = run
    _versioned(workdir, _VERSIONS, _HISTORY)
    verdict = verify(input_path, workdir)
    assert verdict.ok, verdict.summary()
    assert (verdict.model_errors, verdict.model_versions, verdict.rollbacks) == (0, 3, 1)
    assert verify(input_path, workdir).to_dict()["model_errors"] == 0


def test_a_ledger_without_versions_is_not_judged_on_them(run: tuple[Path, Path]) -> None:
    verdict = verify(*run)
    assert verdict.model_errors is None
    assert "model_errors" not in verdict.summary()


@pytest.mark.parametrize(("event_id", "version", "why"), [
    ("t1", 2, "published after it"),       # v2 came after line 1
    ("t6", 2, "rolled back"),              # v2 was rolled back at line 4
    ("t4", 7, "never published"),
    ("t3", None, "model_version None"),
    ("t2", 3, "published after it"),
])
def test_a_posting_on_a_version_it_could_not_have_had_is_a_model_error(
        run: tuple[Path, Path], event_id: str, version: int | None, why: str) -> None:
    input_path, workdir = run
    _versioned(workdir, {**_VERSIONS, event_id: version}, _HISTORY)  # type: ignore[dict-item]
    verdict = verify(input_path, workdir)
    assert not verdict.ok
    assert verdict.model_errors == 2  # both legs
    assert why in verdict.samples["model_errors"][0], verdict.samples
    assert verdict.samples["model_errors"][0].startswith(event_id)


def test_legs_scored_by_two_versions_are_a_model_error(run: tuple[Path, Path]) -> None:
    input_path, workdir = run
    _versioned(workdir, _VERSIONS, _HISTORY)
    sql(workdir, "UPDATE postings SET model_version = 3 WHERE event_id = 't6' AND delta > 0")
    sql(workdir, "UPDATE postings SET model_version = 1 WHERE event_id = 't6' AND delta < 0")
    verdict = verify(input_path, workdir)
    assert verdict.model_errors == 1
    assert "legs scored by versions" in verdict.samples["model_errors"][0]


@pytest.mark.parametrize("history", [
    None,                                                    # no history file at all
    [_published(1, None), _published(1, None)],              # a version published twice
    [_published(1, None), {"kind": "publish", "version": "2", "position": 1}],
])
def test_a_missing_or_broken_history_is_a_model_error(
        run: tuple[Path, Path], history: list[dict[str, Any]] | None) -> None:
    input_path, workdir = run
    _versioned(workdir, dict.fromkeys(_LINE_OF, 1), history or [])
    if history is None:
        (workdir / "models_history.jsonl").unlink()
    verdict = verify(input_path, workdir)
    assert not verdict.ok
    assert verdict.model_errors


def test_a_reference_with_other_versions_is_a_mismatch(run: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    input_path, workdir = run
    _versioned(workdir, _VERSIONS, _HISTORY)
    reference = tmp_path / "reference"
    reference_apply(input_path, reference)
    _versioned(reference, {**_VERSIONS, "t4": 3}, _HISTORY)
    verdict = verify(input_path, workdir, reference_ledger=reference / "ledger.sqlite")
    assert verdict.reference_mismatches == 2  # t4's two legs
    sql(reference, "UPDATE postings SET model_version = 1 WHERE event_id = 't4'")
    assert verify(input_path, workdir, reference_ledger=reference / "ledger.sqlite"
                  ).reference_mismatches == 0

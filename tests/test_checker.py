"""The exactly-once checker passes a correct run and catches every kind of wrong one.

Ledgers are built by hand with sqlite3 through a deliberately plain reference
applier written here (its own validation, no project code), then broken one way
at a time to show that each check can fail, with the counter that names it.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilience import checker
from resilience.checker import CheckerInputError, Transfer, Verdict, parse_transfer, verify
from resilience.jobs.payments.generator import generate

SCHEMA = """
CREATE TABLE postings (
    event_id TEXT, account TEXT, delta INTEGER, balance_after INTEGER, score REAL
);
CREATE TABLE balances (account TEXT PRIMARY KEY, balance INTEGER);
"""

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


def _simple_validate(raw: str) -> tuple[str, str, str, int] | None:
    """The contract's validation, written the plainest way (independent of the checker)."""
    try:
        document = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    for name in ("id", "from", "to"):
        if not isinstance(document.get(name), str) or not document[name]:
            return None
    amount = document.get("amount")
    if type(amount) is not int or amount <= 0:
        return None
    return document["id"], document["from"], document["to"], amount


def _score(amount: int) -> float:
    return (amount % 997) / 997


def write_input(path: Path, lines: Iterable[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def reference_apply(
    input_path: Path,
    workdir: Path,
    *,
    dedupe: bool = True,
    skip: Iterable[str] = (),
) -> None:
    """Apply the input the obviously-correct way (or wrongly, as told) into workdir.

    ``dedupe=False`` applies replayed ids again instead of dead-lettering them;
    ``skip`` names event ids to drop silently (neither applied nor dead-lettered).
    """
    skipped = set(skip)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "ledger.sqlite").unlink(missing_ok=True)
    ledger = sqlite3.connect(workdir / "ledger.sqlite")
    ledger.executescript(SCHEMA)
    balances: dict[str, int] = {}
    seen: set[str] = set()
    dead: list[dict[str, object]] = []
    lines = input_path.read_text(encoding="utf-8").split("\n")
    if lines[-1] == "":
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        transfer = _simple_validate(raw)
        if transfer is None:
            dead.append({"line": number, "reason": "invalid line", "raw": raw})
            continue
        event_id, sender, receiver, amount = transfer
        if event_id in skipped:
            continue
        if event_id in seen and dedupe:
            dead.append({"line": number, "reason": f"duplicate id {event_id}", "raw": raw})
            continue
        seen.add(event_id)
        for account, delta in ((sender, -amount), (receiver, amount)):
            balances[account] = balances.get(account, 0) + delta
            ledger.execute(
                "INSERT INTO postings VALUES (?, ?, ?, ?, ?)",
                (event_id, account, delta, balances[account], _score(amount)),
            )
    ledger.executemany("INSERT INTO balances VALUES (?, ?)", balances.items())
    ledger.commit()
    ledger.close()
    write_dead_letters(workdir, dead)


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
    assert (verdict.invalid_lines, verdict.duplicate_lines) == (2, 1)
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
    as_dict = json.loads(json.dumps(verdict.to_dict()))
    assert as_dict["ok"] is True
    assert as_dict["valid_events"] == 5


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
    reference_apply(input_path, workdir, dedupe=False)
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


# --- input validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "not json",
        '{"id":"t","from":"a","to":"b","amount":5',
        '["t","a","b",5]',
        '"t"',
        "5",
        "null",
        '{"from":"a","to":"b","amount":5}',
        '{"id":"t","to":"b","amount":5}',
        '{"id":"t","from":"a","amount":5}',
        '{"id":"t","from":"a","to":"b"}',
        '{"id":5,"from":"a","to":"b","amount":5}',
        '{"id":null,"from":"a","to":"b","amount":5}',
        '{"id":"","from":"a","to":"b","amount":5}',
        '{"id":"t","from":"","to":"b","amount":5}',
        '{"id":"t","from":"a","to":["b"],"amount":5}',
        '{"id":"t","from":"a","to":"b","amount":0}',
        '{"id":"t","from":"a","to":"b","amount":-5}',
        '{"id":"t","from":"a","to":"b","amount":10.0}',
        '{"id":"t","from":"a","to":"b","amount":1e3}',
        '{"id":"t","from":"a","to":"b","amount":"100"}',
        '{"id":"t","from":"a","to":"b","amount":true}',
        '{"id":"t","from":"a","to":"b","amount":null}',
        '{"id":"t","from":"a","to":"b","amount":NaN}',
        '{"id":"t","from":"a","to":"b","amount":5,"x":Infinity}',
        '{"id":"t","from":"a","to":"b","amount":5}}',
        "[" * 100_000,
    ],
)
def test_invalid_lines(raw: str) -> None:
    reason = parse_transfer(raw)
    assert isinstance(reason, str)
    assert reason


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"id":"t","from":"a","to":"b","amount":5}', Transfer("t", "a", "b", 5)),
        (' {"amount":5,"to":"b","from":"a","id":"t","ts":1} ', Transfer("t", "a", "b", 5)),
        ('{"id":"t","from":"a","to":"a","amount":1}', Transfer("t", "a", "a", 1)),
        ('{"id":" ","from":"é","to":"b","amount":5,"x":[1]}', Transfer(" ", "é", "b", 5)),
        (
            '{"id":"t","from":"a","to":"b","amount":123456789012345678901234567890}',
            Transfer("t", "a", "b", 123456789012345678901234567890),
        ),
        ('{"id":"t","from":"a","to":"b","amount":-1,"amount":5}', Transfer("t", "a", "b", 5)),
    ],
)
def test_valid_lines(raw: str, expected: Transfer) -> None:
    assert parse_transfer(raw) == expected


def test_non_utf8_line_is_invalid_and_any_raw_is_accepted(tmp_path: Path) -> None:
    input_path = tmp_path / "input.jsonl"
    input_path.write_bytes(BASE_LINES[0].encode() + b"\n\xff\xfe\n")
    workdir = tmp_path / "work"
    reference_apply(write_input(tmp_path / "plain.jsonl", BASE_LINES[:1]), workdir)
    write_dead_letters(workdir, [{"line": 2, "reason": "not UTF-8", "raw": "\ufffd\ufffd"}])
    verdict = verify(input_path, workdir)
    assert verdict.invalid_lines == 1
    assert verdict.ok, verdict.summary()


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
    reference_apply(input_path, workdir)
    verdict = verify(input_path, workdir)
    assert verdict.ok, verdict.summary()
    assert verdict.input_lines == stats.lines
    assert verdict.valid_events == stats.valid
    assert verdict.invalid_lines == stats.invalid
    assert verdict.duplicate_lines == stats.duplicates
    assert verdict.dead_lettered == stats.invalid + stats.duplicates


# --- property: a reference ledger passes, any single broken row fails ------------------------

ACCOUNTS = ["a", "b", "c", "d"]
INVALID_TEMPLATES = [
    "garbage",
    '{{"id":"{id}","from":"a","to":"b","amount":0}}',
    '{{"id":"{id}","from":"a","to":"b","amount":1.5}}',
    '{{"id":"{id}","from":"a","amount":3}}',
    '{{"id":"{id}","from":"a","to":"b","amount":true}}',
]
operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("transfer"),
            st.sampled_from(ACCOUNTS),
            st.sampled_from(ACCOUNTS),
            st.integers(min_value=1, max_value=10**12),
        ),
        st.tuples(st.just("replay"), st.integers(min_value=0, max_value=50)),
        st.tuples(st.just("invalid"), st.integers(0, len(INVALID_TEMPLATES) - 1)),
    ),
    min_size=1,
    max_size=25,
)


def _lines_from(ops: list[tuple[object, ...]]) -> list[str]:
    lines: list[str] = []
    transfers: list[str] = []
    for number, op in enumerate(ops):
        if op[0] == "replay" and transfers:
            lines.append(transfers[int(str(op[1])) % len(transfers)])
        elif op[0] == "invalid":
            lines.append(INVALID_TEMPLATES[int(str(op[1]))].format(id=f"t{number}"))
        else:
            _, sender, receiver, amount = op if op[0] == "transfer" else ("", "a", "b", 1)
            line = json.dumps(
                {"id": f"t{number}", "from": sender, "to": receiver, "amount": amount}
            )
            transfers.append(line)
            lines.append(line)
    return lines


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(ops=operations, data=st.data())
def test_property_reference_passes_and_any_single_row_change_fails(
    ops: list[tuple[object, ...]], data: st.DataObject
) -> None:
    lines = _lines_from(ops)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        input_path = write_input(root / "input.jsonl", lines)
        workdir = root / "work"
        reference_apply(input_path, workdir)
        verdict = verify(input_path, workdir)
        assert verdict.ok, verdict.summary()

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

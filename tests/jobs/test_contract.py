"""The input contract: hostile lines are each applied exactly once or dead-lettered once.

The job's operators run in this process (source -> model -> balances -> ledger, no Ray)
over lines drawn to hit every rule at and past its boundary, and the independent
checker (which implements the contract on its own) judges the ledger and the
dead letters. The job and the checker must agree on every line.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from checkpoint import FileSystemStore
from fusion_jobs.payments import checker
from fusion_jobs.payments.contract import (
    BALANCE_MAX,
    BALANCE_MIN,
    MAX_AMOUNT,
    apply_to_balances,
    dead_letter_entry,
    parse_transfer,
)
from fusion_jobs.payments.generator import generate
from fusion_jobs.payments.hostile import BOMB_LINES, HOSTILE_KINDS, hostile_line, mix_hostile
from fusion_jobs.payments.job import Balances, FraudModel, PaymentsSource, ledger_sink
from resilience._runtime._operator import OperatorContext


def run_in_process(input_path: Path, workdir: Path, batch: int = 64) -> None:
    """The payments job without Ray: every stage in this process, one final commit."""
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = OperatorContext(job_id="contract", task_id="t", index=0, parallelism=1,
                          workdir=workdir)
    source, model, balances, ledger = (PaymentsSource(str(input_path)), FraudModel(),
                                       Balances(), ledger_sink())
    for op in (source, model, balances, ledger):
        op.open(ctx)
    source.restore(None, [])  # type: ignore[arg-type] - no snapshot: no store needed
    end = False
    while not end:
        records, end = source.poll(batch)
        ledger.process(0, balances.process(0, model.process(0, records)))
    # The model's snapshot writes its history (the versions the ledger names).
    model.snapshot(1).write(FileSystemStore(workdir / "store", job_id="contract"))
    ledger.snapshot(1).write(None)  # type: ignore[arg-type] - the sink needs no store
    ledger.checkpoint_complete(1, 1, source.watermark())
    source.close()
    model.close()
    ledger.close()


# -- drawing hostile lines ------------------------------------------------------------

_STRINGS = st.one_of(
    st.sampled_from(["t1", "t2", "t3", "a", "b", "\u00e9t\u00e9", "\u6c34", "x" * 256,
                     "x" * 257, "\u00e9" * 128, "\u00e9" * 129, "", " "]).map(json.dumps),
    # Escapes json.dumps would never write: lone and paired surrogates, mis-paired ones.
    st.sampled_from(['"\\ud800"', '"a\\udc00"', '"\\ud83d\\ude00"', '"\\ude00\\ud83d"',
                     '"\\uD800x"', '"\\\\ud800"', '"\\u0000"']),
    st.text(max_size=8).map(json.dumps),
)
_NUMBERS = st.one_of(
    st.sampled_from([0, 1, -1, MAX_AMOUNT, MAX_AMOUNT + 1, 2**63 - 1, 2**63, 2**64, 2**70,
                     -(2**63)]).map(str),
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from(["1e3", "10.0", "-0", "1E400", "NaN", "Infinity", "true", "false",
                     "null", '"100"', "[]", "{}", "9" * 5000]),
)
_NESTING = st.integers(0, 20).map(lambda d: "[" * d + "]" * d)


@st.composite
def transfer_lines(draw: Any) -> bytes:
    fields = {"id": draw(_STRINGS), "from": draw(st.one_of(_STRINGS, _NUMBERS)),
              "to": draw(_STRINGS), "amount": draw(st.one_of(_NUMBERS, _STRINGS))}
    if draw(st.booleans()):  # a valid amount half of the time, or few lines apply
        fields["amount"] = str(draw(st.integers(1, MAX_AMOUNT)))
    pairs = [(json.dumps(k), v) for k, v in fields.items()
             if draw(st.integers(0, 15)) != 0]  # sometimes a field is missing
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.one_of(st.sampled_from(["id", "amount", "memo"]).map(json.dumps),
                             _STRINGS))
        pairs.insert(draw(st.integers(0, len(pairs))),
                     (key, draw(st.one_of(_STRINGS, _NUMBERS, _NESTING))))
    text = "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"
    line = text.encode("utf-8", "surrogatepass")
    damage = draw(st.sampled_from(["none"] * 6 + ["truncate", "bom", "latin1", "crlf",
                                                 "array"]))
    if damage == "truncate":
        line = line[: draw(st.integers(0, max(len(line) - 1, 0)))]
    elif damage == "bom":
        line = b"\xef\xbb\xbf" + line
    elif damage == "latin1":
        line = line.replace(b"t", b"\xe9", 1)
    elif damage == "crlf":
        line += b"\r"
    elif damage == "array":
        line = b"[" + line + b"]"
    return line


HOSTILE = st.lists(
    st.one_of(transfer_lines(), st.sampled_from(HOSTILE_KINDS).map(
        lambda kind: hostile_line(kind, f"h-{kind}"))),
    min_size=1, max_size=40,
)


def _write(path: Path, lines: list[bytes], final_newline: bool = True) -> Path:
    path.write_bytes(b"\n".join(lines) + (b"\n" if final_newline else b""))
    return path


def _judge(tmp: Path, lines: list[bytes], final_newline: bool = True) -> checker.Verdict:
    input_path = _write(tmp / "in.jsonl", lines, final_newline)
    run_in_process(input_path, tmp / "work")
    verdict = checker.verify(input_path, tmp / "work")
    assert verdict.ok, verdict.summary()
    # Each line ends exactly one way: applied once, or dead-lettered once.
    assert verdict.valid_events + verdict.dead_lettered == verdict.input_lines
    assert verdict.applied_events == verdict.valid_events
    return verdict


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(lines=HOSTILE, final_newline=st.booleans(), bomb=st.integers(0, 30))
@example(lines=[b'{"id":"a","from":"x","to":"y","amount":1,"m":"\\ud800","m":1}'],
         final_newline=True, bomb=0)
@example(lines=[b'{"id":"a","from":"x","to":"y","amount":1,"m":' + b"9" * 5000 + b"}"],
         final_newline=False, bomb=0)
def test_every_hostile_line_is_applied_once_or_dead_lettered_once(
    tmp_path_factory: pytest.TempPathFactory, lines: list[bytes], final_newline: bool,
    bomb: int,
) -> None:
    if bomb == 0:  # now and then a balance bomb: 1,026 transfers of the largest amount
        lines = [*lines, *(hostile_line("valid: largest amount", f"bomb-{n}")
                           for n in range(BOMB_LINES))]
    _judge(tmp_path_factory.mktemp("contract"), lines, final_newline)


@settings(max_examples=300, deadline=None)
@given(line=st.one_of(transfer_lines(), st.sampled_from(HOSTILE_KINDS).map(
    lambda kind: hostile_line(kind, "h"))))
def test_the_job_and_the_checker_agree_on_every_line(line: bytes) -> None:
    mine = parse_transfer(line.removesuffix(b"\r"))
    try:
        text = line.removesuffix(b"\r").decode("utf-8")
    except UnicodeDecodeError:
        assert isinstance(mine, str), f"the job applies a line that is not UTF-8: {line!r}"
        return
    theirs = checker.parse_transfer(text)
    if isinstance(theirs, str):
        assert isinstance(mine, str), f"only the job accepts {line[:200]!r}: {theirs}"
    else:
        assert mine == (theirs.id, theirs.from_account, theirs.to_account, theirs.amount), (
            f"only the checker accepts {line[:200]!r}: {mine}")


def test_every_hostile_kind_with_a_bomb_in_a_generated_input(tmp_path: Path) -> None:
    base = tmp_path / "base.jsonl"
    generated = generate(base, events=3_000, accounts=50, seed=5)
    mixed = tmp_path / "mixed.jsonl"
    stats = mix_hostile(base, mixed, count=2 * len(HOSTILE_KINDS), seed=9)
    assert stats.bomb == BOMB_LINES
    verdict = _judge(tmp_path, mixed.read_bytes().split(b"\n")[:-1])
    assert verdict.out_of_range_lines == 2  # the bomb's last two
    assert verdict.valid_events == generated.valid + stats.valid_hostile + BOMB_LINES - 2
    assert verdict.invalid_lines + verdict.duplicate_lines == (
        generated.invalid + generated.duplicates + stats.hostile - stats.valid_hostile)
    dead = {json.loads(line)["line"] for line in
            (tmp_path / "work" / "dead_letter.jsonl").read_bytes().splitlines()}
    assert len(stats.at) == stats.hostile
    for line, kind in stats.at:
        assert (line in dead) != kind.startswith("valid"), f"line {line} ({kind})"


def test_a_line_that_is_not_utf8_is_dead_lettered_losslessly(tmp_path: Path) -> None:
    raw = b'{"id":"x","from":"\xff\xfe","to":"b","amount":1}'
    entry = json.loads(dead_letter_entry(7, "not UTF-8", raw))
    assert entry == {"line": 7, "reason": "not UTF-8",
                     "raw_b64": base64.b64encode(raw).decode()}
    assert json.loads(dead_letter_entry(1, "r", b"caf\xc3\xa9"))["raw"] == "caf\u00e9"


@pytest.mark.parametrize(("balances", "src", "dst", "amount", "expected"), [
    ({}, "a", "b", 5, (-5, 5)),
    ({"a": BALANCE_MIN + 5}, "a", "b", 5, (BALANCE_MIN, 5)),
    ({"a": BALANCE_MIN + 4}, "a", "b", 5, "below"),
    ({"b": BALANCE_MAX - 5}, "a", "b", 5, (-5, BALANCE_MAX)),
    ({"b": BALANCE_MAX - 4}, "a", "b", 5, "above"),
    # A self-transfer debits first: it can only fail on the debit.
    ({"a": BALANCE_MAX}, "a", "a", MAX_AMOUNT, (BALANCE_MAX - MAX_AMOUNT, BALANCE_MAX)),
    ({"a": BALANCE_MIN + 1}, "a", "a", 2, "below"),
])
def test_rule_9_at_both_ends_of_the_range(balances: dict[str, int], src: str, dst: str,
                                           amount: int, expected: Any) -> None:
    got = apply_to_balances(lambda account: balances.get(account, 0), src, dst, amount)
    if isinstance(expected, str):
        assert isinstance(got, str)
        assert got.startswith("balance out of range")
        assert expected in got
    else:
        assert got == expected


def test_hostile_mix_is_deterministic(tmp_path: Path) -> None:
    base = tmp_path / "base.jsonl"
    generate(base, events=500, accounts=10, seed=1)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    mix_hostile(base, a, count=50, seed=3)
    mix_hostile(base, b, count=50, seed=3)
    assert a.read_bytes() == b.read_bytes()
    mix_hostile(base, b, count=50, seed=4)
    assert a.read_bytes() != b.read_bytes()

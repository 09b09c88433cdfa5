"""The payments input generator: deterministic, honest about its counts, and fast.

Its malformed lines are judged by the independent checker's validation, and its
fraud rule is shown to be exactly a half-space over the learner's features.
"""

from __future__ import annotations

import json
import math
import random
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fusion_jobs.payments.checker import Transfer, parse_transfer
from fusion_jobs.payments.generator import (
    FEATURE_BUCKETS,
    MULE_BUCKET,
    GenerateStats,
    account_bucket,
    generate,
    is_fraud,
)


def read_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n")
    return text.split("\n")[:-1]


def classify(lines: list[str]) -> Iterator[tuple[str, Transfer | str]]:
    """Yield ("valid" | "duplicate" | "invalid", transfer or reason) per line."""
    seen: set[str] = set()
    for line in lines:
        parsed = parse_transfer(line)
        if isinstance(parsed, str):
            yield "invalid", parsed
        elif parsed.id in seen:
            yield "duplicate", parsed
        else:
            seen.add(parsed.id)
            yield "valid", parsed


def first_account(predicate: Callable[[str], bool]) -> str:
    return next(
        name for name in (f"acct-{index:06d}" for index in range(10_000)) if predicate(name)
    )


def compromised(name: str) -> bool:
    return zlib.crc32(name.encode()) % 16 == 0


def mule(name: str) -> bool:
    return zlib.crc32(name.encode()) % 64 == MULE_BUCKET


PLAIN = first_account(lambda name: not compromised(name) and not mule(name))
COMPROMISED = first_account(lambda name: compromised(name) and not mule(name))
MULE = first_account(lambda name: mule(name) and not compromised(name))


# --- determinism -------------------------------------------------------------------


def test_same_arguments_same_bytes(tmp_path: Path) -> None:
    first = generate(tmp_path / "a.jsonl", events=5000, accounts=300, seed=7)
    second = generate(tmp_path / "b.jsonl", events=5000, accounts=300, seed=7)
    assert first == second
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_different_seed_different_bytes(tmp_path: Path) -> None:
    generate(tmp_path / "a.jsonl", events=2000, accounts=300, seed=7)
    generate(tmp_path / "b.jsonl", events=2000, accounts=300, seed=8)
    assert (tmp_path / "a.jsonl").read_bytes() != (tmp_path / "b.jsonl").read_bytes()


def test_global_random_is_untouched(tmp_path: Path) -> None:
    random.seed(1234)
    state = random.getstate()
    generate(tmp_path / "a.jsonl", events=1000, accounts=50, seed=1)
    assert random.getstate() == state


# --- honest counts, and the checker rejects what is meant to be rejected -------------


@pytest.mark.parametrize(
    ("invalid_rate", "duplicate_rate"), [(0.001, 0.0005), (0.3, 0.2), (0.0, 0.0), (0.5, 0.5)]
)
def test_stats_match_the_checkers_reading(
    tmp_path: Path, invalid_rate: float, duplicate_rate: float
) -> None:
    out = tmp_path / "input.jsonl"
    stats = generate(
        out,
        events=6000,
        accounts=500,
        seed=3,
        invalid_rate=invalid_rate,
        duplicate_rate=duplicate_rate,
    )
    lines = read_lines(out)
    kinds = Counter(kind for kind, _ in classify(lines))
    assert stats.lines == len(lines) == 6000
    assert stats.lines == stats.valid + stats.invalid + stats.duplicates
    assert kinds == Counter(
        {"valid": stats.valid, "invalid": stats.invalid, "duplicate": stats.duplicates}
    )
    fraud = sum(
        is_fraud(t.from_account, t.to_account, t.amount)
        for kind, t in classify(lines)
        if kind == "valid" and isinstance(t, Transfer)
    )
    assert fraud == stats.fraud
    # The rates are probabilities; only compare where the expected count is large.
    if invalid_rate * stats.lines >= 100:
        assert stats.invalid > 0.7 * invalid_rate * stats.lines
    if duplicate_rate * stats.lines >= 100:
        assert stats.duplicates > 0.7 * duplicate_rate * stats.lines


def _reason_kind(reason: str) -> str:
    # Drop quoted field names and numbers so that reasons group by kind.
    return re.sub(r"'[a-z]+'|-?\d+|:.*", "_", reason)


def test_malformed_lines_cover_every_kind_of_invalid(tmp_path: Path) -> None:
    out = tmp_path / "input.jsonl"
    stats = generate(out, events=4000, accounts=100, seed=5, invalid_rate=0.5, duplicate_rate=0)
    reasons = [r for kind, r in classify(read_lines(out)) if kind == "invalid"]
    assert len(reasons) == stats.invalid
    assert all(isinstance(reason, str) for reason in reasons)
    kinds = Counter(_reason_kind(str(reason)) for reason in reasons)
    # bad JSON, not an object, missing field, field not a string, field empty,
    # amount not an integer, amount not positive
    assert len(kinds) >= 7, kinds
    fields = " ".join(str(reason) for reason in reasons)
    for name in ("id", "from", "to", "amount"):
        assert f"missing field '{name}'" in fields


def test_duplicates_replay_earlier_ids_sometimes_with_other_content(tmp_path: Path) -> None:
    out = tmp_path / "input.jsonl"
    generate(out, events=4000, accounts=100, seed=9, invalid_rate=0, duplicate_rate=0.2)
    first: dict[str, Transfer] = {}
    same = different = 0
    for kind, transfer in classify(read_lines(out)):
        assert isinstance(transfer, Transfer)
        if kind == "valid":
            first[transfer.id] = transfer
        elif transfer == first[transfer.id]:
            same += 1
        else:
            different += 1
    assert same > 0
    assert different > 0
    assert same > different


# --- shape of the data ------------------------------------------------------------------


def test_line_format(tmp_path: Path) -> None:
    out = tmp_path / "input.jsonl"
    generate(out, events=3000, accounts=1000, seed=2, invalid_rate=0, duplicate_rate=0)
    previous_ts = 0
    for number, line in enumerate(read_lines(out), start=1):
        document = json.loads(line)
        assert list(document) == ["id", "from", "to", "amount", "ts"]
        assert document["id"] == f"tx-{number:09d}"
        assert re.fullmatch(r"acct-\d{6}", document["from"])
        assert re.fullmatch(r"acct-\d{6}", document["to"])
        assert document["from"] != document["to"]
        assert 0 < document["amount"] <= 10_000_000
        assert document["ts"] > previous_ts
        previous_ts = document["ts"]


def test_accounts_are_skewed(tmp_path: Path) -> None:
    out = tmp_path / "input.jsonl"
    generate(out, events=20_000, accounts=1000, seed=4, invalid_rate=0, duplicate_rate=0)
    senders = Counter(json.loads(line)["from"] for line in read_lines(out))
    top = senders.most_common(10)
    # A uniform draw would give each account ~20 transfers.
    assert top[0][1] > 20 * 20
    assert sum(count for _, count in top) > 0.2 * 20_000
    assert len(senders) > 500  # and yet a long tail of cold accounts is used


def test_amounts_are_skewed_cents(tmp_path: Path) -> None:
    out = tmp_path / "input.jsonl"
    generate(out, events=20_000, accounts=1000, seed=4, invalid_rate=0, duplicate_rate=0)
    amounts = sorted(json.loads(line)["amount"] for line in read_lines(out))
    median = amounts[len(amounts) // 2]
    assert 1_000 < median < 10_000  # tens of dollars
    assert amounts[-1] > 50 * median  # a long tail
    whole_dollars = sum(amount % 100 == 0 for amount in amounts) / len(amounts)
    assert 0.1 < whole_dollars < 0.4


def test_zero_events_and_two_accounts(tmp_path: Path) -> None:
    assert generate(tmp_path / "empty.jsonl", events=0, accounts=2, seed=0) == GenerateStats(
        0, 0, 0, 0, 0
    )
    assert (tmp_path / "empty.jsonl").read_bytes() == b""
    stats = generate(tmp_path / "two.jsonl", events=500, accounts=2, seed=0)
    assert stats.lines == 500


def test_progress_is_reported_and_no_temporary_file_remains(tmp_path: Path) -> None:
    reported: list[int] = []
    generate(
        tmp_path / "input.jsonl", events=25_000, accounts=100, seed=0, progress=reported.append
    )
    assert reported == [10_000, 20_000, 25_000]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["input.jsonl"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"events": -1}, "events"),
        ({"accounts": 1}, "accounts"),
        ({"invalid_rate": 1.5}, "invalid_rate"),
        ({"duplicate_rate": -0.1}, "duplicate_rate"),
        ({"invalid_rate": 0.6, "duplicate_rate": 0.6}, "invalid_rate \\+ duplicate_rate"),
    ],
)
def test_bad_arguments(tmp_path: Path, arguments: dict[str, float], message: str) -> None:
    settings: dict[str, float] = {"events": 10, "accounts": 10} | arguments
    with pytest.raises(ValueError, match=message):
        generate(
            tmp_path / "x.jsonl",
            events=int(settings["events"]),
            accounts=int(settings["accounts"]),
            seed=0,
            invalid_rate=settings.get("invalid_rate", 0.0),
            duplicate_rate=settings.get("duplicate_rate", 0.0),
        )
    assert not (tmp_path / "x.jsonl").exists()


def test_two_hundred_thousand_events(tmp_path: Path) -> None:
    # The generator must stay fast (well under 2 s here); timing is not asserted
    # because CI machines vary, only that the full size works.
    out = tmp_path / "input.jsonl"
    stats = generate(out, events=200_000, accounts=10_000, seed=1)
    assert stats.lines == 200_000
    with out.open("rb") as source:
        assert sum(1 for _ in source) == 200_000


# --- the fraud rule -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "receiver", "amount", "fraud"),
    [
        (PLAIN, PLAIN, 2_000_000, False),
        (PLAIN, PLAIN, 99_999_999, False),
        (PLAIN, PLAIN, 100_000_000, True),
        (PLAIN, PLAIN, 50_000_000, True),  # whole dollars halve the threshold
        (COMPROMISED, PLAIN, 99_999, False),
        (COMPROMISED, PLAIN, 100_000 + 1, True),
        (COMPROMISED, PLAIN, 100_000, True),
        (COMPROMISED, PLAIN, 49_900, False),
        (COMPROMISED, PLAIN, 50_000, True),
        (PLAIN, MULE, 99_999, False),
        (PLAIN, MULE, 100_001, True),
        (PLAIN, MULE, 50_000, True),
        (MULE, COMPROMISED, 1_000_000, False),  # the roles matter, not the names
        (COMPROMISED, MULE, 99, False),
        (COMPROMISED, MULE, 100, True),
        (COMPROMISED, MULE, 101, True),
    ],
)
def test_fraud_rule_thresholds(sender: str, receiver: str, amount: int, fraud: bool) -> None:
    assert is_fraud(sender, receiver, amount) is fraud


def _features(sender: str, receiver: str, amount: int) -> list[float]:
    """The learning stage's features: bias, log amount, two one-hots, whole dollars."""
    from_one_hot = [0.0] * FEATURE_BUCKETS
    from_one_hot[account_bucket(sender)] = 1.0
    to_one_hot = [0.0] * FEATURE_BUCKETS
    to_one_hot[account_bucket(receiver)] = 1.0
    whole = 1.0 if amount % 100 == 0 else 0.0
    return [1.0, math.log1p(amount) / 10, *from_one_hot, *to_one_hot, whole]


def _separating_weights() -> list[float]:
    from_weights = [math.log(1000) if bucket % 16 == 0 else 0.0 for bucket in range(64)]
    to_weights = [math.log(1000) if bucket == MULE_BUCKET else 0.0 for bucket in range(64)]
    # The 1e-9 margin puts the exact boundary (amount + 1) * m == 1e8 on the "no" side.
    return [-math.log(1e8) - 1e-9, 10.0, *from_weights, *to_weights, math.log(2)]


def test_fraud_rule_is_a_half_space_over_the_learners_features(tmp_path: Path) -> None:
    weights = _separating_weights()
    out = tmp_path / "input.jsonl"
    generate(out, events=20_000, accounts=2000, seed=6, invalid_rate=0, duplicate_rate=0)
    cases = [
        (t.from_account, t.to_account, t.amount)
        for _, t in classify(read_lines(out))
        if isinstance(t, Transfer)
    ]
    cases += [
        (sender, receiver, amount + shift)
        for sender in (PLAIN, COMPROMISED, MULE)
        for receiver in (PLAIN, COMPROMISED, MULE)
        for amount in (100, 50_000, 100_000, 50_000_000, 100_000_000)
        for shift in (-2, -1, 0, 1)
    ]
    for sender, receiver, amount in cases:
        score = sum(
            w * x for w, x in zip(weights, _features(sender, receiver, amount), strict=True)
        )
        assert (score > 0) is is_fraud(sender, receiver, amount), (sender, receiver, amount)


def test_account_bucket_is_crc32_of_utf8() -> None:
    assert account_bucket("acct-000042") == zlib.crc32(b"acct-000042") % 64
    assert account_bucket("é") == zlib.crc32("é".encode()) % 64


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("accounts", [200, 5000])
def test_fraud_rate_is_sane(tmp_path: Path, seed: int, accounts: int) -> None:
    stats = generate(tmp_path / "input.jsonl", events=30_000, accounts=accounts, seed=seed)
    assert 0.01 <= stats.fraud / stats.valid <= 0.03

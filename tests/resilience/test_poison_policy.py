"""Poison-pill decisions without a cluster: budgets, repeated failures, the quarantine
file, record digests and the snapshot-debt rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resilience._runtime._poison import (
    Quarantine,
    QuarantineBudget,
    budget_exceeded,
    record_digest,
    repeated_failure,
)
from resilience._runtime._task import SnapshotDebt


def test_budget_by_count_and_by_fraction() -> None:
    budget = QuarantineBudget(max_records=3, max_fraction=0.01, min_records=1_000)
    assert budget_exceeded(3, 10, budget) is None
    assert "more than the budget of 3" in str(budget_exceeded(4, 10_000_000, budget))
    # The fraction is judged only once enough records were read.
    assert budget_exceeded(3, 999, QuarantineBudget(max_records=None, max_fraction=0.001,
                                                    min_records=1_000)) is None
    assert "0.10%" in str(budget_exceeded(2, 1_000, QuarantineBudget(
        max_records=None, max_fraction=0.001, min_records=1_000)))
    assert budget_exceeded(10**6, 10, QuarantineBudget(max_records=None,
                                                      max_fraction=None)) is None


@pytest.mark.parametrize("bad", [{"max_records": -1}, {"max_fraction": 1.5},
                                 {"max_fraction": -0.1}, {"min_records": -1}])
def test_budget_refuses_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        QuarantineBudget(**bad)  # type: ignore[arg-type]


def _r(reason: str, kind: str = "error", committed: bool = False) -> dict[str, object]:
    return {"reason": reason, "kind": kind, "first_commit_at": 1.0 if committed else None}


def test_repeated_failure_needs_the_same_error_three_times_without_a_commit() -> None:
    same = [_r("boom"), _r("boom"), _r("boom")]
    assert "same failure 3 times" in str(repeated_failure(same))
    assert repeated_failure(same[:2]) is None
    assert repeated_failure([_r("boom"), _r("other"), _r("boom")]) is None
    # A commit in between means the replay got further: not hopeless.
    assert repeated_failure([_r("boom", committed=True), _r("boom"), _r("boom")]) is None
    # The newest restore has had no chance to commit: its own flag does not count.
    assert repeated_failure([_r("boom"), _r("boom"), _r("boom", committed=True)]) is not None


@pytest.mark.parametrize("kind", ["crash", "operator", "poison", "leadership", "transient"])
def test_repeated_crashes_are_never_called_hopeless(kind: str) -> None:
    """A chaos drill may kill the same task five times: that says nothing about the input."""
    assert repeated_failure([_r("task x died", kind)] * 5) is None


def test_quarantine_file_is_durable_deduplicated_and_survives_a_torn_line(
        tmp_path: Path) -> None:
    q = Quarantine(tmp_path)
    assert q.add({"stage": "s", "digest": "d1", "error": "e"})
    assert not q.add({"stage": "s", "digest": "d1", "error": "again"})
    assert q.add({"stage": "t", "digest": "d1", "error": "other stage"})
    with open(tmp_path / "quarantine.jsonl", "ab") as f:
        f.write(b'{"stage": "s", "dig')  # a crash in the middle of an append
    again = Quarantine(tmp_path)
    assert again.count == 2
    assert again.of_stage("s") == {"d1"}
    assert ("t", "d1") in again
    assert ("s", "d2") not in again
    entries = [json.loads(line) for line in
               (tmp_path / "quarantine.jsonl").read_text().splitlines()[:2]]
    assert all("at" in e for e in entries)


def test_record_digest_is_stable_and_tells_records_apart() -> None:
    a = (1, "acct-1", -500, 0.25)
    assert record_digest(a) == record_digest((1, "acct-1", -500, 0.25))
    assert record_digest(a) != record_digest((2, "acct-1", -500, 0.25))
    assert record_digest([1, 2]) == record_digest((1, 2))  # lists and tuples encode alike
    # Values MessagePack cannot encode fall back to their repr.
    assert record_digest((2**70,)) == record_digest((2**70,))
    assert record_digest((2**70,)) != record_digest((2**71,))


def test_snapshot_debt_refuses_a_snapshot_begun_before_a_failure_was_handed_back() -> None:
    debt = SnapshotDebt()
    first = debt.begin()
    second = debt.begin()  # in flight together (a timed-out checkpoint and the next)
    assert debt.may_complete(first)
    debt.write_failed()  # the first one's write fails ...
    assert not debt.may_complete(second)  # ... and the second lacks its changes
    debt.write_failed()
    debt.hand_back(2)
    third = debt.begin()  # begun after both were handed back: it carries them
    assert debt.may_complete(third)
    debt.reset()
    assert debt.may_complete(debt.begin())

"""A two-site run's invariants, judged from a drill's raw observations (no cluster here).

Each invariant must be able to fail: every test gives it an observation that breaks it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chaos._drill import DrillOptions
from chaos._scenario import InvariantSpec
from chaos._sites_run import _judge


def _commit(site_epoch: int, checkpoint: int, at: float) -> dict[str, Any]:
    return {"sink_id": "ledger", "checkpoint_id": checkpoint, "fencing_epoch": site_epoch,
            "watermark": checkpoint * 1000, "rows": 10, "committed_at": at}


def _observed(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "active_site": "b",
        "verdicts": {"b": {"passed": True, "detail": "all applied", "data": {}},
                     "a": {"passed": False, "detail": "partial", "data": {}}},
        "epochs": [{"epoch": 2, "site": "b", "kind": "failover", "from_site": "a",
                    "restored_from": 3, "at": 100.0}],
        "commits": {"a": [_commit(1, 1, 90.0), _commit(1, 2, 95.0), _commit(1, 3, 99.0)],
                    "b": [_commit(1, 1, 90.0), _commit(1, 2, 95.0), _commit(1, 3, 99.0),
                          _commit(2, 4, 101.0)]},
        "rpo_events": 0, "lag_at_fault": {"checkpoints": 0, "events": 0, "seconds": 0.1},
        "rto_seconds": 2.5, "failback_result": None,
    }
    base.update(changes)
    return base


def _check(name: str, observed: dict[str, Any], mode: str = "sync",
           **params: Any) -> tuple[bool, str]:
    result = _judge(InvariantSpec(name, params), DrillOptions(Path("/nowhere"), mode=mode),
                    observed)
    return result.passed, result.detail


def test_a_clean_failover_passes_every_invariant() -> None:
    observed = _observed()
    assert _check("exactly_once", observed)[0]
    assert _check("no_split_brain", observed)[0]
    assert _check("rpo", observed, max_lost=0)[0]
    assert _check("recovery_time", observed, max_seconds=5)[0]
    assert _check("replication_lag", observed, max_seconds=1)[0]


def test_an_old_site_committing_after_the_new_election_is_split_brain() -> None:
    commits = _observed()["commits"]
    commits["a"].append(_commit(1, 4, 100.5))  # under epoch 1, after epoch 2 was elected
    passed, detail = _check("no_split_brain", _observed(commits=commits))
    assert not passed
    assert "site a committed checkpoints [4]" in detail


def test_a_site_going_back_in_epoch_is_split_brain() -> None:
    commits = _observed()["commits"]
    commits["b"].append(_commit(1, 5, 102.0))
    passed, detail = _check("no_split_brain", _observed(commits=commits))
    assert not passed
    assert "lower than before" in detail


def test_the_checker_over_the_active_site_decides_exactly_once() -> None:
    assert not _check("exactly_once", _observed(active_site="a"))[0]


@pytest.mark.parametrize(("mode", "lost", "lag_events", "passed"), [
    ("sync", 0, 0, True), ("sync", 1, 500, False),
    ("async", 400, 500, True), ("async", 600, 500, False),
])
def test_rpo_is_zero_in_sync_and_bounded_by_the_lag_in_async(
        mode: str, lost: int, lag_events: int, passed: bool) -> None:
    observed = _observed(rpo_events=lost,
                         lag_at_fault={"checkpoints": 2, "events": lag_events, "seconds": 1.0})
    assert _check("rpo", observed, mode=mode)[0] is passed


def test_recovery_time_counts_the_failback_too() -> None:
    observed = _observed(failback_result={"rto_seconds": 7.5})
    passed, detail = _check("recovery_time", observed, max_seconds=5)
    assert not passed
    assert "failback 7.50s" in detail


def test_a_standby_too_far_behind_breaks_replication_lag() -> None:
    observed = _observed(lag_at_fault={"checkpoints": 6, "events": 90_000, "seconds": 3.2})
    assert not _check("replication_lag", observed, max_seconds=2)[0]
    assert not _check("replication_lag", _observed(lag_at_fault=None), max_seconds=2)[0]


def test_without_a_drill_result_nothing_passes() -> None:
    result = _judge(InvariantSpec("exactly_once"), DrillOptions(Path("/nowhere")), None)
    assert not result.passed

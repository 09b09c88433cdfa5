"""Policies: composition, validation at construction, and the pure failover decision."""

from __future__ import annotations

import pytest
import tenacity

from resilience.policies import (
    EscalateToJob,
    FailCalls,
    FailoverChain,
    FailoverState,
    Health,
    PromoteStandby,
    RestartActor,
    StandbyStatus,
    decide,
    escalate,
    every,
    missed_heartbeats,
    no_progress,
    restart,
    standby,
)


def test_triggers_compose_and_print() -> None:
    trigger = every(seconds=1) | every(calls=10_000)
    assert repr(trigger) == "every(seconds=1) | every(calls=10000)"
    assert not trigger.due(calls=5, seconds=0.5)
    assert trigger.due(calls=5, seconds=1.0)
    assert trigger.due(calls=10_000, seconds=0.0)
    assert not every(seconds=1).due(calls=0, seconds=9)  # nothing to save


@pytest.mark.parametrize(("make", "message"), [
    (lambda: every(), "exactly one of seconds= or calls="),
    (lambda: every(seconds=1, calls=2), "exactly one"),
    (lambda: every(seconds=-1), "seconds must be > 0"),
    (lambda: every(calls=1.5), "calls must be an integer"),
    (lambda: restart(max=0), "max must be > 0"),
    (lambda: restart(backoff=3), "backoff must be a tenacity wait strategy"),
    (lambda: standby(0), "n must be > 0"),
    (lambda: missed_heartbeats(0), "count must be > 0"),
    (lambda: no_progress(seconds=0), "seconds must be > 0"),
    (lambda: restart() | restart(), "names the same action twice"),
])
def test_a_bad_option_raises_naming_it(make, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_detectors() -> None:
    detect = missed_heartbeats(3) | no_progress(seconds=5)
    assert not detect.failed(Health())
    assert detect.failed(Health(alive=False))
    assert detect.failed(Health(missed_heartbeats=3))
    assert not detect.failed(Health(since_progress_s=60, pending_calls=0))  # idle is fine
    assert detect.failed(Health(since_progress_s=5, pending_calls=1))


def test_restart_backoff_uses_tenacity() -> None:
    r = restart(max=5, backoff=tenacity.wait_exponential(multiplier=0.1, max=0.5))
    assert [r.delay_s(n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.5]


CHAIN = standby(1, max_lag=100) | restart(max=2) | escalate()


def test_promotes_the_least_lagging_live_standby() -> None:
    state = FailoverState(standbys=[StandbyStatus(1, True, 50), StandbyStatus(2, True, 3),
                                    StandbyStatus(3, False, 0)])
    assert decide(CHAIN, state) == PromoteStandby(2, "standby 2 (3 calls behind)")


def test_a_standby_beyond_its_lag_bound_is_reported_and_not_promoted() -> None:
    decision = decide(CHAIN, FailoverState(standbys=[StandbyStatus(1, True, 500)]))
    assert isinstance(decision, RestartActor)
    assert "standby 1 is 500 calls behind (bound 100): not promoted" in decision.reason


def test_restart_budget_then_escalate_then_give_up() -> None:
    assert isinstance(decide(CHAIN, FailoverState(restarts_used=1)), RestartActor)
    decision = decide(CHAIN, FailoverState(restarts_used=2))
    assert isinstance(decision, EscalateToJob)
    assert "restart budget of 2 spent" in decision.reason
    assert isinstance(decide(restart(max=2), FailoverState(restarts_used=2)), FailCalls)


def test_decide_is_pure() -> None:
    state = FailoverState(restarts_used=1, standbys=[StandbyStatus(1, True, 7)])
    assert decide(CHAIN, state) == decide(CHAIN, state)
    assert isinstance(CHAIN, FailoverChain)
    assert repr(CHAIN) == "standby(1, max_lag=100) | restart(max=2) | escalate()"

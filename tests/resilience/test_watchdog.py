"""The driver's watchdog policy, without a cluster: what each failing part leads to."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from resilience._errors import InfrastructureError
from resilience._runtime._watchdog import (
    Deadlines,
    Health,
    RestartEtcd,
    RestartRay,
    StopRun,
    Watchdog,
    decide,
)

D = Deadlines(etcd_unreachable_s=10, coordinator_silent_s=30, electing_s=60, restoring_s=100,
              max_restarts=2)
OWNED = Health(etcd_embedded=True, ray_local=True)
EXTERNAL = Health(etcd_embedded=False, ray_local=False)


def test_a_healthy_job_is_left_alone() -> None:
    assert decide(OWNED, D) is None
    assert decide(replace(OWNED, etcd_silent_s=9.9, coordinator_silent_s=29,
                          state="restoring", state_s=99), D) is None


def test_what_this_process_started_is_restarted_within_a_budget() -> None:
    dead_etcd = replace(OWNED, etcd_exited="the embedded etcd exited (killed by signal 9)")
    assert decide(dead_etcd, D) == RestartEtcd(dead_etcd.etcd_exited or "")
    assert isinstance(decide(replace(dead_etcd, etcd_restarts=2), D), StopRun)
    silent = replace(OWNED, etcd_silent_s=11)  # paused: killed and started again
    assert isinstance(decide(silent, D), RestartEtcd)
    lost = replace(OWNED, ray_lost="the local Ray node's raylet (pid 7) exited with code -9")
    assert decide(lost, D) == RestartRay(lost.ray_lost or "")
    assert "2 restarts already" in str(decide(replace(lost, ray_restarts=2), D))


def test_what_belongs_to_others_ends_the_run_naming_it() -> None:
    action = decide(replace(EXTERNAL, etcd_silent_s=11), D)
    assert isinstance(action, StopRun)
    assert "etcd has not answered for 11 s" in action.reason
    assert "coordinator has not answered" in str(decide(replace(EXTERNAL,
                                                                coordinator_silent_s=31), D))
    assert "could not lead the job for 61 s" in str(decide(replace(EXTERNAL, state="electing",
                                                                   state_s=61), D))
    assert "a restore has lasted 101 s" in str(decide(replace(EXTERNAL, state="restoring",
                                                              state_s=101), D))
    # Another state lasting long (a long job) is never a reason.
    assert decide(replace(EXTERNAL, state="running", state_s=10**6), D) is None


def test_a_lost_node_outranks_a_silent_coordinator() -> None:
    health = replace(OWNED, ray_lost="raylet gone", coordinator_silent_s=99, etcd_silent_s=99)
    assert isinstance(decide(health, D), RestartRay)


@pytest.mark.parametrize("bad", [{"etcd_unreachable_s": 0}, {"electing_s": -1},
                                 {"max_restarts": -1}, {"restoring_s": float("nan")}])
def test_deadlines_refuse_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        Deadlines(**bad)  # type: ignore[arg-type]


class FakeInfra:
    """A driver whose parts fail on command; records what the watchdog asked of it."""

    def __init__(self) -> None:
        self.etcd_embedded = True
        self.ray_local = True
        self.exited: str | None = None
        self.answers = True
        self.lost: str | None = None
        self.calls: list[str] = []

    def etcd_exited(self) -> str | None:
        return self.exited

    def etcd_answers(self) -> bool:
        return self.answers

    def ray_lost(self) -> str | None:
        return self.lost

    def restart_etcd(self) -> None:
        self.calls.append("restart_etcd")
        self.exited = None

    def restart_ray(self) -> None:
        self.calls.append("restart_ray")
        self.lost = None

    def after_etcd_restart(self) -> None:
        self.calls.append("relead")


class FakeRunner:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls
        self.spec: Any = type("Spec", (), {"job_id": "j"})()

    def abandon(self) -> None:
        self.calls.append("abandon")

    def start(self) -> None:
        self.calls.append("start")


def test_the_watchdog_carries_decisions_out_in_order_on_a_fake_clock() -> None:
    now = [0.0]
    infra = FakeInfra()
    dog = Watchdog(infra, D, clock=lambda: now[0])
    runner = FakeRunner(infra.calls)
    status = {"state": "running"}
    dog.check(runner, status)
    infra.exited = "the embedded etcd exited (killed by signal 9)"
    dog.check(runner, status)
    assert infra.calls == ["restart_etcd", "relead"]
    infra.lost = "raylet gone"
    dog.check(runner, status)
    assert infra.calls[2:] == ["abandon", "restart_ray", "start"]
    assert dog.etcd_restarts == 1
    assert dog.ray_restarts == 1
    assert len(dog.events) == 2
    # etcd stops answering: restarted only once the deadline has passed.
    infra.answers = False
    now[0] = 5
    dog.check(runner, status)
    assert infra.calls[5:] == []
    now[0] = 11
    dog.check(runner, status)
    assert infra.calls[5:] == ["restart_etcd", "relead"]
    # An external etcd that stays silent ends the run.
    infra.etcd_embedded = False
    now[0] = 22
    with pytest.raises(InfrastructureError, match="job j stopped: etcd has not answered"):
        dog.check(runner, status)

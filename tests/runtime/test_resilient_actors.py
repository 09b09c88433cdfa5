"""`@resilient` actors on real Ray: exactly-once calls across SIGKILLs, dedup, standby takeover.

Each call of the counter returns the total right after it, and every call adds 1:
so the results of all calls, of all callers together, must be exactly 1..N. A call
applied twice would create a gap; a result delivered twice, a repeat.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import Any

import msgpack
import pytest
import ray

from resilience import FailoverExhausted, faultpoints
from resilience._actors import StateNotSerializable, resilient
from resilience.policies import every, restart, standby
from resilience.testing import wait_until

pytestmark = pytest.mark.ray


class Tally:
    """A plain class, decorated in each test with the policy under test."""

    def __init__(self) -> None:
        self.total = 0
        self.applied: list[str] = []

    def add(self, tag: str) -> int:
        self.total += 1
        self.applied.append(tag)
        return self.total

    def peek(self) -> int:
        return self.total


def _decorate(store: Path, **policy: Any) -> Any:
    cls = type("Tally", (Tally,), {"__module__": __name__})
    return resilient(store=store, **policy)(cls)


@ray.remote(num_cpus=0)
def _caller(handle: Any, name: str, n: int) -> list[int]:
    out = []
    for i in range(0, n, 50):
        refs = [handle.add.remote(f"{name}:{j}") for j in range(i, min(i + 50, n))]
        out.extend(ray.get(refs))
    return out


def _assert_exactly_once(results: list[int], state: dict[str, Any], n_calls: int) -> None:
    assert sorted(results) == list(range(1, n_calls + 1)), "a call lost or applied twice"
    assert state["total"] == n_calls
    assert len(state["applied"]) == len(set(state["applied"])) == n_calls


def test_two_callers_ten_thousand_calls_with_repeated_sigkills(
    tmp_path: Path, ray_local: str
) -> None:
    cls = _decorate(tmp_path, checkpoint=every(calls=700), failover=restart(max=20))
    handle = cls.remote()
    n_each = 5_000
    callers = [_caller.remote(handle, name, n_each) for name in ("alice", "bob")]
    kills = 0
    for threshold in (1_000, 3_000, 5_000, 7_000, 8_500):
        wait_until(lambda t=threshold: resilient.ping(handle)["applied_seq"] >= t,
                   timeout_s=120, message=f"calls stalled before {threshold}")
        os.kill(resilient.ping(handle)["pid"], signal.SIGKILL)
        kills += 1
    results = ray.get(callers, timeout=300)
    assert kills == 5
    assert all(len(r) == n_each for r in results)  # one result per call, each caller
    state = resilient.state(handle)
    _assert_exactly_once(results[0] + results[1], state, 2 * n_each)
    assert resilient.ping(handle)["applied_seq"] == 2 * n_each  # nothing logged twice


def test_a_call_retried_after_a_crash_is_not_applied_twice(
    tmp_path: Path, ray_local: str
) -> None:
    cls = _decorate(tmp_path, failover=restart(max=5))
    handle = cls.options(name="dedup-target").remote()
    assert handle.add.call("warm-up") == 1
    # Crash after the call is applied and durable, before the reply: Ray retries it
    # with the same call id, and the restarted actor answers from its record.
    faultpoints.arm(tmp_path / "dedup-target", "actor.before_reply", "kill")
    pid = resilient.ping(handle)["pid"]
    assert ray.get(handle.add.remote("the-call"), timeout=60) == 2
    assert resilient.ping(handle)["pid"] != pid  # the worker really died
    assert resilient.state(handle)["applied"] == ["warm-up", "the-call"]
    assert handle.add.call("after") == 3


def test_a_corrupt_newest_snapshot_falls_back_and_replays_every_call(
    tmp_path: Path, ray_local: str
) -> None:
    from checkpoint import FileSystemStore

    cls = _decorate(tmp_path, checkpoint=every(calls=10), failover=restart(max=5))
    handle = cls.options(name="fallback-target").remote()
    for i in range(45):  # snapshots at 10, 20, 30, 40 calls; the two newest are kept
        assert handle.add.call(f"c{i}") == i + 1
    store = FileSystemStore(tmp_path, job_id="fallback-target")
    newest = store.get_manifest(store.list_checkpoints()[-1])
    assert len(store.list_checkpoints()) == 2
    path = store.chunk_path(newest.tasks["state"].chunks[0])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.kill(resilient.ping(handle)["pid"], signal.SIGKILL)
    # Restored from the older snapshot plus the log kept since it: nothing lost.
    assert handle.add.call("after") == 46
    state = resilient.state(handle)
    assert state["applied"] == [*(f"c{i}" for i in range(45)), "after"]


class Ledger:
    """Plain data only: the class a financial user keeps in MessagePack."""

    def __init__(self) -> None:
        self.balances: dict[str, int] = {}
        self.refused = 0

    def post(self, account: str, cents: int) -> int:
        if cents == 0:
            self.refused += 1  # a state change before the raise: applied once, too
            raise ValueError(f"zero posting to {account}")
        self.balances[account] = self.balances.get(account, 0) + cents
        return self.balances[account]


def test_a_msgpack_actor_restores_from_plain_msgpack_and_replays_recorded_errors(
    tmp_path: Path, ray_local: str
) -> None:
    from checkpoint import FileSystemStore

    cls = resilient(store=tmp_path, format="msgpack", checkpoint=every(calls=10),
                    failover=restart(max=5))(type("Ledger", (Ledger,), {"__module__": __name__}))
    handle = cls.options(name="msgpack-ledger").remote()
    calls = [(f"acct-{i % 3}", 100) for i in range(31)]
    calls.insert(24, ("acct-9", 0))  # log position 25
    for account, cents in calls:
        if cents:
            handle.post.call(account, cents)
            continue
        with pytest.raises(ValueError, match="zero posting to acct-9"):
            ray.get(handle._submit("post", (account, 0), {}, call_id="the-zero"), timeout=60)
    store = FileSystemStore(tmp_path, job_id="msgpack-ledger")
    # Snapshots every 10 calls, written in the background: wait for one past the error.
    wait_until(lambda: store.list_checkpoints()[-1] > 26, timeout_s=60,
               message="no snapshot after the failed call")
    # Read with msgpack itself, not with the actor's codec, and compare with a model.
    chunk = store.get_chunk(store.get_manifest(store.list_checkpoints()[-1])
                            .tasks["state"].chunks[0])
    assert chunk[:1] == b"\xc1"
    doc = msgpack.unpackb(chunk[1:], raw=False, strict_map_key=False)
    balances: dict[str, int] = {}
    for account, cents in calls[:doc["seq"]]:
        if cents:
            balances[account] = balances.get(account, 0) + cents
    assert doc["state"] == {"balances": balances, "refused": 1}
    assert ["the-zero", 25, "err", {"type": "ValueError",
                                    "message": "zero posting to acct-9"}] in doc["results"]
    os.kill(resilient.ping(handle)["pid"], signal.SIGKILL)
    # The retried call id answers from the restored record and changes nothing.
    with pytest.raises(ValueError, match="zero posting to acct-9"):
        ray.get(handle._submit("post", ("acct-9", 0), {}, call_id="the-zero"), timeout=60)
    assert handle.post.call("acct-2", 100) == 1100  # 31 posts of 100 before it, then this
    assert resilient.state(handle) == {
        "balances": {"acct-0": 1100, "acct-1": 1000, "acct-2": 1100}, "refused": 1}
    # Arguments that are not plain data are refused at the caller, before anything runs.
    with pytest.raises(TypeError, match="format='msgpack'"):
        handle.post.remote("acct-0", {1, 2})


def test_a_standby_takes_over_when_the_primary_dies(tmp_path: Path, ray_local: str) -> None:
    cls = _decorate(tmp_path, failover=standby(1) | restart(max=5))
    handle = cls.remote()
    results = [handle.add.call(f"c{i}") for i in range(300)]
    primary = resilient.ping(handle)
    assert primary["role"] == "primary"
    wait_until(lambda: resilient.ping(handle, 1)["applied_seq"] == 300, timeout_s=30,
               message="the standby did not follow the log")
    in_flight = [handle.add.remote(f"f{i}") for i in range(100)]
    os.kill(primary["pid"], signal.SIGKILL)
    results += resilient.get(in_flight)
    results += [handle.add.call(f"after{i}") for i in range(50)]
    now = resilient.ping(handle)
    assert now["role"] == "primary"
    assert now["index"] == 1  # the warm standby, not a restarted process
    assert now["pid"] != primary["pid"]
    assert handle._failovers[0]["decision"] == "PromoteStandby"
    _assert_exactly_once(results, resilient.state(handle), 450)
    # The killed replica comes back as the new standby and catches up.
    wait_until(lambda: resilient.ping(handle, 0)["role"] == "standby"
               and resilient.ping(handle, 0)["applied_seq"] == 450, timeout_s=60)


def test_state_that_cannot_be_serialized_fails_at_the_first_checkpoint(
    tmp_path: Path, ray_local: str
) -> None:
    class WithLock:
        def __init__(self) -> None:
            self.count = 0
            self.guard = threading.Lock()

        def inc(self) -> int:
            self.count += 1
            return self.count

    cls = resilient(store=tmp_path)(WithLock)
    with pytest.raises(Exception, match=r"WithLock\.guard cannot be serialized") as info:
        cls.remote()
    assert isinstance(info.value, StateNotSerializable) or "StateNotSerializable" in str(
        info.value)


def test_a_spent_restart_budget_ends_in_failover_exhausted(tmp_path: Path,
                                                           ray_local: str) -> None:
    cls = _decorate(tmp_path, failover=restart(max=1))
    handle = cls.remote()
    assert handle.add.call("a") == 1
    os.kill(resilient.ping(handle)["pid"], signal.SIGKILL)
    assert handle.add.call("b") == 2  # the one allowed restart
    os.kill(resilient.ping(handle)["pid"], signal.SIGKILL)
    with pytest.raises(FailoverExhausted, match="restart budget of 1 spent"):
        ray.get(handle.add.remote("c"), timeout=60)


def test_placed_below_ray_remote_a_plain_handle_is_exactly_once(
    tmp_path: Path, ray_local: str
) -> None:
    @ray.remote(max_restarts=-1, max_task_retries=-1, num_cpus=0, max_concurrency=100)
    @resilient(store=tmp_path, checkpoint=every(calls=100))
    class Counter:
        def __init__(self) -> None:
            self.total = 0

        def add(self, x: int) -> int:
            self.total += x
            return self.total

    actor = Counter.remote()
    refs = [actor.add.remote(1) for _ in range(300)]
    # No wait: the kill lands while calls are in flight.
    os.kill(ray.get(actor.__resilient_ping__.remote())["pid"], signal.SIGKILL)
    refs += [actor.add.remote(1) for _ in range(300)]
    assert sorted(ray.get(refs, timeout=120)) == list(range(1, 601))


def test_placed_above_ray_remote_its_options_are_kept(tmp_path: Path, ray_local: str) -> None:
    @resilient(store=tmp_path)
    @ray.remote(num_cpus=0, max_concurrency=7)
    class Counter:
        def __init__(self) -> None:
            self.total = 0

        def add(self, x: int) -> int:
            self.total += x
            return self.total

    assert Counter.ray_options["max_concurrency"] == 7
    handle = Counter.remote()
    assert [handle.add.call(2) for _ in range(3)] == [2, 4, 6]


def test_bad_options_fail_at_decoration(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has no public method nope"):
        resilient(read_only=("nope",))(Tally)
    with pytest.raises(TypeError, match="not a checkpoint trigger"):
        resilient(checkpoint=5)(Tally)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs log=True"):
        resilient(failover=standby(1), log=False)(Tally)
    with pytest.raises(TypeError, match=r"use Tally\.remote"):
        resilient(store=tmp_path)(Tally)()


def test_a_stopped_primary_is_detected_by_missed_heartbeats_and_replaced(
    tmp_path: Path, ray_local: str
) -> None:
    from resilience.policies import missed_heartbeats

    cls = _decorate(tmp_path, failover=standby(1) | restart(max=5),
                    detect=missed_heartbeats(3, interval_s=0.2))
    handle = cls.remote()
    results = [handle.add.call(f"c{i}") for i in range(50)]
    stopped = resilient.ping(handle)["pid"]
    os.kill(stopped, signal.SIGSTOP)  # alive to the OS and to Ray, but frozen
    try:
        pending = [handle.add.remote(f"p{i}") for i in range(20)]
        # Ray alone would wait forever; the supervisor kills it, the standby takes over.
        results += resilient.get(pending, timeout_s=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stopped, signal.SIGCONT)
    assert handle._supervisor.events, "the supervisor never acted"
    assert handle._supervisor.events[0]["health"].missed_heartbeats >= 3
    assert resilient.ping(handle)["pid"] != stopped
    _assert_exactly_once(results, resilient.state(handle), 70)

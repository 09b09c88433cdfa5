"""CoordinatorCore: triggering, acknowledgements, aborts, expiry, subsumption, restores."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from checkpoint import (
    CheckpointAborted,
    CheckpointCompleted,
    CheckpointConfig,
    CoordinatorCore,
)

TASKS = ("source", "op-0", "op-1", "sink")


@dataclass
class FakeClock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def core(clock: FakeClock, **config: float) -> CoordinatorCore:
    return CoordinatorCore(TASKS, CheckpointConfig(**config), clock=clock)  # type: ignore[arg-type]


def ack_all(c: CoordinatorCore, checkpoint_id: int, generation: int | None = None) -> (
    CheckpointCompleted | None
):
    gen = c.generation if generation is None else generation
    done = None
    for i, task in enumerate(TASKS):
        done = c.ack(gen, checkpoint_id, task, {"task": task, "i": i})
        if i < len(TASKS) - 1:
            assert done is None
    return done


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("interval_s", 0),
        ("timeout_s", -1),
        ("min_pause_s", -0.1),
        ("max_concurrent", 0),
        ("retained", 0),
        ("after_restore_s", -1),
    ],
)
def test_config_is_validated_at_construction(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        CheckpointConfig(**{field: value})  # type: ignore[arg-type]


def test_a_job_needs_tasks(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="at least one task"):
        CoordinatorCore([], CheckpointConfig(), clock=clock)


# -- triggering -----------------------------------------------------------------------------


def test_due_follows_the_interval(clock: FakeClock) -> None:
    c = core(clock, interval_s=1.0, max_concurrent=5)
    assert c.due()
    assert c.trigger() == 1
    clock.now = 0.999
    assert not c.due()
    clock.now = 1.0
    assert c.due()
    assert c.trigger() == 2
    pending = c.pending[2]
    assert pending.triggered_at == 1.0
    assert pending.expected == frozenset(TASKS)
    assert pending.generation == 0
    assert pending.missing == frozenset(TASKS)


def test_max_concurrent_limits_pending_checkpoints(clock: FakeClock) -> None:
    c = core(clock, interval_s=1.0, max_concurrent=2)
    c.trigger()
    clock.now = 1
    c.trigger()
    clock.now = 100
    assert not c.due()  # two pending
    assert ack_all(c, 2) is not None  # completes 2, subsumes 1
    assert c.pending == {}
    assert c.due()


def test_one_pending_checkpoint_blocks_the_next_by_default(clock: FakeClock) -> None:
    c = core(clock, interval_s=1.0)
    c.trigger()
    clock.now = 50
    assert not c.due()
    ack_all(c, 1)
    assert c.due()


def test_min_pause_counts_from_the_last_completion(clock: FakeClock) -> None:
    c = core(clock, interval_s=1.0, min_pause_s=3.0)
    c.trigger()
    clock.now = 2.0
    ack_all(c, 1)
    clock.now = 4.9
    assert not c.due()  # interval passed long ago, pause not yet
    clock.now = 5.0
    assert c.due()


# -- acknowledgements -----------------------------------------------------------------------


def test_last_ack_completes_with_every_snapshot(clock: FakeClock) -> None:
    c = core(clock)
    clock.now = 10
    cid = c.trigger()
    clock.now = 12.5
    assert c.ack(0, cid, "source", "s") is None
    assert c.ack(0, cid, "source", "s-again") is None  # a repeated ack replaces, not counts
    assert c.pending[cid].missing == frozenset({"op-0", "op-1", "sink"})
    assert c.ack(0, cid, "stranger", "x") is None  # not a task of this job
    assert c.ack(0, cid, "op-0", "a") is None
    assert c.ack(0, cid, "op-1", "b") is None
    done = c.ack(0, cid, "sink", "k")
    assert isinstance(done, CheckpointCompleted)
    assert done.checkpoint_id == cid
    assert done.generation == 0
    assert done.acks == {"source": "s-again", "op-0": "a", "op-1": "b", "sink": "k"}
    assert done.triggered_at == 10
    assert done.completed_at == 12.5
    assert done.duration_s == 2.5
    assert cid not in c.pending
    # Late duplicate acks after completion are ignored.
    assert c.ack(0, cid, "sink", "k") is None
    assert c.ack(0, 99, "sink", "k") is None  # never triggered


def test_completion_does_not_advance_last_completed_until_committed(clock: FakeClock) -> None:
    c = core(clock)
    cid = c.trigger()
    ack_all(c, cid)
    assert c.last_completed == 0
    c.committed(cid)
    assert c.last_completed == cid
    c.committed(cid - 1)  # never goes back
    assert c.last_completed == cid


def test_later_completion_subsumes_earlier_pending(clock: FakeClock) -> None:
    c = core(clock, interval_s=1, max_concurrent=3)
    ids = []
    for t in range(3):
        clock.now = t
        ids.append(c.trigger())
    assert ids == [1, 2, 3]
    c.ack(0, 1, "source", "partial")
    done = ack_all(c, 2)
    assert done is not None
    assert done.checkpoint_id == 2
    assert set(c.pending) == {3}  # 1 is subsumed, 3 goes on
    assert ack_all(c, 1) is None  # an older one can no longer complete
    done3 = ack_all(c, 3)
    assert done3 is not None
    assert done3.checkpoint_id == 3


# -- aborts ---------------------------------------------------------------------------------


def test_decline_aborts_the_checkpoint(clock: FakeClock) -> None:
    c = core(clock, max_concurrent=2, interval_s=1)
    first = c.trigger()
    clock.now = 1
    second = c.trigger()
    c.ack(0, first, "source", "s")
    aborted = c.decline(0, first, "op-1", "disk full")
    assert isinstance(aborted, CheckpointAborted)
    assert aborted.checkpoint_id == first
    assert "op-1" in aborted.reason
    assert "disk full" in aborted.reason
    assert set(c.pending) == {second}
    assert ack_all(c, first) is None  # acks for an aborted checkpoint are ignored
    assert c.decline(0, first, "op-1", "again") is None
    assert c.decline(0, 77, "op-1", "unknown") is None
    assert ack_all(c, second) is not None


def test_expire_aborts_after_the_timeout(clock: FakeClock) -> None:
    c = core(clock, timeout_s=10, interval_s=1, max_concurrent=2)
    first = c.trigger()
    clock.now = 5
    second = c.trigger()
    c.ack(0, first, "source", "s")
    c.ack(0, first, "sink", "k")
    clock.now = 9.99
    assert c.expire() == []
    clock.now = 10
    expired = c.expire()
    assert [a.checkpoint_id for a in expired] == [first]
    assert "op-0, op-1" in expired[0].reason
    assert "10s" in expired[0].reason
    assert set(c.pending) == {second}
    assert ack_all(c, first) is None
    clock.now = 100
    assert [a.checkpoint_id for a in c.expire()] == [second]
    assert c.pending == {}
    assert c.due()


def test_abort_all(clock: FakeClock) -> None:
    c = core(clock, max_concurrent=3, interval_s=1)
    for t in range(3):
        clock.now = t
        c.trigger()
    aborted = c.abort_all("leadership lost")
    assert [a.checkpoint_id for a in aborted] == [1, 2, 3]
    assert all(a.reason == "leadership lost" for a in aborted)
    assert c.pending == {}
    assert c.abort_all("again") == []


# -- restores -------------------------------------------------------------------------------


def test_restored_bumps_the_generation_and_ignores_stale_acks(clock: FakeClock) -> None:
    c = core(clock, interval_s=1, max_concurrent=2)
    old = c.trigger()
    c.ack(0, old, "source", "before the crash")
    generation = c.restored(0)
    assert generation == 1
    assert c.generation == 1
    assert c.pending == {}
    assert ack_all(c, old, generation=0) is None
    clock.now = 10
    new = c.trigger()
    assert new > old
    # An ack of the old generation for the new id is stale too.
    for task in TASKS:
        assert c.ack(0, new, task, "stale") is None
    assert c.decline(0, new, "op-0", "stale") is None
    assert new in c.pending
    done = ack_all(c, new)
    assert done is not None
    assert done.generation == 1


def test_restored_never_reuses_an_id(clock: FakeClock) -> None:
    c = core(clock, interval_s=1, max_concurrent=5)
    for t in range(5):
        clock.now = t
        c.trigger()  # 1..5, none completed
    c.restored(2)  # fall back to an older checkpoint
    assert c.last_completed == 2
    assert c.next_checkpoint_id == 6
    c.restored(3, highest_id_seen=40)  # a manifest with id 40 exists somewhere
    clock.now = 100
    assert c.trigger() == 41


def test_a_new_core_continues_above_the_given_id(clock: FakeClock) -> None:
    c = CoordinatorCore(TASKS, CheckpointConfig(), clock=clock, next_checkpoint_id=8,
                        generation=3)
    assert c.trigger() == 8
    assert c.generation == 3
    assert c.restored(7) == 4


def test_first_checkpoint_after_a_restore_comes_after_after_restore_s(clock: FakeClock) -> None:
    c = core(clock, interval_s=10, after_restore_s=0.5)
    c.trigger()
    clock.now = 3
    c.restored(0)
    assert not c.due()
    clock.now = 3.49
    assert not c.due()
    clock.now = 3.5
    assert c.due()
    # after_restore_s larger than the interval: the interval wins.
    c2 = core(clock, interval_s=1, after_restore_s=5)
    c2.restored(0)
    clock.now = 4.49
    assert not c2.due()
    clock.now = 4.5
    assert c2.due()


# -- property -------------------------------------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.sampled_from([0.1, 0.5, 1.0, 5.0, 40.0])),
        st.tuples(st.just("trigger"), st.none()),
        st.tuples(st.just("ack"), st.tuples(st.integers(0, 12), st.sampled_from(TASKS),
                                            st.booleans())),
        st.tuples(st.just("decline"), st.integers(0, 12)),
        st.tuples(st.just("expire"), st.none()),
        st.tuples(st.just("restored"), st.tuples(st.integers(0, 12), st.integers(0, 30))),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(ops=OPS, max_concurrent=st.integers(1, 3))
def test_ids_are_never_reused_and_completions_move_forward(
    ops: list[tuple[str, object]], max_concurrent: int
) -> None:
    clock = FakeClock()
    c = CoordinatorCore(
        TASKS,
        CheckpointConfig(interval_s=1, timeout_s=30, max_concurrent=max_concurrent),
        clock=clock,
    )
    handed_out: list[int] = []
    generations = [c.generation]
    completed_in_generation: dict[int, list[int]] = {}
    for op, arg in ops:
        if op == "advance":
            assert isinstance(arg, float)
            clock.now += arg
        elif op == "trigger":
            if c.due():
                handed_out.append(c.trigger())
            assert len(c.pending) <= max_concurrent
        elif op == "ack":
            assert isinstance(arg, tuple)
            cid, task, stale = arg
            was_pending = cid in c.pending
            done = c.ack(c.generation - 1 if stale else c.generation, cid, task, task)
            if done is not None:
                assert was_pending
                assert not stale
                assert done.generation == c.generation
                assert set(done.acks) == set(TASKS)
                assert all(p > cid for p in c.pending)  # older ones subsumed
                completed_in_generation.setdefault(c.generation, []).append(cid)
        elif op == "decline":
            assert isinstance(arg, int)
            was_pending = arg in c.pending
            aborted = c.decline(c.generation, arg, "op-0", "x")
            assert (aborted is not None) == was_pending
            assert arg not in c.pending
        elif op == "expire":
            for aborted in c.expire():
                assert aborted.checkpoint_id in handed_out
            assert all(clock.now - p.triggered_at < 30 for p in c.pending.values())
        else:
            assert isinstance(arg, tuple)
            cid, highest = arg
            generations.append(c.restored(cid, highest_id_seen=highest))
            assert c.pending == {}
            assert c.next_checkpoint_id > max([*handed_out, cid, highest])
    assert handed_out == sorted(set(handed_out)), "an id was handed out twice"
    assert generations == sorted(set(generations))
    for ids in completed_in_generation.values():
        assert ids == sorted(set(ids)), "a completion went backwards"

"""BarrierAligner: aligned and unaligned checkpoints, end of stream, protocol errors.

The property test checks the Chandy-Lamport consistency condition over random
interleavings: what a snapshot covers is exactly what precedes its barrier.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checkpoint import (
    BarrierAligner,
    BarrierProtocolError,
    CheckpointError,
    CompleteSnapshot,
    Deliver,
    EndOfInput,
    RecordInFlight,
    Step,
    TakeSnapshot,
)


@dataclass
class FakeClock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def aligner(channels: int, clock: FakeClock, timeout: float | None = None) -> BarrierAligner:
    return BarrierAligner(channels, alignment_timeout_s=timeout, clock=clock)


# -- aligned ----------------------------------------------------------------------------


def test_single_channel_snapshots_at_once(clock: FakeClock) -> None:
    a = aligner(1, clock, timeout=1.0)
    assert a.on_records(0, ["r1", "r2"]) == [Deliver(0, ["r1", "r2"])]
    assert a.on_barrier(0, 1) == [TakeSnapshot(1, unaligned=False)]
    assert not a.aligning
    assert a.pending_checkpoint is None
    assert a.on_records(0, ["r3"]) == [Deliver(0, ["r3"])]
    assert a.on_barrier(0, 5) == [TakeSnapshot(5, unaligned=False)]  # ids may skip
    assert a.on_end_of_stream(0) == [EndOfInput()]


def test_empty_record_batches_deliver_nothing(clock: FakeClock) -> None:
    a = aligner(2, clock)
    assert a.on_records(0, []) == []
    a.on_barrier(0, 1)
    assert a.on_records(0, []) == []
    assert a.on_barrier(1, 1) == [TakeSnapshot(1, unaligned=False)]


def test_two_channels_hold_the_first_until_aligned(clock: FakeClock) -> None:
    a = aligner(2, clock)
    assert a.on_records(0, ["a1"]) == [Deliver(0, ["a1"])]
    assert a.on_barrier(0, 1) == []
    assert a.aligning
    assert a.pending_checkpoint == 1
    # After its barrier, channel 0 is held, in arrival order.
    assert a.on_records(0, ["a2"]) == []
    assert a.on_records(0, ["a3", "a4"]) == []
    assert a.on_barrier(0, 2) == []
    assert a.on_records(0, ["a5"]) == []
    # Channel 1 still flows.
    assert a.on_records(1, ["b1"]) == [Deliver(1, ["b1"])]
    clock.advance(1e6)  # no timeout configured: waits forever
    assert a.poll() == []
    steps = a.on_barrier(1, 1)
    assert steps == [
        TakeSnapshot(1, unaligned=False),
        Deliver(0, ["a2"]),
        Deliver(0, ["a3", "a4"]),
    ]
    # The held barrier 2 started alignment again and holds a5.
    assert a.pending_checkpoint == 2
    assert a.aligning
    assert a.on_records(1, ["b2"]) == [Deliver(1, ["b2"])]
    assert a.on_barrier(1, 2) == [TakeSnapshot(2, unaligned=False), Deliver(0, ["a5"])]
    assert not a.aligning
    assert a.unaligned_count == 0


def test_end_of_stream_stops_a_channel_from_blocking_alignment(clock: FakeClock) -> None:
    a = aligner(3, clock)
    assert a.on_end_of_stream(2) == []
    a.on_barrier(0, 1)
    assert a.on_records(0, ["held"]) == []
    # Channel 1 ends during the alignment: that completes it.
    assert a.on_records(1, ["last"]) == [Deliver(1, ["last"])]
    assert a.on_end_of_stream(1) == [TakeSnapshot(1, unaligned=False), Deliver(0, ["held"])]
    # Only channel 0 is left: its barriers snapshot at once.
    assert a.on_barrier(0, 2) == [TakeSnapshot(2, unaligned=False)]


def test_end_of_input_only_after_every_channel_ended_and_no_checkpoint_open(
    clock: FakeClock,
) -> None:
    a = aligner(2, clock)
    a.on_barrier(0, 1)
    assert a.on_end_of_stream(0) == []  # held behind barrier 1
    assert a.on_records(1, ["x"]) == [Deliver(1, ["x"])]
    steps = a.on_end_of_stream(1)
    assert steps == [TakeSnapshot(1, unaligned=False), EndOfInput()]
    assert a.pending_checkpoint is None
    assert a.poll() == []


def test_end_of_input_is_reported_once(clock: FakeClock) -> None:
    a = aligner(2, clock)
    assert a.on_end_of_stream(0) == []
    assert a.on_end_of_stream(1) == [EndOfInput()]
    assert a.poll() == []


# -- protocol errors --------------------------------------------------------------------


def test_barrier_going_backwards_raises(clock: FakeClock) -> None:
    a = aligner(1, clock)
    a.on_barrier(0, 3)
    with pytest.raises(BarrierProtocolError, match="barrier 2 after barrier 3"):
        a.on_barrier(0, 2)
    with pytest.raises(BarrierProtocolError):
        a.on_barrier(0, 3)
    assert issubclass(BarrierProtocolError, CheckpointError)


def test_barrier_skipping_the_open_checkpoint_raises(clock: FakeClock) -> None:
    a = aligner(2, clock)
    a.on_barrier(0, 1)
    with pytest.raises(BarrierProtocolError, match="still open"):
        a.on_barrier(1, 2)


def test_input_after_end_of_stream_raises(clock: FakeClock) -> None:
    a = aligner(2, clock)
    a.on_end_of_stream(0)
    with pytest.raises(BarrierProtocolError, match="after end of stream"):
        a.on_records(0, ["late"])
    with pytest.raises(BarrierProtocolError, match="after end of stream"):
        a.on_barrier(0, 1)
    with pytest.raises(BarrierProtocolError, match="after end of stream"):
        a.on_end_of_stream(0)
    with pytest.raises(BarrierProtocolError, match="no input channel 2"):
        a.on_records(2, ["x"])
    with pytest.raises(BarrierProtocolError, match="no input channel -1"):
        a.on_barrier(-1, 1)


def test_protocol_errors_of_a_held_channel_raise_when_they_arrive(clock: FakeClock) -> None:
    """A held channel's violation is its own call's error, not a later call's on another channel."""
    a = aligner(2, clock)
    a.on_barrier(0, 2)  # channel 0 now held
    with pytest.raises(BarrierProtocolError):
        a.on_barrier(0, 2)  # repeated while held
    with pytest.raises(BarrierProtocolError):
        a.on_barrier(0, 1)  # backwards while held
    a.on_barrier(0, 3)
    a.on_end_of_stream(0)
    with pytest.raises(BarrierProtocolError, match="after end of stream"):
        a.on_records(0, ["after eos, while held"])
    # The aligner is still usable: channel 1 completes checkpoints 2 and 3.
    assert a.on_barrier(1, 2) == [TakeSnapshot(2, unaligned=False)]
    assert a.on_barrier(1, 3) == [TakeSnapshot(3, unaligned=False)]
    assert a.on_end_of_stream(1) == [EndOfInput()]


def test_constructor_validates(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="at least one input channel"):
        BarrierAligner(0)
    with pytest.raises(ValueError, match="alignment_timeout_s"):
        BarrierAligner(2, alignment_timeout_s=-1)


# -- unaligned fallback -----------------------------------------------------------------


def test_barrier_that_must_align_never_goes_unaligned(clock: FakeClock) -> None:
    a = aligner(2, clock, timeout=1.0)
    a.on_barrier(0, 1, must_align=True)
    a.on_records(0, ["held"])
    clock.advance(1e6)
    assert a.poll() == []
    assert a.on_records(1, ["x"]) == [Deliver(1, ["x"])]
    assert a.on_barrier(1, 1, must_align=True) == [
        TakeSnapshot(1, unaligned=False),
        Deliver(0, ["held"]),
    ]
    # The next checkpoint may go unaligned again.
    a.on_barrier(0, 2)
    clock.advance(1.0)
    assert a.poll() == [TakeSnapshot(2, unaligned=True)]
    assert a.unaligned_count == 1


def test_alignment_timeout_falls_back_to_unaligned(clock: FakeClock) -> None:
    a = aligner(3, clock, timeout=5.0)
    assert a.on_barrier(0, 1) == []
    assert a.on_records(0, ["a1"]) == []  # held: after barrier 1 on channel 0
    clock.advance(4.9)
    assert a.on_records(1, ["b1"]) == [Deliver(1, ["b1"])]  # not yet: still aligned
    clock.advance(0.1)
    # Timeout reached: snapshot now, release the held records (not channel state).
    assert a.on_records(2, ["c1"]) == [
        Deliver(2, ["c1"]),
        TakeSnapshot(1, unaligned=True),
        Deliver(0, ["a1"]),
    ]
    assert a.unaligned_count == 1
    assert not a.aligning
    assert a.pending_checkpoint == 1
    # Records of channels still before barrier 1 are processed and recorded in flight...
    assert a.on_records(1, ["b2"]) == [Deliver(1, ["b2"]), RecordInFlight(1, 1, ["b2"])]
    # ...but not those of a channel past it.
    assert a.on_records(0, ["a2"]) == [Deliver(0, ["a2"])]
    # A barrier past the open checkpoint holds its channel until that one completes.
    assert a.on_barrier(0, 2) == []
    assert a.on_records(0, ["a3"]) == []
    assert a.aligning
    # Channel 1's barrier arrives: channel 2 is still missing.
    assert a.on_barrier(1, 1) == []
    assert a.on_records(1, ["b3"]) == [Deliver(1, ["b3"])]  # past barrier 1 now
    assert a.on_records(2, ["c2"]) == [Deliver(2, ["c2"]), RecordInFlight(1, 2, ["c2"])]
    steps = a.on_barrier(2, 1)
    # Complete; then the held barrier 2 starts an aligned checkpoint and holds a3 again.
    assert steps == [CompleteSnapshot(1)]
    assert a.pending_checkpoint == 2
    assert a.on_barrier(1, 2) == []
    assert a.on_barrier(2, 2) == [TakeSnapshot(2, unaligned=False), Deliver(0, ["a3"])]
    assert a.unaligned_count == 1


def test_poll_alone_triggers_the_fallback(clock: FakeClock) -> None:
    a = aligner(2, clock, timeout=2.0)
    a.on_barrier(1, 1)
    a.on_records(1, ["held"])
    assert a.poll() == []
    clock.advance(2.0)
    assert a.poll() == [TakeSnapshot(1, unaligned=True), Deliver(1, ["held"])]
    assert a.poll() == []  # once
    assert a.on_end_of_stream(0) == [CompleteSnapshot(1)]
    assert a.on_end_of_stream(1) == [EndOfInput()]


def test_zero_timeout_goes_unaligned_at_the_first_poll(clock: FakeClock) -> None:
    a = aligner(2, clock, timeout=0.0)
    assert a.on_barrier(0, 1) == [TakeSnapshot(1, unaligned=True)]
    assert a.on_records(1, ["x"]) == [Deliver(1, ["x"]), RecordInFlight(1, 1, ["x"])]
    assert a.on_barrier(1, 1) == [CompleteSnapshot(1)]


def test_timeout_clock_starts_at_the_first_barrier(clock: FakeClock) -> None:
    a = aligner(2, clock, timeout=5.0)
    clock.advance(100)  # idle time before the barrier does not count
    a.on_barrier(0, 1)
    clock.advance(4.0)
    assert a.poll() == []
    assert a.on_barrier(1, 1) == [TakeSnapshot(1, unaligned=False)]
    # The next checkpoint's clock starts afresh.
    a.on_barrier(0, 2)
    clock.advance(4.0)
    assert a.poll() == []
    clock.advance(1.0)
    assert a.poll() == [TakeSnapshot(2, unaligned=True)]


# -- property: Chandy-Lamport consistency -----------------------------------------------


@dataclass
class Script:
    """What one channel sends: records ("r", (c, i)) and barriers ("b", n), then EOS."""

    items: list[tuple[str, Any]]
    records: list[tuple[int, int]] = field(default_factory=list)
    barriers: int = 0


@st.composite
def scripts(draw: st.DrawFn) -> tuple[list[Script], float | None, dict[int, bool]]:
    channels = draw(st.integers(1, 4))
    max_barrier = draw(st.integers(0, 4))
    # Final checkpoints and savepoints demand alignment; every upstream says so alike.
    must_align = {n: draw(st.booleans()) for n in range(1, max_barrier + 1)}
    timeout = draw(st.sampled_from([None, 0.0, 1.0, 3.0]))
    out = []
    for c in range(channels):
        # Most channels carry every barrier; some end early (that is allowed).
        barriers = draw(st.sampled_from([max_barrier, max_barrier, draw(st.integers(0, 4))]))
        barriers = min(barriers, max_barrier)
        script = Script(items=[], barriers=barriers)
        next_record = 0
        for n in range(1, barriers + 2):
            for _ in range(draw(st.integers(0, 3))):
                size = draw(st.integers(0, 3))
                batch = [(c, next_record + j) for j in range(size)]
                next_record += size
                script.items.append(("r", batch))
                script.records.extend(batch)
            if n <= barriers:
                script.items.append(("b", n))
        out.append(script)
    return out, timeout, must_align


def _expected_before_barrier(script: Script, checkpoint_id: int) -> list[tuple[int, int]]:
    before: list[tuple[int, int]] = []
    for kind, payload in script.items:
        if kind == "b" and payload == checkpoint_id:
            return before
        if kind == "r":
            before.extend(payload)
    return before  # never delivers that barrier: everything it sends precedes it


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(setup=scripts(), data=st.data())
def test_random_interleavings_are_consistent(
    setup: tuple[list[Script], float | None, dict[int, bool]], data: st.DataObject
) -> None:
    script_list, timeout, must_align = setup
    clock = FakeClock()
    a = BarrierAligner(len(script_list), alignment_timeout_s=timeout, clock=clock)
    cursors = [0] * len(script_list)
    ended = [False] * len(script_list)
    steps: list[Step] = []
    while not all(ended):
        live = [c for c in range(len(script_list)) if not ended[c]]
        c = data.draw(st.sampled_from(live), label="channel")
        if data.draw(st.booleans(), label="advance clock"):
            clock.advance(data.draw(st.sampled_from([0.5, 1.0, 2.0, 5.0]), label="by"))
        script = script_list[c]
        if cursors[c] == len(script.items):
            steps += a.on_end_of_stream(c)
            ended[c] = True
        else:
            kind, payload = script.items[cursors[c]]
            cursors[c] += 1
            if kind == "r":
                steps += a.on_records(c, payload)
            else:
                steps += a.on_barrier(c, payload, must_align=must_align[payload])
        if data.draw(st.booleans(), label="poll"):
            steps += a.poll()
    steps += a.poll()

    # (a) every record delivered exactly once, in per-channel order.
    delivered: dict[int, list[tuple[int, int]]] = defaultdict(list)
    delivered_so_far: list[tuple[int, int]] = []
    before_snapshot: dict[int, set[tuple[int, int]]] = {}
    in_flight: dict[int, list[tuple[int, int]]] = defaultdict(list)
    taken: list[TakeSnapshot] = []
    completed: list[int] = []
    open_unaligned: int | None = None
    last_delivery: Deliver | None = None
    for i, step in enumerate(steps):
        if isinstance(step, Deliver):
            assert step.records, "empty Deliver"
            delivered[step.channel].extend(step.records)
            delivered_so_far.extend(step.records)
            last_delivery = step
        elif isinstance(step, RecordInFlight):
            # Only while an unaligned snapshot is open, for the records just delivered.
            assert step.checkpoint_id == open_unaligned
            assert last_delivery == Deliver(step.channel, step.records)
            assert isinstance(steps[i - 1], Deliver)
            in_flight[step.checkpoint_id].extend(step.records)
        elif isinstance(step, TakeSnapshot):
            assert open_unaligned is None, "a snapshot opened while another was open"
            taken.append(step)
            before_snapshot[step.checkpoint_id] = set(delivered_so_far)
            if step.unaligned:
                open_unaligned = step.checkpoint_id
        elif isinstance(step, CompleteSnapshot):
            assert step.checkpoint_id == open_unaligned
            completed.append(step.checkpoint_id)
            open_unaligned = None
        else:
            assert isinstance(step, EndOfInput)
            assert i == len(steps) - 1, "EndOfInput must be the last step"
    assert isinstance(steps[-1], EndOfInput)
    assert sum(isinstance(s, EndOfInput) for s in steps) == 1
    for c, script in enumerate(script_list):
        assert delivered[c] == script.records

    # (c) snapshots strictly increasing, one per barrier id, each completed.
    ids = [t.checkpoint_id for t in taken]
    assert ids == sorted(set(ids))
    assert ids == list(range(1, max((s.barriers for s in script_list), default=0) + 1))
    assert open_unaligned is None
    assert completed == [t.checkpoint_id for t in taken if t.unaligned]
    assert a.unaligned_count == len(completed)
    if timeout is None:
        assert completed == []
    assert not [t for t in taken if t.unaligned and must_align[t.checkpoint_id]]

    # (b) what snapshot N covers is exactly what precedes barrier N on every channel.
    for checkpoint_id in ids:
        expected = {r for s in script_list for r in _expected_before_barrier(s, checkpoint_id)}
        flight = in_flight[checkpoint_id]
        assert len(flight) == len(set(flight))
        assert not before_snapshot[checkpoint_id] & set(flight)
        assert before_snapshot[checkpoint_id] | set(flight) == expected, checkpoint_id

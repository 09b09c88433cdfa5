"""Barrier alignment for tasks with several input channels (Chandy-Lamport, as in Flink's ABS).

`BarrierAligner` is a pure state machine: the task feeds it what arrives on each
input channel and executes the steps it returns, in order. It never sleeps and
reads time only through the clock it is given.

Aligned mode (the default): when barrier N arrives on a channel, that channel is
held (its later items are buffered) until barrier N has arrived on every live
channel; then the task snapshots, forwards the barrier and the held items flow.

Bounded alignment: when alignment has lasted longer than `alignment_timeout_s`
(backpressure on a slow channel), the aligner switches checkpoint N to
*unaligned*, as Flink 1.13 does: the task snapshots at once, the held channels
are released, and the records that still arrive on the channels whose barrier N
is not in yet are processed *and* recorded as in-flight channel state of
checkpoint N. When the last barrier N arrives the snapshot is complete. On restore
the task replays that channel state before reading new input.

A barrier may demand alignment (`must_align=True`): final checkpoints and
savepoints never go unaligned, because nothing follows them to carry the
in-flight records, and because a savepoint must be restorable at another
parallelism, where channel state has no home.

At most one checkpoint is aligned at a time: a barrier N+1 that arrives while N
is still open holds its channel until N is done. Barriers arrive in increasing
order on every channel (each upstream forwards each barrier once); a channel
that skips one is a protocol violation and raises `BarrierProtocolError`. A
channel that reached end of stream no longer takes part in alignment.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from checkpoint._errors import CheckpointError

__all__ = [
    "BarrierAligner",
    "BarrierProtocolError",
    "CompleteSnapshot",
    "Deliver",
    "EndOfInput",
    "RecordInFlight",
    "Step",
    "TakeSnapshot",
]


class BarrierProtocolError(CheckpointError):
    """A channel delivered barriers out of order or after its end of stream."""


@dataclass(frozen=True)
class Deliver:
    """Process these records of `channel` now."""

    channel: int
    records: Sequence[Any]


@dataclass(frozen=True)
class TakeSnapshot:
    """Snapshot operator state for `checkpoint_id` now, then forward the barrier.

    When `unaligned` is False the snapshot is complete at once. When True, keep
    the snapshot open: `RecordInFlight` steps add channel state until
    `CompleteSnapshot` closes it.
    """

    checkpoint_id: int
    unaligned: bool


@dataclass(frozen=True)
class RecordInFlight:
    """Add these records (already delivered) to the channel state of the open snapshot."""

    checkpoint_id: int
    channel: int
    records: Sequence[Any]


@dataclass(frozen=True)
class CompleteSnapshot:
    """The unaligned snapshot of `checkpoint_id` has all its channel state."""

    checkpoint_id: int


@dataclass(frozen=True)
class EndOfInput:
    """Every input channel reached end of stream."""


Step = Deliver | TakeSnapshot | RecordInFlight | CompleteSnapshot | EndOfInput

_BARRIER = "barrier"
_RECORDS = "records"
_EOS = "eos"


class BarrierAligner:
    """Aligns barriers over `channels` input channels. See the module docstring."""

    def __init__(
        self,
        channels: int,
        *,
        alignment_timeout_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if channels < 1:
            raise ValueError(f"a task needs at least one input channel, got {channels}")
        if alignment_timeout_s is not None and alignment_timeout_s < 0:
            raise ValueError(f"alignment_timeout_s must be >= 0, got {alignment_timeout_s}")
        self._n = channels
        self._timeout = alignment_timeout_s
        self._clock = clock
        self._last_barrier = [0] * channels  # highest barrier id seen per channel
        self._ended = [False] * channels
        # What arrived, held or not: a protocol error is raised by the call that made it.
        self._last_arrived = [0] * channels
        self._closed = [False] * channels
        self._held: list[deque[tuple[str, Any]]] = [deque() for _ in range(channels)]
        self._blocked = [False] * channels
        self._pending: int | None = None  # checkpoint being aligned / collected
        self._unaligned = False
        self._must_align = False
        self._started_at = 0.0
        self._input_ended = False
        self.unaligned_count = 0  # how many checkpoints fell back to unaligned

    # -- inputs ---------------------------------------------------------------------

    def on_records(self, channel: int, records: Sequence[Any]) -> list[Step]:
        """Records arrived on `channel`."""
        self._check_live(channel)
        out: list[Step] = []
        self._feed(channel, _RECORDS, records, out)
        self._poll_into(out)
        return out

    def on_barrier(
        self, channel: int, checkpoint_id: int, *, must_align: bool = False
    ) -> list[Step]:
        """Barrier `checkpoint_id` arrived on `channel` (`must_align`: see the module doc)."""
        self._check_live(channel)
        last = self._last_arrived[channel]
        if checkpoint_id <= last:
            raise BarrierProtocolError(
                f"channel {channel} delivered barrier {checkpoint_id} after barrier {last}"
            )
        self._last_arrived[channel] = checkpoint_id
        out: list[Step] = []
        self._feed(channel, _BARRIER, (checkpoint_id, must_align), out)
        self._poll_into(out)
        return out

    def on_end_of_stream(self, channel: int) -> list[Step]:
        """`channel` will deliver nothing more."""
        self._check_live(channel)
        self._closed[channel] = True
        out: list[Step] = []
        self._feed(channel, _EOS, None, out)
        return out

    def poll(self) -> list[Step]:
        """Check the alignment timeout; call it when idle too."""
        out: list[Step] = []
        self._poll_into(out)
        return out

    @property
    def pending_checkpoint(self) -> int | None:
        return self._pending

    @property
    def aligning(self) -> bool:
        """True while some channel is held back for alignment."""
        return any(self._blocked)

    # -- machinery ------------------------------------------------------------------

    def _check_live(self, channel: int) -> None:
        if not 0 <= channel < self._n:
            raise BarrierProtocolError(f"no input channel {channel} (task has {self._n})")
        if self._closed[channel]:
            raise BarrierProtocolError(f"channel {channel} delivered input after end of stream")

    def _feed(self, channel: int, kind: str, payload: Any, out: list[Step]) -> None:
        if self._blocked[channel]:
            self._held[channel].append((kind, payload))
            return
        if kind == _RECORDS:
            if payload:
                out.append(Deliver(channel, payload))
                pending = self._pending
                before_barrier = pending is not None and self._last_barrier[channel] < pending
                if self._unaligned and before_barrier:
                    # Before this channel's barrier: part of the open snapshot.
                    assert pending is not None
                    out.append(RecordInFlight(pending, channel, payload))
        elif kind == _BARRIER:
            checkpoint_id, must_align = payload
            self._on_barrier(channel, int(checkpoint_id), bool(must_align), out)
        else:
            self._ended[channel] = True
            self._maybe_finish_alignment(out)
            if all(self._ended) and self._pending is None and not self._input_ended:
                self._input_ended = True
                out.append(EndOfInput())

    def _on_barrier(self, channel: int, checkpoint_id: int, must_align: bool,
                    out: list[Step]) -> None:
        last = self._last_barrier[channel]
        if checkpoint_id <= last:
            raise BarrierProtocolError(
                f"channel {channel} delivered barrier {checkpoint_id} after barrier {last}"
            )
        if self._pending is not None and last >= self._pending:
            # Unaligned mode released this channel; it is already past the open
            # checkpoint. Hold it until that checkpoint closes.
            self._blocked[channel] = True
            self._held[channel].append((_BARRIER, (checkpoint_id, must_align)))
            return
        if self._pending is None:
            self._pending = checkpoint_id
            self._unaligned = False
            self._must_align = must_align
            self._started_at = self._clock()
        elif checkpoint_id != self._pending:
            raise BarrierProtocolError(
                f"channel {channel} delivered barrier {checkpoint_id} while "
                f"checkpoint {self._pending} is still open and its barrier is missing there"
            )
        self._last_barrier[channel] = checkpoint_id
        if not self._unaligned:
            self._blocked[channel] = True
        self._maybe_finish_alignment(out)

    def _waiting_on(self) -> list[int]:
        pending = self._pending
        return [
            c
            for c in range(self._n)
            if not self._ended[c] and pending is not None and self._last_barrier[c] < pending
        ]

    def _maybe_finish_alignment(self, out: list[Step]) -> None:
        pending = self._pending
        if pending is None or self._waiting_on():
            return
        if self._unaligned:
            out.append(CompleteSnapshot(pending))
        else:
            out.append(TakeSnapshot(pending, unaligned=False))
        self._pending = None
        self._unaligned = False
        self._release_all(out)

    def _release_all(self, out: list[Step]) -> None:
        """Unblock every channel and re-feed what was held, in arrival order per channel."""
        held = self._held
        self._held = [deque() for _ in range(self._n)]
        self._blocked = [False] * self._n
        for channel in range(self._n):
            for kind, payload in held[channel]:
                self._feed(channel, kind, payload, out)
        if all(self._ended) and self._pending is None and not self._input_ended:
            self._input_ended = True
            out.append(EndOfInput())

    def _poll_into(self, out: list[Step]) -> None:
        if (
            self._timeout is None
            or self._pending is None
            or self._unaligned
            or self._must_align
            or self._clock() - self._started_at < self._timeout
        ):
            return
        # Alignment took too long: snapshot now, release the held channels and
        # record what is still in flight on the others.
        self._unaligned = True
        self.unaligned_count += 1
        out.append(TakeSnapshot(self._pending, unaligned=True))
        # Everything held is after barrier N on its channel, so it is not
        # in-flight state: process it now.
        self._release_all(out)

"""The project's error hierarchy.

The root lives in the lowest layer so that every package can raise and catch
it: `resilience` re-exports these names. Every error pickles cleanly, because
errors raised inside Ray actors cross process boundaries (habit 10 of STYLE.md):
errors whose constructor takes more than the message define `__reduce__`.
"""

from __future__ import annotations

__all__ = [
    "CheckpointCorrupt",
    "CheckpointError",
    "CheckpointNotFound",
    "FencedOut",
    "IncompatibleState",
    "InputChanged",
    "InvalidStoreConfig",
    "ResilienceError",
    "SinkOwnedElsewhere",
    "StoreWriteError",
]


class ResilienceError(Exception):
    """Root of every error this project raises on purpose."""


class CheckpointError(ResilienceError):
    """A checkpoint could not be written, read or used."""


class CheckpointNotFound(CheckpointError):
    """No checkpoint (or savepoint) with that id or name exists in the store."""


class CheckpointCorrupt(CheckpointError):
    """Stored bytes do not match their checksum, are truncated, or belong to another job.

    `what` names the object (a chunk digest, a manifest path) so an operator can
    find it on disk.
    """

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason

    def __reduce__(self) -> tuple[type[CheckpointCorrupt], tuple[str, str]]:
        return (type(self), (self.what, self.reason))


class SinkOwnedElsewhere(CheckpointError):
    """A sink's table already holds another job's output: writing to it would mix the two.

    Two jobs appending to one ledger would post every transfer twice; the sink that
    finds its table claimed by another sink id refuses to open instead.
    """

    def __init__(self, where: str, owner: str, sink_id: str) -> None:
        super().__init__(
            f"{where} holds the output of job {owner!r}; job {sink_id!r} will not write to "
            f"it (use another workdir, or the same job id to resume that job)"
        )
        self.where = where
        self.owner = owner
        self.sink_id = sink_id

    def __reduce__(self) -> tuple[type[SinkOwnedElsewhere], tuple[str, str, str]]:
        return (type(self), (self.where, self.owner, self.sink_id))


class StoreWriteError(CheckpointError):
    """The store refused a write (disk full, I/O error). Nothing half-written is visible."""


class IncompatibleState(CheckpointError):
    """State written by a schema version this code cannot read."""

    def __init__(self, source: str, found: int, supported: int) -> None:
        super().__init__(
            f"{source} was written with state schema version {found}, "
            f"but this code reads schema version {supported}"
        )
        self.source = source
        self.found = found
        self.supported = supported

    def __reduce__(self) -> tuple[type[IncompatibleState], tuple[str, int, int]]:
        return (type(self), (self.source, self.found, self.supported))


class InputChanged(ResilienceError):
    """A source was asked to resume in a file that is not the one it read before.

    Not a `CheckpointError`: no older checkpoint makes another file the job's input,
    so the job stops instead of falling back.
    """


class FencedOut(ResilienceError):
    """A write was refused because the writer's fencing epoch is no longer current.

    Raised when a deposed leader (lease lost, or a newer epoch granted to another
    holder) tries to commit. The holder must stop acting.
    """

    def __init__(self, resource: str, epoch: int, current: int | None = None) -> None:
        now = "unknown" if current is None else str(current)
        super().__init__(f"{resource}: fencing epoch {epoch} is stale (current: {now})")
        self.resource = resource
        self.epoch = epoch
        self.current = current

    def __reduce__(self) -> tuple[type[FencedOut], tuple[str, int, int | None]]:
        return (type(self), (self.resource, self.epoch, self.current))


class InvalidStoreConfig(ResilienceError, ValueError):
    """A store URI or store option is invalid (unknown scheme, unusable job id).

    Also a `ValueError`, so code that validates configuration generically catches it.
    """

"""Errors of the runtime layer. The root and the checkpoint errors live in `checkpoint`."""

from __future__ import annotations

from checkpoint import ResilienceError

__all__ = ["FailoverExhausted", "JobFailed", "UserError"]


class FailoverExhausted(ResilienceError):
    """The restart budget is spent: the job is stopped, never left half-alive."""

    def __init__(self, job_id: str, restarts: int, last_reason: str) -> None:
        super().__init__(
            f"job {job_id}: gave up after {restarts} restores; last failure: {last_reason}"
        )
        self.job_id = job_id
        self.restarts = restarts
        self.last_reason = last_reason

    def __reduce__(self) -> tuple[type[FailoverExhausted], tuple[str, int, str]]:
        return (type(self), (self.job_id, self.restarts, self.last_reason))


class JobFailed(ResilienceError):
    """The job stopped without finishing; the message says why."""


class UserError(ResilienceError):
    """A mistake in what the user asked for (bad path, bad option): one line, no traceback."""

"""Run the payments job from Python: what `resilience run payments` and the demo call."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resilience._errors import UserError
from resilience._progress import Progress
from resilience.jobs.payments.job import PaymentsOptions, payments_pipeline

__all__ = ["RunResult", "check_paths", "run_payments"]


@dataclass
class RunResult:
    """What a finished run reports."""

    status: dict[str, Any]
    elapsed_s: float
    input_lines: int
    notes: list[str] = field(default_factory=list)

    @property
    def events_per_s(self) -> float:
        return self.input_lines / self.elapsed_s if self.elapsed_s > 0 else 0.0


def check_paths(input_path: Path, workdir: Path) -> None:
    """Refuse a missing input or an unwritable workdir with a one-line `UserError`."""
    if not input_path.is_file():
        raise UserError(f"input file {input_path} does not exist")
    if not os.access(input_path, os.R_OK):
        raise UserError(f"input file {input_path} is not readable")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create workdir {workdir}: {e.strerror}") from e
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise UserError(f"workdir {workdir} is not writable")


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        n = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                n += 1
    return n


def run_payments(
    opts: PaymentsOptions,
    *,
    etcd: str | None = None,
    ray_address: str | None = None,
    show_progress: bool = True,
    during: Callable[[Any], None] | None = None,
    timeout_s: float | None = None,
) -> RunResult:
    """Run the payments job to completion and return its final status.

    `during(runner)` runs on a thread while the job runs (the demo kills a
    worker from there). Raises `UserError` for bad paths and `JobFailed` when
    the job cannot finish.
    """
    from resilience._job import job_context

    check_paths(opts.input_path, opts.workdir)
    total = _count_lines(opts.input_path)
    spec = payments_pipeline(opts)
    progress = Progress(total) if show_progress else None
    # The same path as a user's `@resilient.job` driver: identity and a fenced
    # leadership in etcd for the driver, then the checkpointed pipeline under it.
    with job_context(opts.job_id, opts.workdir, etcd=etcd, ray_address=ray_address) as job:
        t0 = time.monotonic()
        runner = job.pipeline(spec)
        helper: threading.Thread | None = None
        try:
            if during is not None:
                helper = threading.Thread(target=during, args=(runner,), daemon=True)
                helper.start()
            status = runner.wait(
                timeout_s=timeout_s, on_progress=progress.update if progress else None
            )
            elapsed = time.monotonic() - t0
        finally:
            if progress is not None:
                progress.close()
            runner.stop()
        if helper is not None:
            helper.join(timeout=5)
    return RunResult(status=status, elapsed_s=elapsed, input_lines=total)

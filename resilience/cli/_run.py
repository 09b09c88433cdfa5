"""Run a job from the command line: what `resilience run JOB` and the demo call."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checkpoint import JsonLinesSource
from resilience._errors import UserError
from resilience.cli._progress import Progress
from resilience.pipeline import JobDefinition, JobOptions
from resilience.replication._config import ReplicationConfig

__all__ = ["RunResult", "check_input", "check_paths", "run_job"]


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


def check_paths(input_path: Path | None, workdir: Path) -> None:
    """Refuse a missing input or an unwritable workdir with a one-line `UserError`."""
    if input_path is not None:
        if input_path.is_dir():
            raise UserError(f"input {input_path} is a directory, not a file")
        if not input_path.is_file():
            raise UserError(f"input file {input_path} does not exist")
        if not os.access(input_path, os.R_OK):
            raise UserError(f"input file {input_path} is not readable")
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"workdir {workdir} is a file, not a directory")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create workdir {workdir}: {e.strerror}") from e
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise UserError(f"workdir {workdir} is not writable")


def check_input(input_path: Path, workdir: Path, job_id: str) -> None:
    """Refuse an input that is not the one this workdir's job read (one line, exit 2).

    The newest checkpoint in the workdir records the position the job had read to,
    with a CRC-32 of every byte before it; the same file, grown since, passes. The
    source checks the same again when it restores (the authoritative check).
    """
    from checkpoint import CheckpointError, FileSystemStore, InputChanged, SourcePosition

    store_dir = workdir / "checkpoints"
    if not store_dir.is_dir():
        return
    store = FileSystemStore(store_dir, job_id=job_id)
    for checkpoint_id in reversed(store.list_checkpoints()):
        try:
            manifest = store.get_manifest(checkpoint_id)
        except CheckpointError:
            continue
        for task in manifest.tasks.values():
            op = task.metadata.get("op", {})
            if "position" not in op:
                continue
            source = JsonLinesSource(input_path)
            try:
                source.seek(SourcePosition.from_json(op["position"]))
            except InputChanged as e:
                was = op.get("input")
                raise UserError(f"{e} (checkpoint {checkpoint_id} of workdir {workdir}"
                                + (f", which read {was}" if was else "")
                                + "): give that input, or use a new workdir") from e
            finally:
                source.close()
            return
        return


def run_job(
    job: JobDefinition,
    options: JobOptions,
    *,
    etcd: str | None = None,
    ray_address: str | None = None,
    show_progress: bool = True,
    during: Callable[[Any], None] | None = None,
    timeout_s: float | None = None,
    deadlines: Any = None,
    replication: ReplicationConfig | None = None,
    lease_ttl_s: int | None = None,
    ray_temp_dir: str | None = None,
) -> RunResult:
    """Run `job` to completion and return its final status.

    `during(runner)` runs on a thread while the job runs (the demo kills a
    worker from there). Raises `UserError` for bad paths and settings, and
    `JobFailed` when the job cannot finish. With `replication`, this is one site of a
    job that runs on two: it stands by while the other site leads, takes over when
    that site is lost, and ends when the job ends wherever it ran.
    """
    from resilience._job import job_context

    job.check_settings(options.settings)
    if options.input_path is not None:
        check_paths(options.input_path, options.workdir)
        check_input(options.input_path, options.workdir, options.job_id)
    elif job.needs_input:
        raise UserError(f"job {job.name} reads an input: give --input")
    else:
        check_paths(None, options.workdir)
    total = (job.count_input(options.input_path)
             if job.count_input is not None and options.input_path is not None else None)
    spec = job.pipeline(options)
    if replication is not None:
        spec = dataclasses.replace(spec, replication=replication,
                                   lease_ttl_s=lease_ttl_s or spec.lease_ttl_s)
    progress = Progress(total) if show_progress else None
    # The same path as a user's `@resilient.job` driver: identity and a fenced
    # leadership in etcd for the driver, then the checkpointed pipeline under it.
    with job_context(options.job_id, options.workdir, etcd=etcd, ray_address=ray_address,
                     site=replication.site if replication is not None else None,
                     ray_temp_dir=ray_temp_dir) as driver:
        t0 = time.monotonic()
        runner = driver.pipeline(spec, deadlines=deadlines)
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
    notes = list(runner.watchdog.events) if runner.watchdog is not None else []
    lines = total if total is not None else max(int(status.get("lines_read", 0)), 0)
    return RunResult(status=status, elapsed_s=elapsed, input_lines=lines, notes=notes)

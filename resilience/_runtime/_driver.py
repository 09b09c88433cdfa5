"""The driver side of a pipeline: create its actors, follow its progress, stop it."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayError

from resilience._errors import (
    JobFailed,
    UserError,
    WorkdirBusy,
)
from resilience._runtime._coordinator import JobCoordinator
from resilience._runtime._spec import PipelineSpec
from resilience._runtime._task import TaskActor
from resilience._runtime._watchdog import Watchdog

__all__ = ["PipelineRunner", "WorkdirBusy", "claim_workdir", "workdir_lock"]

_RemoteTask = ray.remote(TaskActor)
_RemoteCoordinator = ray.remote(JobCoordinator)


class PipelineRunner:
    """Runs one `PipelineSpec` on the current Ray session.

    The driver owns every actor, so when the driver exits Ray removes them. The
    coordinator and the tasks are restartable actors (`max_restarts=-1`): a
    killed worker comes back and the coordinator restores the job.
    """

    def __init__(self, spec: PipelineSpec, etcd_endpoints: str, *,
                 watchdog: Watchdog | None = None) -> None:
        self.spec = spec
        self.etcd_endpoints = etcd_endpoints
        self.watchdog = watchdog
        self.tasks: dict[str, Any] = {}
        self.coordinator: Any = None
        self.receiver: Any = None

    def start(self) -> None:
        spec = self.spec
        spec.workdir.mkdir(parents=True, exist_ok=True)
        claim_workdir(spec.workdir, spec.job_id)
        if spec.replication is not None:
            self._start_receiver()
        # Tasks first: the coordinator looks them up by name as soon as it starts.
        for ts in spec.task_specs():
            resources = dict(spec.stage(ts.stage).resources)
            self.tasks[ts.task_id] = _RemoteTask.options(
                name=ts.actor_name,
                namespace=spec.namespace,
                max_restarts=-1,
                max_task_retries=0,
                num_cpus=0,
                **({"resources": resources} if resources else {}),
            ).remote(ts)
        self.coordinator = _RemoteCoordinator.options(
            name=spec.coordinator_name,
            namespace=spec.namespace,
            max_restarts=-1,
            max_task_retries=0,
            max_concurrency=16,
            num_cpus=0,
        ).remote(spec, self.etcd_endpoints)

    def _start_receiver(self) -> None:
        """This site's replication receiver (a multi-site job), listening before anything
        else starts: a port that is taken fails the run at once, with one line."""
        from resilience._runtime._site import receiver_name
        from resilience.replication._receiver import ReplicaReceiver

        spec = self.spec
        assert spec.replication is not None
        self.receiver = ray.remote(ReplicaReceiver).options(
            name=receiver_name(spec), namespace=spec.namespace, max_restarts=-1,
            max_task_retries=0, max_concurrency=16, num_cpus=0,
        ).remote(spec)
        try:
            ray.get(self.receiver.ready.remote(), timeout=120)
        except RayError as e:
            cause = getattr(e, "cause", None)
            reason = str(cause) if cause is not None else str(e).strip().splitlines()[-1]
            with contextlib.suppress(Exception):
                ray.kill(self.receiver, no_restart=True)
            self.receiver = None
            raise UserError(f"site {spec.replication.site}: the replication receiver did not "
                            f"start: {reason[:300]}") from None

    def receiver_status(self, timeout_s: float = 5.0) -> dict[str, Any] | None:
        """What this site's replication receiver holds (None without one, or no answer)."""
        if self.receiver is None:
            return None
        try:
            return dict(ray.get(self.receiver.status.remote(), timeout=timeout_s))
        except (RayError, GetTimeoutError):
            return None

    def status(self, timeout_s: float = 10.0) -> dict[str, Any] | None:
        """The coordinator's status, or None while it is (re)starting or unreachable."""
        if self.coordinator is None:
            return None
        try:
            return dict(ray.get(self.coordinator.status.remote(), timeout=timeout_s))
        except (RayError, GetTimeoutError):
            return None

    def wait(
        self,
        *,
        timeout_s: float | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        poll_s: float = 0.25,
    ) -> dict[str, Any]:
        """Block until the job finishes; return its final status.

        Raises `JobFailed` when the job failed (restart budget spent, a bug in
        an operator) or did not finish within `timeout_s`, and when the runner's
        `watchdog` gives up on what the job stands on (etcd, Ray, the coordinator).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            st = self.status(timeout_s=2.0 if self.watchdog is not None else 10.0)
            if self.watchdog is not None:
                self.watchdog.check(self, st)
            if st is not None:
                if on_progress is not None:
                    on_progress(st)
                if st.get("finished"):
                    return st
                if st.get("failed"):
                    raise JobFailed(f"job {self.spec.job_id} failed: {st.get('last_error')}")
            if deadline is not None and time.monotonic() > deadline:
                raise JobFailed(
                    f"job {self.spec.job_id} did not finish within {timeout_s:g}s "
                    f"(last status: {st and st.get('state')})"
                )
            time.sleep(poll_s)

    def pids(self, timeout_s: float = 30.0, tasks: Iterable[str] | None = None
             ) -> dict[str, int]:
        """Worker process id of every task, or of `tasks` (waits for restarting tasks).

        A stopped (SIGSTOP) task never answers: `ray.exceptions.GetTimeoutError` after
        `timeout_s`.
        """
        refs = {tid: self.tasks[tid].pid.remote() for tid in (tasks or self.tasks)}
        return {tid: int(ray.get(ref, timeout=timeout_s)) for tid, ref in refs.items()}

    def helper_pids(self, timeout_s: float = 30.0, tasks: Iterable[str] | None = None
                    ) -> dict[str, dict[str, int]]:
        """Per task (or per task of `tasks`), the other processes its operator runs
        (``{"java": pid}``), if any."""
        refs = {tid: self.tasks[tid].helper_pids.remote() for tid in (tasks or self.tasks)}
        out = {tid: dict(ray.get(ref, timeout=timeout_s)) for tid, ref in refs.items()}
        return {tid: pids for tid, pids in out.items() if pids}

    def task_stats(self, timeout_s: float = 30.0) -> dict[str, dict[str, Any]]:
        """Each task's counters (records in/out, snapshots, CPU seconds of its process)."""
        refs = {tid: h.ping.remote() for tid, h in self.tasks.items()}
        return {tid: dict(ray.get(ref, timeout=timeout_s)) for tid, ref in refs.items()}

    def coordinator_pid(self, timeout_s: float = 30.0) -> int:
        return int(ray.get(self.coordinator.pid.remote(), timeout=timeout_s))

    def stop(self) -> None:
        """Stop the coordinator and the tasks, then remove the actors."""
        if self.coordinator is not None:
            with contextlib.suppress(RayError):
                ray.get(self.coordinator.stop.remote(), timeout=15)
        stops = [h.stop.remote() for h in self.tasks.values()]
        if self.receiver is not None:
            stops.append(self.receiver.stop.remote())
        with contextlib.suppress(RayError):
            ray.get(stops, timeout=15)
        for h in [*self.tasks.values(), self.coordinator, self.receiver]:
            if h is not None:
                with contextlib.suppress(Exception):
                    ray.kill(h, no_restart=True)
        self.tasks.clear()
        self.coordinator = None
        self.receiver = None

    def abandon(self) -> None:
        """Forget every actor without asking anything of them (their Ray node is gone)."""
        self.tasks.clear()
        self.coordinator = None
        self.receiver = None

    def __enter__(self) -> PipelineRunner:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def claim_workdir(workdir: Path, job_id: str) -> None:
    """Make `workdir` the workdir of `job_id`, or refuse: one workdir, one job.

    A second job in the same workdir would append to the first one's ledger (every
    event twice) and restart its dead-letter file from zero; the same job id resumes.
    The claim is ``WORKDIR/.resilience/job-id``, written once.
    """
    marker = workdir / ".resilience" / "job-id"
    try:
        owner = marker.read_text().strip()
    except FileNotFoundError:
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_name(f".job-id.{uuid.uuid4().hex}.tmp")
        tmp.write_text(job_id)
        try:
            os.link(tmp, marker)  # atomic, and fails if another job claimed it meanwhile
        except FileExistsError:
            owner = marker.read_text().strip()
        else:
            owner = job_id
        finally:
            tmp.unlink(missing_ok=True)
    if owner != job_id:
        raise UserError(f"workdir {workdir} belongs to job {owner!r}, not {job_id!r}: use "
                        f"another workdir, or --job-id {owner} to resume that job")


@contextlib.contextmanager
def workdir_lock(workdir: Path, command: str = "") -> Iterator[None]:
    """Hold `workdir` for one run, or refuse at once: two runs on one workdir never mix.

    The lock is a `flock` on ``WORKDIR/.resilience/run.lock`` (released by the kernel
    when this process ends, however it ends); the file names the holder, so a second
    run can say which process runs there. Raises `WorkdirBusy`.
    """
    path = workdir / ".resilience" / "run.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirBusy(f"workdir {workdir} is in use by another run "
                              f"({_holder(path)}): wait for it to end, or stop it") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                 "command": command}).encode())
        yield
    finally:
        os.close(fd)


def _holder(path: Path) -> str:
    try:
        doc = json.loads(path.read_text())
        what = f"pid {doc['pid']} on {doc['host']}, since {doc['started']}"
        return what + (f": {doc['command']}" if doc.get("command") else "")
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"

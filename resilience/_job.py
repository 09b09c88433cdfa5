"""`@resilient.job`: a driver function becomes a job with an identity, a leader and hooks.

    @resilient.job(name="risk-limits")
    def main(job: Job) -> None:
        limits = Limits.remote()                  # @resilient actors: stored under the job
        runner = job.pipeline(payments_pipeline(opts))   # a checkpointed pipeline
        ...

    main()          # starts (or joins) etcd and Ray, leads the job, runs, cleans up

What the job gives:

* **identity** in etcd under ``/resilience/jobs/<name>/``: its state (running, finished,
  failed) and who runs it;
* **leadership with a fencing epoch**: one driver at a time leads the job; the epoch is
  on every commit made through it, and a driver that loses its lease is told
  (`Job.lost`) and must stop;
* **a store** for the job's `@resilient` actors (``<workdir>/actors``) and pipelines;
* **hooks**: ``on_escalate`` (an actor's failover policy escalated), ``on_leadership_lost``;
  cross-datacenter failover and chaos drills attach here.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from resilience._embedded_etcd import etcd_endpoint
from resilience._etcd import EtcdClient
from resilience._ray import ray_session
from resilience.coordination import LeaderElection, Leadership

__all__ = ["Job", "current_job", "job", "job_context"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_current: list[Job] = []
_current_lock = threading.Lock()


def current_job() -> Job | None:
    """The job whose driver function is running in this process, if any."""
    with _current_lock:
        return _current[-1] if _current else None


@dataclass
class Job:
    """What a job's driver function receives. See the module docstring."""

    name: str
    workdir: Path
    etcd_endpoint: str
    client: EtcdClient
    leadership: Leadership
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    _escalate_hooks: list[Callable[[str, str], None]] = field(default_factory=list)
    _lost_hooks: list[Callable[[], None]] = field(default_factory=list)

    @property
    def epoch(self) -> int:
        """The fencing epoch of this driver's reign over the job."""
        return self.leadership.epoch

    @property
    def lost(self) -> bool:
        """True once leadership is lost: the driver must stop acting."""
        return not self.leadership.is_valid()

    @property
    def store_root(self) -> Path:
        """Where the job's `@resilient` actors keep snapshots and call logs."""
        return self.workdir / "actors"

    def on_escalate(self, hook: Callable[[str, str], None]) -> None:
        """Call `hook(actor_name, reason)` when an actor's failover escalates to the job."""
        self._escalate_hooks.append(hook)

    def on_leadership_lost(self, hook: Callable[[], None]) -> None:
        self._lost_hooks.append(hook)

    def escalate(self, actor: str, reason: str) -> bool:
        """Run the escalation hooks; True if one of them handled it."""
        self.client.put(f"/resilience/jobs/{self.name}/escalations/{actor}",
                        json.dumps({"reason": reason, "at": time.time(),
                                    "epoch": self.epoch}).encode())
        handled = False
        for hook in self._escalate_hooks:
            try:
                hook(actor, reason)
                handled = True
            except Exception:
                log.exception("escalation hook failed for %s", actor)
        return handled

    def pipeline(self, spec: Any) -> Any:
        """Start a checkpointed pipeline (a `PipelineSpec`) under this job; returns its runner."""
        from resilience._runtime._driver import PipelineRunner

        runner = PipelineRunner(spec, self.etcd_endpoint)
        runner.start()
        return runner

    def _set_state(self, state: str, **detail: Any) -> None:
        with contextlib.suppress(Exception):
            self.leadership.fenced_put(
                f"/resilience/jobs/{self.name}/driver",
                json.dumps({"state": state, "epoch": self.epoch, "run_id": self.run_id,
                            "host": socket.gethostname(), "pid": os.getpid(),
                            **detail}).encode())


@contextlib.contextmanager
def job_context(name: str, workdir: Path, *, etcd: str | None = None,
                ray_address: str | None = None, ttl_s: float = 5.0) -> Iterator[Job]:
    """The job's runtime as a context manager (what `@resilient.job` wraps a function in)."""
    workdir.mkdir(parents=True, exist_ok=True)
    with etcd_endpoint(etcd, workdir) as endpoint, ray_session(ray_address), \
            EtcdClient(endpoint) as client:
        holder = f"driver:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        election = LeaderElection(client, f"jobs/{name}/driver", holder, ttl_s=ttl_s)
        leadership = election.campaign(timeout_s=ttl_s * 4)
        the_job = Job(name=name, workdir=workdir, etcd_endpoint=endpoint, client=client,
                      leadership=leadership)
        def lost() -> None:
            for hook in the_job._lost_hooks:
                hook()

        leadership.on_lost(lost)
        the_job._set_state("running")
        previous_store = os.environ.get("RESILIENCE_STORE")
        os.environ["RESILIENCE_STORE"] = str(the_job.store_root)
        with _current_lock:
            _current.append(the_job)
        try:
            yield the_job
            the_job._set_state("finished")
        except BaseException as e:
            the_job._set_state("failed", error=f"{type(e).__name__}: {e}"[:500])
            raise
        finally:
            with _current_lock:
                _current.remove(the_job)
            if previous_store is None:
                os.environ.pop("RESILIENCE_STORE", None)
            else:
                os.environ["RESILIENCE_STORE"] = previous_store
            leadership.resign()


def job(
    name: str,
    *,
    workdir: str | Path | None = None,
    etcd: str | None = None,
    ray_address: str | None = None,
    lease_ttl_s: float = 5.0,
) -> Callable[[Callable[[Job], T]], Callable[[], T]]:
    """Decorate a driver function `fn(job)`; calling it runs it as job `name`.

    Validated now: a bad name raises here. etcd is `etcd` (or $RESILIENCE_ETCD, else
    an embedded one under `workdir`); Ray is `ray_address` or a local cluster.
    """
    if not name or any(c in name for c in "/# ") or len(name) > 100:
        raise ValueError(f"resilient.job(name=...): {name!r} must be a non-empty word "
                         "without '/', '#' or spaces")
    if lease_ttl_s < 2:
        raise ValueError(f"resilient.job(lease_ttl_s=...) must be >= 2 (etcd's minimum "
                         f"lease), got {lease_ttl_s}")
    base = Path(workdir) if workdir is not None else Path.cwd() / ".resilience" / "jobs" / name

    def decorate(fn: Callable[[Job], T]) -> Callable[[], T]:
        @functools.wraps(fn)
        def run() -> T:
            with job_context(name, base, etcd=etcd, ray_address=ray_address,
                             ttl_s=lease_ttl_s) as the_job:
                return fn(the_job)

        run.__resilient_job__ = name  # type: ignore[attr-defined]
        return run

    return decorate

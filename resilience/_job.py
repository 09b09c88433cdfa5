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

from resilience._errors import InfrastructureError, JobFailed
from resilience._ray import RaySession, ray_session
from resilience.coordination._client import EtcdClient, EtcdError
from resilience.coordination._election import CoordinationError, LeaderElection, Leadership
from resilience.coordination._embedded import EmbeddedEtcd, EmbeddedEtcdError, etcd_service

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
    etcd_server: EmbeddedEtcd | None = None  # when this process started the etcd
    ray: RaySession | None = None
    election: LeaderElection | None = None
    site: str | None = None  # this driver's site, in a job that runs on two sites
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

    def pipeline(self, spec: Any, *, deadlines: Any = None) -> Any:
        """Start a checkpointed pipeline (a `PipelineSpec`) under this job; returns its runner.

        The runner's `wait` watches what the job stands on (`_runtime._watchdog`): it
        restarts the embedded etcd or the local Ray when this process started them and
        they die, and fails with one line when an external one stays unreachable.
        """
        from resilience._runtime._driver import PipelineRunner
        from resilience._runtime._watchdog import Deadlines, Watchdog

        watchdog = Watchdog(self, deadlines or Deadlines())
        runner = PipelineRunner(spec, self.etcd_endpoint, watchdog=watchdog)
        runner.start()
        return runner

    # -- what the watchdog asks (resilience._runtime._watchdog.Infrastructure) ----------

    @property
    def etcd_embedded(self) -> bool:
        return self.etcd_server is not None

    @property
    def ray_local(self) -> bool:
        return self.ray is not None and self.ray.started_here

    def etcd_exited(self) -> str | None:
        server = self.etcd_server
        code = None if server is None else server.exit_code()
        if code is None:
            return None
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        return f"the embedded etcd exited ({how})"

    def etcd_answers(self) -> bool:
        try:
            self.client.get(self._driver_key, timeout_s=1.0)
        except EtcdError:
            return False
        return True

    def ray_lost(self) -> str | None:
        return None if self.ray is None else self.ray.lost()

    def restart_etcd(self) -> None:
        assert self.etcd_server is not None
        try:
            self.etcd_server.restart()
        except EmbeddedEtcdError as e:
            raise InfrastructureError(f"job {self.name}: the embedded etcd could not be "
                                      f"restarted: {e}") from e

    def restart_ray(self) -> None:
        assert self.ray is not None
        self.ray.restart()

    def after_etcd_restart(self) -> None:
        """Lead the job again if the outage cost this driver its lease."""
        if self.leadership.is_valid() or self.election is None:
            return
        try:
            self.leadership = self.election.campaign(timeout_s=self.election.ttl_s * 4)
        except (CoordinationError, EtcdError) as e:
            raise InfrastructureError(f"job {self.name}: the driver could not lead the job "
                                      f"again after etcd came back: {e}") from e
        self._set_state("running", relead=True)

    @property
    def _driver_key(self) -> str:
        base = f"/resilience/jobs/{self.name}"
        return f"{base}/driver" if self.site is None else f"{base}/sites/{self.site}/driver"

    def _set_state(self, state: str, **detail: Any) -> None:
        with contextlib.suppress(Exception):
            self.leadership.fenced_put(
                self._driver_key,
                json.dumps({"state": state, "epoch": self.epoch, "run_id": self.run_id,
                            "host": socket.gethostname(), "pid": os.getpid(),
                            **detail}).encode())


@contextlib.contextmanager
def job_context(name: str, workdir: Path, *, etcd: str | None = None,
                ray_address: str | None = None, ttl_s: float = 5.0, site: str | None = None,
                ray_temp_dir: str | None = None) -> Iterator[Job]:
    """The job's runtime as a context manager (what `@resilient.job` wraps a function in).

    The workdir is held for this run (a second run on it is refused at once with
    `WorkdirBusy`, naming this one) before etcd or Ray start. `site` names this
    driver's site in a job that runs on two sites: each site's driver leads its own
    part (the job's leadership itself is its coordinators' to win).
    """
    from resilience._runtime._driver import workdir_lock

    workdir.mkdir(parents=True, exist_ok=True)
    with workdir_lock(workdir, f"job {name}"), etcd_service(etcd, workdir) as etcd_svc:
        _check_etcd_answers(etcd_svc.endpoint)  # before Ray, which takes seconds to start
        with ray_session(ray_address, temp_dir=ray_temp_dir) as ray_sess, \
                EtcdClient(etcd_svc.endpoint) as client:
            yield from _run_job(name, workdir, etcd_svc, ray_sess, client=client, ttl_s=ttl_s,
                                site=site)


def _check_etcd_answers(endpoint: str, timeout_s: float = 5.0) -> None:
    try:
        EtcdClient.connect(endpoint, timeout_s=timeout_s).close()
    except EtcdError as e:
        raise InfrastructureError(f"etcd at {endpoint} does not answer: {e}") from e


def _run_job(name: str, workdir: Path, etcd_svc: Any, ray_sess: RaySession, *,
             client: EtcdClient, ttl_s: float, site: str | None = None) -> Iterator[Job]:
    """The job inside its etcd and Ray: lead it, yield it, record how it ended."""
    holder = f"driver:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    resource = f"jobs/{name}/driver" if site is None else f"jobs/{name}/sites/{site}/driver"
    election = LeaderElection(client, resource, holder, ttl_s=ttl_s)
    try:
        leadership = election.campaign(timeout_s=ttl_s * 4)
    except EtcdError as e:
        raise InfrastructureError(f"job {name}: etcd at {etcd_svc.endpoint} does not "
                                  f"answer: {e}") from e
    except CoordinationError as e:
        raise JobFailed(f"job {name}: the driver could not lead the job: {e}") from e
    the_job = Job(name=name, workdir=workdir, etcd_endpoint=etcd_svc.endpoint,
                  client=client, leadership=leadership, etcd_server=etcd_svc.server,
                  ray=ray_sess, election=election, site=site)

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
        the_job.leadership.resign()


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

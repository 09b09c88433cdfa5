"""Run a scenario: start the job, check steady state, inject and heal faults, check invariants.

The runner records what it did and saw (a journal written line by line, so it survives
Ctrl-C; samples of progress read from the job's coordinator and, independently, from the
ledger itself), always heals every fault it injected (also on an interrupt or an abort),
then judges the run with checkers that share no code path with the job, and writes the
report as JSON and HTML. A run is replayed from its scenario, its seed and the code
version printed in the report.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import chaos.report as rep
from chaos._faults import FAULT_KINDS, FaultStep, Injected
from chaos._scenario import Scenario
from resilience import (
    EmbeddedEtcd,
    EmbeddedEtcdCluster,
    EtcdClient,
    PipelineRunner,
    UserError,
    ray_session,
)
from resilience.checker import parse_transfer, verify
from resilience.jobs.payments.generator import generate
from resilience.jobs.payments.job import PaymentsOptions, payments_pipeline
from resilience.testing import process_state

__all__ = ["RunOptions", "code_version", "run_scenario"]

_SAMPLE_S = 0.25
# How long a pid query waits before the pid the process reported last is used instead.
_PID_QUICK_S = 2.0
Phase = Literal["before", "after"]


def code_version() -> str:
    """The git commit of the code under test (with -dirty for local changes)."""
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev.strip() + ("-dirty" if dirty.strip() else "")


@dataclass
class RunOptions:
    """How to run a scenario (the scenario says what)."""

    seed: int = 0
    workdir: Path | None = None
    input_file: Path | None = None
    json_path: Path | None = None
    html_path: Path | None = None
    progress: bool = True
    etcd: str | None = None  # an etcd to use instead of starting one (tests)
    replay: str = ""


class _Journal:
    def __init__(self, path: Path, t0: float, echo: bool) -> None:
        self.path = path
        self.t0 = t0
        self.events: list[rep.JournalEvent] = []
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.echo = echo

    def __call__(self, kind: str, message: str) -> None:
        t = round(time.time() - self.t0, 3)
        self.events.append(rep.JournalEvent(t=t, kind=kind, message=message))
        # One line a event, flushed: the journal survives Ctrl-C and a killed harness.
        self._file.write(json.dumps({"t": t, "kind": kind, "message": message}) + "\n")
        self._file.flush()
        if self.echo:
            sys.stderr.write(f"\r{t:7.2f}s  {kind:14} {message}\n")

    def close(self) -> None:
        self._file.close()


class ChaosEnvironment:
    """The job under test and everything around it that faults can act on."""

    def __init__(self, scenario: Scenario, workdir: Path, opts: RunOptions) -> None:
        self.scenario = scenario
        self.workdir = workdir
        self.opts = opts
        self.job_id = f"chaos-{int(time.time() * 1000) % 10**9}"
        self.needs = scenario.needs()
        self.runner: Any = None
        self.etcd_endpoint = ""
        self.input_file = opts.input_file or workdir / "input.jsonl"
        self._stack = contextlib.ExitStack()
        self._etcd: Any = None
        self._proxies: dict[str, Any] = {}
        self._cluster: Any = None
        self._nodes: dict[int, Any] = {}
        self._client: EtcdClient | None = None
        # The pid each process last reported (see `_pid`).
        self._pids: dict[tuple[str, str], int] = {}
        self._no_helper: set[tuple[str, str]] = set()

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        job = self.scenario.job
        if self.opts.input_file is None and job.kind == "payments":
            generate(self.input_file, events=job.events, accounts=job.accounts, seed=job.seed)
        self._start_etcd()
        self._start_ray()
        self._client = self._stack.enter_context(EtcdClient(self.etcd_endpoint, timeout_s=3))
        spec = self._spec()
        self.runner = PipelineRunner(spec, self.etcd_endpoint)
        self.runner.start()

    def _start_etcd(self) -> None:
        if "etcd_cluster" in self.needs:
            self._etcd = self._stack.enter_context(
                EmbeddedEtcdCluster(self.workdir / "etcd-cluster", 3))
            upstream = self._etcd.endpoints[0]
            endpoint = self._etcd.endpoint
        elif self.opts.etcd and "etcd_proxy" not in self.needs:
            upstream = endpoint = self.opts.etcd
        else:
            self._etcd = self._stack.enter_context(EmbeddedEtcd(self.workdir / "etcd"))
            upstream = endpoint = self._etcd.endpoint
        if "etcd_proxy" in self.needs:
            from chaos.proxy import ChaosProxy

            proxy = ChaosProxy(upstream, name="etcd")
            proxy.start()
            self._stack.callback(proxy.stop)
            self._proxies["etcd"] = proxy
            endpoint = proxy.endpoint
        self.etcd_endpoint = endpoint

    def _start_ray(self) -> None:
        if "nodes" not in self.needs:
            self._stack.enter_context(ray_session())
            return
        import ray
        from ray.cluster_utils import Cluster

        if ray.is_initialized():
            raise RuntimeError("a node-loss scenario starts its own Ray cluster: run it in a "
                               "process without Ray (e.g. `resilience chaos run`)")
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 2, "node_ip_address": "127.0.0.1", "include_dashboard": False})
        self._cluster = cluster
        self._stack.callback(cluster.shutdown)
        self._nodes[1] = cluster.add_node(num_cpus=1, resources={"zone_b": 100},
                                          node_ip_address="127.0.0.1")
        ray.init(address=cluster.address, namespace="resilience", logging_level=logging.WARNING,
                 log_to_driver=False)
        self._stack.callback(ray.shutdown)

    def _spec(self) -> Any:
        job = self.scenario.job
        if job.kind == "keyed_sums":
            from resilience.jobs.keyed_sums import SumsOptions, keyed_sums_pipeline

            return keyed_sums_pipeline(SumsOptions(
                self.workdir / "job", total=job.events, keys=job.accounts,
                sums=job.parallelism, checkpoint_interval_s=job.checkpoint_interval,
                alignment_timeout_s=job.alignment_timeout, job_id=self.job_id))
        return payments_pipeline(PaymentsOptions(
            self.input_file, self.workdir / "job", parallelism=job.parallelism,
            checkpoint_interval_s=job.checkpoint_interval, job_id=self.job_id,
            alignment_timeout_s=job.alignment_timeout, balances_stage=job.balances_stage,
            balances_resources={"zone_b": 0.01} if "nodes" in self.needs else None))

    def stop(self) -> None:
        if self.runner is not None:
            with contextlib.suppress(Exception):
                self.runner.stop()
        self._stack.close()

    # -- Environment protocol (what faults act on) -----------------------------------

    @property
    def job_dir(self) -> Path:
        return self.workdir / "job"

    def task_names(self) -> list[str]:
        return sorted(self.runner.tasks)

    def task_pid(self, task: str) -> int:
        return self._pid(("task", task),
                         lambda timeout_s: self.runner.pids(timeout_s, tasks=[task])[task])

    def helper_pids(self, kind: str) -> dict[str, int]:
        def ask(task: str) -> Callable[[float], int]:
            return lambda timeout_s: self.runner.helper_pids(timeout_s, tasks=[task])[task][kind]

        out: dict[str, int] = {}
        for task in self.task_names():
            if (kind, task) in self._no_helper:
                continue  # an operator's helpers do not change across restarts
            try:
                out[task] = self._pid((kind, task), ask(task))
            except KeyError:
                self._no_helper.add((kind, task))
        return out

    def coordinator_pid(self) -> int:
        return self._pid(("coordinator", ""), self.runner.coordinator_pid)

    def remember_pids(self) -> None:
        """Ask every process for its pid while none is stopped (the job has just started)."""
        with contextlib.suppress(Exception):
            self.coordinator_pid()
            for task in self.task_names():
                self.task_pid(task)
            self.helper_pids("java")

    def _pid(self, key: tuple[str, str], ask: Callable[[float], int]) -> int:
        """A process's pid, without waiting for a process that a fault has stopped.

        The actor itself is asked, but an actor stopped by an earlier pause never answers:
        after a short wait the pid it last reported is used while that process exists
        (stopped or not). A process that is gone (killed, being restarted by Ray) is
        asked again and waited for.
        """
        from ray.exceptions import GetTimeoutError

        try:
            pid = int(ask(_PID_QUICK_S))
        except GetTimeoutError:
            last = self._pids.get(key)
            if last is not None and process_state(last) is not None:
                return last
            pid = int(ask(30.0))
        self._pids[key] = pid
        return pid

    def etcd_member(self, index: int) -> Any:
        if not isinstance(self._etcd, EmbeddedEtcdCluster):
            raise RuntimeError("etcd faults need the 3-member cluster")
        return self._etcd.members[index]

    def proxy(self, link: str) -> Any:
        if link not in self._proxies:
            raise RuntimeError(f"no proxied link {link!r} (have: {', '.join(self._proxies)})")
        return self._proxies[link]

    def node(self, index: int) -> Any:
        return self._nodes[index]

    def remove_node(self, index: int) -> None:
        self._cluster.remove_node(self._nodes.pop(index), allow_graceful=False)

    def restore_node(self, index: int) -> None:
        if index not in self._nodes:
            self._nodes[index] = self._cluster.add_node(
                num_cpus=1, resources={"zone_b": 100}, node_ip_address="127.0.0.1")

    def coordinator_lease(self) -> int | None:
        assert self._client is not None
        kv = self._client.get(f"/resilience/jobs/{self.job_id}/leader")
        return None if kv is None else kv.lease

    def revoke_lease(self, lease_id: int) -> None:
        assert self._client is not None
        self._client.revoke_lease(lease_id)

    def leader(self) -> tuple[int, str] | None:
        assert self._client is not None
        try:
            kv = self._client.get(f"/resilience/jobs/{self.job_id}/leader")
        except Exception:  # noqa: BLE001 - etcd may be partitioned on purpose
            return None
        if kv is None:
            return None
        doc = json.loads(kv.value)
        return int(doc["epoch"]), str(doc["holder"])

    def checkpoint_records(self) -> list[dict[str, Any]]:
        assert self._client is not None
        out = []
        for kv in self._client.get_prefix(f"/resilience/jobs/{self.job_id}/checkpoints/"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(kv.value))
        return sorted(out, key=lambda r: r["checkpoint_id"])

    @property
    def output_db(self) -> Path:
        return self.job_dir / ("sums.sqlite" if self.scenario.job.kind == "keyed_sums"
                               else "ledger.sqlite")

    def ledger_watermark(self) -> tuple[int, int]:
        """(committed watermark, fencing epoch) read from the sink's own table."""
        try:
            with sqlite3.connect(f"file:{self.output_db}?mode=ro", uri=True, timeout=1) as db:
                row = db.execute("SELECT max(watermark), max(fencing_epoch) "
                                 "FROM _resilience_sinks").fetchone()
                return int(row[0] or 0), int(row[1] or 0)
        except sqlite3.Error:
            return 0, 0


@dataclass
class _Active:
    record_index: int
    injected: Injected
    heal_at: float | None


@dataclass
class _State:
    samples: list[rep.Sample] = field(default_factory=list)
    faults: list[rep.FaultRecord] = field(default_factory=list)
    leaders: list[tuple[float, int, str]] = field(default_factory=list)
    pre_fault_watermarks: list[tuple[float, int]] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    aborted: str | None = None
    restores: int = 0  # failure restores seen (not the job's start)
    steady: list[rep.SteadyStateResult] = field(default_factory=list)


def run_scenario(scenario: Scenario, opts: RunOptions | None = None) -> rep.Report:
    """Run `scenario` once; return the report (also written to the paths in `opts`)."""
    opts = opts or RunOptions()
    workdir = Path(opts.workdir or Path.cwd() / "chaos-runs" /
                   f"{int(time.time())}-{os.getpid()}").resolve()
    earlier = [p.name for p in (workdir / "job", workdir / "journal.jsonl") if p.exists()]
    if earlier:
        # The new job would append to the earlier run's ledger, and the checker would
        # rightly count every event twice: a run needs a workdir of its own.
        raise UserError(f"workdir {workdir} holds an earlier run ({', '.join(earlier)}): "
                        "give a new --workdir, or remove that one first")
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    journal = _Journal(workdir / "journal.jsonl", t0, opts.progress)
    rng = random.Random(opts.seed)
    plan = scenario.plan(opts.seed)
    env = ChaosEnvironment(scenario, workdir, opts)
    state = _State()
    journal("start", f"{scenario.title}: seed {opts.seed}, {len(plan)} faults planned; "
                     f"workdir {workdir}")
    active: list[_Active] = []
    try:
        env.start()
        journal("job", f"job {env.job_id} started ({scenario.job.kind}, "
                       f"{scenario.job.events:,} events, P={scenario.job.parallelism})")
        _run_method(scenario, env, plan, rng, journal, state, active, t0)
    except KeyboardInterrupt:
        state.aborted = "interrupted (Ctrl-C)"
        journal("abort", state.aborted)
        raise
    except Exception as e:  # noqa: BLE001 - a harness error is a failed run, with its reason
        state.aborted = f"harness error: {type(e).__name__}: {e}"
        journal("abort", state.aborted)
    finally:
        # The rollback: every injected fault is healed, whatever happened.
        for a in active:
            _heal(a, state, journal, t0, why="rollback")
        report = _finish(scenario, env, opts, state, journal, t0, workdir)
        env.stop()
        journal.close()
    return report


def _sample(env: ChaosEnvironment, state: _State, t0: float) -> dict[str, Any]:
    st = env.runner.status(timeout_s=2.0) or state.status
    state.status = st or state.status
    watermark, _ = env.ledger_watermark()
    now = time.time()
    state.samples.append(rep.Sample(
        t=round(now - t0, 3), lines_read=int(st.get("lines_read", 0)),
        committed=max(watermark - 1, 0), checkpoints=int(st.get("checkpoints_completed", 0)),
        generation=int(st.get("generation", 0)), state=str(st.get("state", "?"))))
    leader = env.leader()
    if leader is not None and (not state.leaders or state.leaders[-1][1:] != leader):
        state.leaders.append((now - t0, *leader))
    return st


def _run_method(scenario: Scenario, env: ChaosEnvironment, plan: list[FaultStep], rng: Any,
                journal: _Journal, state: _State, active: list[_Active], t0: float) -> None:
    job = scenario.job
    deadline = time.time() + job.timeout_s
    # Wait for the job to run, then the steady state before any fault.
    while True:
        st = _sample(env, state, t0)
        if st.get("failed") or st.get("finished"):
            break
        if st.get("state") == "running" and st.get("lines_read", 0) > 0:
            break
        if time.time() > deadline:
            raise TimeoutError("the job did not start within its timeout")
        time.sleep(_SAMPLE_S)
    journal("running", "the job runs; checking the steady state")
    env.remember_pids()
    state.steady += _steady_checks(scenario, env, state, t0, "before", journal)
    start = time.time()
    pending = list(plan)
    last_progress = (time.time(), -1)
    restores_seen: set[int] = set()
    while True:
        st = _sample(env, state, t0)
        now = time.time()
        # Heals first: a fault's duration must not stretch while another is injected.
        for a in list(active):
            if a.heal_at is not None and now >= a.heal_at:
                _heal(a, state, journal, t0, why="duration over")
                active.remove(a)
        for step in list(pending):
            due = (step.at_lines is not None and st.get("lines_read", 0) >= step.at_lines) or \
                  (step.at_seconds is not None and now - start >= step.at_seconds)
            if due and not st.get("finished"):
                pending.remove(step)
                _inject(step, env, rng, journal, state, active, t0)
        for r in st.get("restores", []):
            # Keyed by generation: a restarted coordinator starts a fresh list.
            if r["reason"] != "job start" and r["generation"] not in restores_seen:
                restores_seen.add(r["generation"])
                journal("restore", f"restored from checkpoint {r['from_checkpoint']} in "
                                   f"{r['duration_s']:.2f}s: {r['reason'][:100]}")
        restores = state.restores = len(restores_seen)
        if st.get("finished") or st.get("failed"):
            if pending:
                journal("note", f"the job ended before {len(pending)} planned faults")
            if st.get("failed"):
                journal("job", f"the job FAILED: {st.get('last_error')}")
            break
        committed = state.samples[-1].committed
        if committed != last_progress[1]:
            last_progress = (now, committed)
        for check in scenario.abort:
            if check.probe == "no_progress" and now - last_progress[0] > check.limit:
                state.aborted = f"no commit for {check.limit:g}s (abort condition)"
            if check.probe == "restores" and restores > check.limit:
                state.aborted = f"{restores} restores > {check.limit:g} (abort condition)"
        if now > deadline:
            state.aborted = f"the job did not finish within {job.timeout_s:g}s"
        if state.aborted:
            journal("abort", state.aborted)
            break
        time.sleep(_SAMPLE_S)
    for a in list(active):
        _heal(a, state, journal, t0, why="end of the method")
        active.remove(a)
    if not state.aborted:
        state.steady += _steady_checks(scenario, env, state, t0, "after", journal)


def _inject(step: FaultStep, env: ChaosEnvironment, rng: Any, journal: _Journal,
            state: _State, active: list[_Active], t0: float) -> None:
    ftype = FAULT_KINDS[step.kind]
    assert ftype.inject is not None
    state.pre_fault_watermarks.append((time.time() - t0, env.ledger_watermark()[0]))
    at = time.time()
    try:
        injected = ftype.inject(env, step, rng)
    except Exception as e:  # noqa: BLE001 - a fault that cannot be injected is reported
        journal("fault", f"could not inject {step.describe()}: {e}")
        state.faults.append(rep.FaultRecord(kind=step.kind, target=step.target,
                                            injected_at=round(at - t0, 3), healed_at=None,
                                            params=dict(step.params), detail=f"failed: {e}"))
        return
    record = rep.FaultRecord(kind=step.kind, target=injected.target,
                             injected_at=round(at - t0, 3), healed_at=None,
                             params=dict(step.params), detail=injected.detail)
    state.faults.append(record)
    journal("fault", f"injected {step.kind} on {injected.target}: {injected.detail}")
    if injected.undo is None:
        # Nothing to undo (a kill, a corruption): healed as soon as it is done.
        state.faults[-1] = _with_healed(record, at - t0)
        return
    heal_at = at + step.duration if step.duration is not None else None
    active.append(_Active(len(state.faults) - 1, injected, heal_at))


def _with_healed(record: rep.FaultRecord, t: float) -> rep.FaultRecord:
    return rep.FaultRecord(kind=record.kind, target=record.target,
                           injected_at=record.injected_at, healed_at=round(t, 3),
                           params=record.params, detail=record.detail)


def _heal(a: _Active, state: _State, journal: _Journal, t0: float, *, why: str) -> None:
    if a.injected.healed:
        return
    try:
        a.injected.heal()
        journal("heal", f"healed {a.injected.step.kind} on {a.injected.target} ({why})")
    except Exception as e:  # noqa: BLE001 - keep healing the others
        journal("heal", f"healing {a.injected.step.kind} on {a.injected.target} failed: {e}")
    state.faults[a.record_index] = _with_healed(state.faults[a.record_index], time.time() - t0)


def _steady_checks(scenario: Scenario, env: ChaosEnvironment, state: _State, t0: float,
                   phase: Phase, journal: _Journal) -> list[rep.SteadyStateResult]:
    out = []
    for check in scenario.steady_state:
        if check.probe == "throughput":
            result = _probe_throughput(check, env, state, t0, phase)
        else:
            result = _probe_commit_lag(check, state, phase)
        journal("steady", f"{phase}: {check.probe} {'ok' if result.passed else 'FAILED'}: "
                          f"{result.detail}")
        out.append(result)
    return out


def _probe_throughput(check: Any, env: ChaosEnvironment, state: _State, t0: float,
                      phase: Phase) -> rep.SteadyStateResult:
    threshold = f">= {check.threshold:g} events/s"
    if phase == "before":
        first = state.samples[-1]
        time.sleep(check.window_s)  # a measurement window, not a wait for a condition
        _sample(env, state, t0)
        last = state.samples[-1]
    else:
        # After healing: the last window of the run (the job may have finished already).
        window = [s for s in state.samples if s.t >= state.samples[-1].t - check.window_s]
        first, last = window[0], window[-1]
        healed = max((f.healed_at or 0.0 for f in state.faults), default=0.0)
        if last.state == "finished":
            tail = [s for s in state.samples if s.t >= healed]
            first, last = (tail[0], tail[-1]) if len(tail) >= 2 else (first, last)
    span = last.t - first.t
    if span <= 0 or (last.lines_read <= first.lines_read and last.state == "finished"):
        return rep.SteadyStateResult(name="throughput", phase=phase, passed=True,
                                     observed=None, threshold=threshold,
                                     detail="the job had finished: nothing left to measure")
    rate = (last.lines_read - first.lines_read) / span
    return rep.SteadyStateResult(name="throughput", phase=phase,
                                 passed=rate >= check.threshold, observed=round(rate, 1),
                                 threshold=threshold,
                                 detail=f"{rate:,.0f} events/s over {span:.1f}s")


def _probe_commit_lag(check: Any, state: _State, phase: Phase) -> rep.SteadyStateResult:
    """Seconds from an event being read to it being committed, over the samples."""
    samples = state.samples
    if phase == "after":
        healed = max((f.healed_at or 0.0 for f in state.faults), default=0.0)
        samples = [s for s in samples if s.t >= healed]
    worst = 0.0
    for i, s in enumerate(samples):
        done = next((later.t for later in samples[i:] if later.committed >= s.lines_read), None)
        if done is not None:
            worst = max(worst, done - s.t)
    return rep.SteadyStateResult(name="commit_lag", phase=phase, passed=worst <= check.threshold,
                                 observed=round(worst, 2), threshold=f"<= {check.threshold:g}s",
                                 detail=f"worst lag {worst:.2f}s over {len(samples)} samples")


# -- invariants --------------------------------------------------------------------------


def _finish(scenario: Scenario, env: ChaosEnvironment, opts: RunOptions, state: _State,
            journal: _Journal, t0: float, workdir: Path) -> rep.Report:
    invariants = []
    for spec in scenario.invariants:
        try:
            result = _INVARIANTS[spec.name](env, state, spec.params)
        except Exception as e:  # noqa: BLE001 - an invariant that cannot be checked fails
            result = rep.InvariantResult(name=spec.name, passed=False,
                                         detail=f"could not be checked: {type(e).__name__}: {e}")
        invariants.append(result)
        journal("invariant", f"{result.name}: {'PASS' if result.passed else 'FAIL'}: "
                             f"{result.detail[:160]}")
    st = state.status
    report = rep.Report.build(
        scenario=scenario.title, scenario_file=scenario.source, seed=opts.seed,
        code_version=code_version(), started_at=t0, duration_s=round(time.time() - t0, 3),
        aborted=state.aborted, faults=state.faults, invariants=invariants,
        steady_state=state.steady, samples=state.samples, journal=journal.events,
        job={"job_id": env.job_id, "kind": scenario.job.kind, "events": scenario.job.events,
             "parallelism": scenario.job.parallelism, "workdir": str(workdir),
             "finished": bool(st.get("finished")), "restores": state.restores,
             "checkpoints": st.get("checkpoints_completed", 0),
             "checkpoints_failed": st.get("checkpoints_failed", 0),
             "fencing_epoch": st.get("fencing_epoch", 0)},
        replay=opts.replay or f"resilience chaos run {scenario.source} --seed {opts.seed}",
    )
    journal("verdict", "PASSED" if report.passed else "FAILED")
    json_path = opts.json_path or workdir / "report.json"
    html_path = opts.html_path or workdir / "report.html"
    rep.write_json(report, json_path)
    rep.write_html(report, html_path)
    return report


def _inv_exactly_once(env: ChaosEnvironment, state: _State,
                      params: Any) -> rep.InvariantResult:
    if not state.status.get("finished"):
        return rep.InvariantResult(name="exactly_once", passed=False,
                                   detail="the job did not finish: output incomplete")
    if env.scenario.job.kind == "keyed_sums":
        from resilience.jobs.keyed_sums import check_sums

        problems = check_sums(env.job_dir, env.scenario.job.events, env.scenario.job.accounts)
        return rep.InvariantResult(name="exactly_once", passed=not problems,
                                   detail="; ".join(problems) or "every record once, sums exact")
    verdict = verify(env.input_file, env.job_dir)
    summary = (f"{verdict.applied_events:,}/{verdict.valid_events:,} applied, "
               f"{verdict.missing_events} missing, {verdict.duplicated_events} duplicated, "
               f"{verdict.chain_errors} chain errors, {verdict.balance_errors} balance errors, "
               f"{verdict.dead_letter_errors} dead-letter errors")
    return rep.InvariantResult(name="exactly_once", passed=verdict.ok, detail=summary,
                               data=verdict.to_dict())


def _inv_no_split_brain(env: ChaosEnvironment, state: _State,
                        params: Any) -> rep.InvariantResult:
    problems = []
    epochs = [e for _, e, _ in state.leaders]
    for (_, e1, h1), (t2, e2, h2) in itertools.pairwise(state.leaders):
        if e2 <= e1:
            problems.append(f"leader {h2} at {t2:.1f}s has epoch {e2} <= {e1} of {h1}")
    records = env.checkpoint_records()
    for a, b in itertools.pairwise(records):
        if b["fencing_epoch"] < a["fencing_epoch"]:
            problems.append(f"checkpoint {b['checkpoint_id']} committed under epoch "
                            f"{b['fencing_epoch']} after {a['checkpoint_id']} under "
                            f"{a['fencing_epoch']}")
    _, sink_epoch = env.ledger_watermark()
    top = max([*epochs, *(r["fencing_epoch"] for r in records), 0])
    if sink_epoch > top:
        problems.append(f"the sink committed under epoch {sink_epoch}, never granted "
                        f"(highest {top})")
    detail = "; ".join(problems) or (
        f"{len(state.leaders)} reigns observed (epochs {epochs}), {len(records)} checkpoints "
        f"committed in epoch order, sink at epoch {sink_epoch}")
    return rep.InvariantResult(name="no_split_brain", passed=not problems, detail=detail,
                               data={"leaders": state.leaders, "sink_epoch": sink_epoch})


def _inv_rpo(env: ChaosEnvironment, state: _State, params: Any) -> rep.InvariantResult:
    """Events committed before each fault are all in the final output (read from disk)."""
    max_lost = int(params.get("max_lost", 0))
    if not state.pre_fault_watermarks:
        return rep.InvariantResult(name="rpo", passed=True, detail="no fault injected")
    high = max(w for _, w in state.pre_fault_watermarks)
    lost: list[Any]
    if env.scenario.job.kind == "keyed_sums":
        with sqlite3.connect(f"file:{env.output_db}?mode=ro", uri=True) as db:
            have = {r[0] for r in db.execute("SELECT DISTINCT i FROM sums WHERE i < ?",
                                             (high,))}
        lost = [i for i in range(high) if i not in have]
    else:
        expected: list[str] = []
        seen: set[str] = set()
        with open(env.input_file, "rb") as f:
            for line_no, raw in enumerate(f, start=1):
                if line_no >= high:
                    break
                parsed = parse_transfer(raw.rstrip(b"\r\n").decode("utf-8", "replace"))
                if not isinstance(parsed, str) and parsed.id not in seen:
                    seen.add(parsed.id)
                    expected.append(parsed.id)
        with sqlite3.connect(f"file:{env.output_db}?mode=ro", uri=True) as db:
            have_ids = {r[0] for r in db.execute("SELECT DISTINCT event_id FROM postings")}
        lost = [e for e in expected if e not in have_ids]
    return rep.InvariantResult(
        name="rpo", passed=len(lost) <= max_lost,
        detail=f"{len(lost)} of the events committed before the faults lost "
               f"(allowed {max_lost}; checked up to line {high - 1:,})",
        data={"lost": len(lost), "sample": lost[:10], "watermark": high})


def _inv_recovery_time(env: ChaosEnvironment, state: _State,
                       params: Any) -> rep.InvariantResult:
    bound = float(params["max_seconds"])
    times = []
    for f in state.faults:
        at_fault = next((s for s in reversed(state.samples) if s.t <= f.injected_at),
                        state.samples[0])
        start = f.healed_at if f.healed_at is not None else f.injected_at
        # A fault that caused a restore counts from the new generation on: a checkpoint
        # of the old one completing right after the kill is not a recovery.
        restored = next((s for s in state.samples
                         if s.t >= f.injected_at and s.generation > at_fault.generation), None)
        if restored is not None and restored.t - f.injected_at < 120:
            start = max(start, restored.t)
        base = next((s.committed for s in reversed(state.samples) if s.t <= start),
                    at_fault.committed)
        after = next((s.t for s in state.samples if s.t >= start and s.committed > base), None)
        times.append(None if after is None else round(after - f.injected_at, 2))
    bad = [t for t in times if t is None or t > bound]
    return rep.InvariantResult(
        name="recovery_time", passed=not bad,
        detail=f"output committed again after each fault in {times} s (bound {bound:g}s)",
        data={"seconds": times})


_INVARIANTS = {"exactly_once": _inv_exactly_once, "no_split_brain": _inv_no_split_brain,
               "rpo": _inv_rpo, "recovery_time": _inv_recovery_time}


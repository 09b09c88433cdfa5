"""Run a scenario: start the job, check steady state, inject and heal faults, check invariants.

The runner records what it did and saw (a journal written line by line, so it survives
Ctrl-C; samples of progress read from the job's coordinator and, independently, from the
ledger itself), always heals every fault it injected (also on an interrupt or an abort),
then judges the run with checkers that share no code path with the job, and writes the
report as JSON and HTML. A run is replayed from its scenario, its seed and the code
version printed in the report.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chaos.report as rep
from chaos._environment import ChaosEnvironment, RunOptions
from chaos._faults import FAULT_KINDS, FaultStep, Injected
from chaos._invariants import INVARIANT_CHECKS
from chaos._probes import RunState, sample, steady_checks
from chaos._scenario import Scenario
from resilience import UserError

__all__ = ["RunOptions", "code_version", "run_scenario"]

_SAMPLE_S = 0.25


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


@dataclass
class _Active:
    record_index: int
    injected: Injected
    heal_at: float | None


def run_scenario(scenario: Scenario, opts: RunOptions | None = None) -> rep.Report:
    """Run `scenario` once; return the report (also written to the paths in `opts`)."""
    opts = opts or RunOptions()
    if scenario.job.sites == 2:
        from chaos._sites_run import run_sites_scenario  # it imports code_version from here

        return run_sites_scenario(scenario, opts)
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
    state = RunState()
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


def _run_method(scenario: Scenario, env: ChaosEnvironment, plan: list[FaultStep], rng: Any,
                journal: _Journal, state: RunState, active: list[_Active], t0: float) -> None:
    job = scenario.job
    deadline = time.time() + job.timeout_s
    # Wait for the job to run, then the steady state before any fault.
    while True:
        st = sample(env, state, t0)
        if st.get("failed") or st.get("finished"):
            break
        if st.get("state") == "running" and st.get("lines_read", 0) > 0:
            break
        if time.time() > deadline:
            raise TimeoutError("the job did not start within its timeout")
        time.sleep(_SAMPLE_S)
    journal("running", "the job runs; checking the steady state")
    env.remember_pids()
    state.steady += steady_checks(scenario, env, state, t0, "before", journal)
    start = time.time()
    pending = list(plan)
    last_progress = (time.time(), -1)
    restores_seen: set[int] = set()
    while True:
        st = sample(env, state, t0)
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
        state.steady += steady_checks(scenario, env, state, t0, "after", journal)


def _inject(step: FaultStep, env: ChaosEnvironment, rng: Any, journal: _Journal,
            state: RunState, active: list[_Active], t0: float) -> None:
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


def _heal(a: _Active, state: RunState, journal: _Journal, t0: float, *, why: str) -> None:
    if a.injected.healed:
        return
    try:
        a.injected.heal()
        journal("heal", f"healed {a.injected.step.kind} on {a.injected.target} ({why})")
    except Exception as e:  # noqa: BLE001 - keep healing the others
        journal("heal", f"healing {a.injected.step.kind} on {a.injected.target} failed: {e}")
    state.faults[a.record_index] = _with_healed(state.faults[a.record_index], time.time() - t0)


# -- invariants --------------------------------------------------------------------------


def _finish(scenario: Scenario, env: ChaosEnvironment, opts: RunOptions, state: RunState,
            journal: _Journal, t0: float, workdir: Path) -> rep.Report:
    invariants = []
    for spec in scenario.invariants:
        try:
            result = INVARIANT_CHECKS[spec.name](env, state, spec.params)
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



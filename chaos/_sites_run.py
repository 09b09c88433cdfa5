"""A scenario over two sites: its one fault is carried out by a drill, then judged.

A scenario whose job runs on two sites (``job: {sites: 2, replication: sync}``) has one
site-level fault (`SITE_FAULTS`), fixed in its `method` or drawn by its `schedule`, so
that randomized campaigns (`resilience chaos explore`) also cover disaster recovery: the
seed decides the fault, when it strikes, the replication mode and whether the job fails
back. The drill (`chaos._drill`) stands the two sites and the witness up, injects the
fault and measures; this module maps what it saw onto the scenario's invariants and the
chaos report, so a two-site run reads like any other.

The invariants are judged from the drill's raw observations (both ledgers, the commit
logs, the takeovers in etcd), not from its own verdict:

* ``exactly_once``: the independent checker over the active site's ledger;
* ``no_split_brain``: after the new site was elected, the old one committed nothing
  under its old epoch, and each site's commits never go back in epoch;
* ``rpo``: sync mode loses nothing committed (``max_lost``, default 0); async mode loses
  at most what the standby had not yet acknowledged at the fault;
* ``recovery_time``: fault (or failback request) to the first commit at the new site;
* ``replication_lag``: the standby's lag in seconds when the fault struck.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import chaos.report as rep
from chaos._drill import DrillError, DrillOptions, run_drill
from chaos._environment import RunOptions
from chaos._faults import FaultStep
from chaos._scenario import InvariantSpec, Scenario

__all__ = ["run_sites_scenario"]

_DRILL_FAULT = {"site_loss": "site-kill", "replication_partition": "partition",
                "switchover": "switchover"}


def drill_options(scenario: Scenario, step: FaultStep, workdir: Path,
                  opts: RunOptions) -> DrillOptions:
    """The drill that carries out `step` of `scenario`."""
    job = scenario.job
    mode = str(step.params.get("mode", job.replication))
    return DrillOptions(
        workdir=workdir, mode=mode,  # type: ignore[arg-type]
        fault=_DRILL_FAULT[step.kind],  # type: ignore[arg-type]
        failback=bool(step.params.get("failback", False)),
        input_path=opts.input_file, events=job.events, accounts=job.accounts,
        seed=job.seed, parallelism=job.parallelism,
        checkpoint_interval_s=job.checkpoint_interval,
        fault_at=(step.at_lines / job.events if step.at_lines is not None else 0.3),
        fault_after_s=step.at_seconds if step.at_lines is None else None,
        partition_s=step.duration or 6.0,
        on_standby_loss=job.on_standby_loss,  # type: ignore[arg-type]
        timeout_s=job.timeout_s, progress=opts.progress)


def run_sites_scenario(scenario: Scenario, opts: RunOptions) -> rep.Report:
    """Run the two-site `scenario` once (its one fault drawn with `opts.seed`)."""
    from chaos._runner import code_version  # the runner dispatches here: no import cycle

    workdir = Path(opts.workdir or Path.cwd() / "chaos-runs" /
                   f"{int(time.time())}-sites").resolve()
    t0 = time.time()
    (step,) = scenario.plan(opts.seed)
    drill = drill_options(scenario, step, workdir / "drill", opts)
    if opts.progress:
        print(f"{scenario.title}: seed {opts.seed}: {step.describe()} "
              f"({drill.mode} replication, failback {drill.failback})", flush=True)
    result: dict[str, Any] | None = None
    aborted = None
    try:
        result = run_drill(drill)
    except (DrillError, OSError) as e:
        aborted = f"the drill could not be carried out: {e}"
    invariants = [_judge(spec, drill, result) for spec in scenario.invariants]
    fault_t = None
    journal: list[rep.JournalEvent] = []
    samples: list[rep.Sample] = []
    if result is not None:
        for event in result.get("timeline", []):
            journal.append(rep.JournalEvent(t=float(event["t"]), kind=str(event["kind"]),
                                            message=str(event["message"])))
            if event["kind"] == "fault" and fault_t is None:
                fault_t = float(event["t"])
        samples = [_sample(s) for s in result.get("samples", [])]
    faults = [rep.FaultRecord(
        kind=step.kind, target="site:a", injected_at=fault_t if fault_t is not None else 0.0,
        healed_at=None, params={"mode": drill.mode, "failback": drill.failback},
        detail=f"drill {drill.fault}" + (f" for {drill.partition_s:g}s"
                                         if drill.fault == "partition" else ""))] \
        if fault_t is not None else []
    report = rep.Report.build(
        scenario=scenario.title, scenario_file=scenario.source, seed=opts.seed,
        code_version=code_version(), started_at=t0, duration_s=round(time.time() - t0, 3),
        aborted=aborted, faults=faults, invariants=invariants, samples=samples,
        journal=journal,
        job={"job_id": (result or {}).get("job_id", ""), "kind": scenario.job.kind,
             "events": scenario.job.events, "parallelism": scenario.job.parallelism,
             "workdir": str(workdir), "sites": 2, "mode": drill.mode,
             "fault": drill.fault, "failback": drill.failback,
             "active_site": (result or {}).get("active_site"),
             "rto_seconds": (result or {}).get("rto_seconds"),
             "rpo_events": (result or {}).get("rpo_events"),
             "drill_report": str(drill.workdir / "drill.json")},
        replay=opts.replay or f"resilience chaos run {scenario.source} --seed {opts.seed}")
    rep.write_json(report, opts.json_path or workdir / "report.json")
    rep.write_html(report, opts.html_path or workdir / "report.html")
    return report


def _sample(s: Mapping[str, Any]) -> rep.Sample:
    sites = [v for k, v in s.items() if k in ("a", "b")]
    committed = max((int(v.get("watermark") or 0) for v in sites), default=0)
    return rep.Sample(t=float(s["t"]), lines_read=committed, committed=committed,
                      checkpoints=max((int(v.get("checkpoint") or 0) for v in sites), default=0),
                      generation=max((int(v.get("epoch") or 0) for v in sites), default=0),
                      state=str((s.get("replication") or {}).get("gate") or "unknown"))


def _judge(spec: InvariantSpec, drill: DrillOptions,
           result: dict[str, Any] | None) -> rep.InvariantResult:
    if result is None:
        return rep.InvariantResult(spec.name, False, "not checked: the drill did not finish")
    check = _CHECKS[spec.name]
    passed, detail, data = check(spec.params, drill, result)
    return rep.InvariantResult(spec.name, passed, detail, data)


def _exactly_once(params: Mapping[str, Any], drill: DrillOptions,
                  r: dict[str, Any]) -> tuple[bool, str, dict[str, Any]]:
    site = r.get("active_site") or "b"
    verdict = r["verdicts"].get(site, {})
    return (bool(verdict.get("passed")), f"site {site}: {verdict.get('detail', '')}",
            dict(verdict.get("data") or {}))


def _no_split_brain(params: Mapping[str, Any], drill: DrillOptions,
                    r: dict[str, Any]) -> tuple[bool, str, dict[str, Any]]:
    problems = []
    elections = sorted((e for e in r["epochs"] if e.get("at") is not None),
                       key=lambda e: int(e["epoch"]))
    for election in elections:
        epoch, at = int(election["epoch"]), float(election["at"])
        old = election.get("from_site")
        if not old or old == election.get("site"):
            continue
        late = [c for c in r["commits"].get(old, [])
                if int(c["fencing_epoch"]) < epoch and float(c["committed_at"]) > at]
        if late:
            problems.append(f"site {old} committed checkpoints "
                            f"{[c['checkpoint_id'] for c in late]} under an older epoch after "
                            f"site {election['site']} was elected under epoch {epoch}")
    for site, commits in r["commits"].items():
        epochs = [int(c["fencing_epoch"]) for c in sorted(commits,
                                                           key=lambda c: c["committed_at"])]
        if epochs != sorted(epochs):
            problems.append(f"site {site} committed under an epoch lower than before")
    detail = "; ".join(problems) or (f"{len(elections)} takeovers; no site committed under an "
                                     "older epoch after a newer one was elected")
    return not problems, detail, {"epochs": [e["epoch"] for e in elections]}


def _rpo(params: Mapping[str, Any], drill: DrillOptions,
         r: dict[str, Any]) -> tuple[bool, str, dict[str, Any]]:
    lost = int(r["rpo_events"])
    lag = r.get("lag_at_fault") or {}
    if drill.mode == "sync" and drill.on_standby_loss == "fail-closed":
        limit = int(params.get("max_lost", 0))
        return lost <= limit, f"sync: {lost} committed events lost (max {limit})", \
            {"lost": lost}
    bound = int(lag.get("events") or 0)
    return lost <= bound, (f"{drill.mode}: {lost} committed events lost, the standby lagged "
                           f"{bound} events at the fault"), {"lost": lost, "lag": lag}


def _recovery_time(params: Mapping[str, Any], drill: DrillOptions,
                   r: dict[str, Any]) -> tuple[bool, str, dict[str, Any]]:
    limit = float(params["max_seconds"])
    times = {"cutover": float(r["rto_seconds"])}
    if r.get("failback_result"):
        times["failback"] = float(r["failback_result"]["rto_seconds"])
    over = {k: v for k, v in times.items() if v > limit}
    detail = ", ".join(f"{k} {v:.2f}s" for k, v in times.items()) + f" (max {limit:g}s)"
    return not over, detail, times


def _replication_lag(params: Mapping[str, Any], drill: DrillOptions,
                     r: dict[str, Any]) -> tuple[bool, str, dict[str, Any]]:
    limit = float(params["max_seconds"])
    lag = r.get("lag_at_fault") or {}
    seconds = lag.get("seconds")
    if seconds is None:
        return False, "the standby's lag at the fault is unknown", dict(lag)
    return float(seconds) <= limit, (f"{float(seconds):.2f}s ({lag.get('checkpoints')} "
                                     f"checkpoints) behind at the fault (max {limit:g}s)"), \
        dict(lag)


_CHECKS = {"exactly_once": _exactly_once, "no_split_brain": _no_split_brain, "rpo": _rpo,
           "recovery_time": _recovery_time, "replication_lag": _replication_lag}


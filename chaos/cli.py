"""`resilience chaos run|explore`: plugged into the `resilience` command by entry point.

The `resilience` package does not import `chaos` (the layering): it discovers this
module through the ``resilience.commands`` entry point group.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> dict[str, Any]:
    """Add the `chaos` sub-command; return {command name: handler(args) -> exit code}."""
    p = sub.add_parser("chaos", help="run chaos scenarios and randomized fault schedules")
    chaos_sub = p.add_subparsers(dest="chaos_command", required=True, metavar="ACTION")
    r = chaos_sub.add_parser("run", help="run a scenario file")
    r.add_argument("scenario", type=Path)
    r.add_argument("--seed", type=int, default=0, help="seed of random schedules and choices")
    r.add_argument("--dry-run", action="store_true",
                   help="validate and print the plan without injecting anything")
    r.add_argument("--json", type=Path, default=None, help="write the JSON report here")
    r.add_argument("--html", type=Path, default=None, help="write the HTML report here")
    r.add_argument("--input", type=Path, default=None, help="payments input to use")
    r.add_argument("--workdir", type=Path, default=None)
    r.add_argument("--quiet", action="store_true", help="no live journal on stderr")
    e = chaos_sub.add_parser("explore", help="search random fault schedules for a violation")
    e.add_argument("scenario", type=Path)
    e.add_argument("--runs", type=int, required=True)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--shrink-runs", type=int, default=12)
    e.add_argument("--out", type=Path, default=None,
                   help="where to save the minimal failing scenario")
    e.add_argument("--workdir", type=Path, default=None)
    e.add_argument("--json", type=Path, default=None, help="write the campaign summary here")
    d = sub.add_parser("drill", help="a disaster-recovery drill: lose the active site of the "
                       "payments job under load, let the standby take over, verify")
    d.add_argument("--workdir", type=Path, required=True, help="a fresh directory: each site's "
                   "ledger and dead letters end in WORKDIR/<site>/")
    d.add_argument("--input", type=Path, default=None,
                   help="payments input (default: generated, --events lines)")
    d.add_argument("--sites", type=Path, default=None, metavar="FILE",
                   help="sites a and b of a sites file (default: two local sites and a "
                        "witness stood up by the drill)")
    d.add_argument("--mode", choices=["sync", "async"], default="sync")
    d.add_argument("--fault", choices=["site-kill", "partition", "switchover"],
                   default="site-kill")
    d.add_argument("--failback", action="store_true",
                   help="then bring site a back, let it catch up, and switch back to it")
    d.add_argument("--on-standby-loss", choices=["fail-closed", "degrade"],
                   default="fail-closed")
    d.add_argument("--rto-budget", type=float, default=None, metavar="SECONDS",
                   help="fail the drill when the RTO is longer")
    d.add_argument("--events", type=int, default=None,
                   help="input size when generated (default 300,000; 1,000,000 with "
                        "--failback, so the job still runs when site a has caught up)")
    d.add_argument("--fault-at", type=float, default=0.3, metavar="SHARE",
                   help="share of the input committed when the fault strikes (default 0.3)")
    d.add_argument("--partition-seconds", type=float, default=6.0)
    d.add_argument("--json", type=Path, default=None, help="write the JSON report here")
    d.add_argument("--html", type=Path, default=None, help="write the HTML report here")
    d.add_argument("--quiet", action="store_true", help="no live timeline on stderr")
    return {"chaos": _handle, "drill": _drill}


def _drill(args: argparse.Namespace) -> int:
    import math

    from chaos._drill import DrillError, DrillOptions, run_drill

    for option in ("json", "html"):
        problem = _unwritable(getattr(args, option))
        if problem is not None:
            print(f"error: --{option}: {problem}", file=sys.stderr)
            return 2
    if args.input is not None and not args.input.is_file():
        print(f"error: --input {args.input} is not a file", file=sys.stderr)
        return 2
    if args.rto_budget is not None and not (math.isfinite(args.rto_budget) and
                                            args.rto_budget > 0):
        print("error: --rto-budget must be a number of seconds > 0", file=sys.stderr)
        return 2
    if args.events is None:
        args.events = 1_000_000 if args.failback else 300_000
    if not 0 < args.fault_at < 1 or args.events < 1000:
        print("error: --fault-at must lie in (0, 1) and --events be at least 1000",
              file=sys.stderr)
        return 2
    if args.fault == "partition" and args.sites is not None:
        print("error: a partition drill cuts links the drill owns: leave out --sites",
              file=sys.stderr)
        return 2
    opts = DrillOptions(workdir=args.workdir, mode=args.mode, fault=args.fault,
                        failback=args.failback, rto_budget_s=args.rto_budget,
                        input_path=args.input, sites_file=args.sites, events=args.events,
                        fault_at=args.fault_at, partition_s=args.partition_seconds,
                        on_standby_loss=args.on_standby_loss, progress=not args.quiet)
    try:
        report = run_drill(opts)
    except DrillError as e:
        print(f"error: the drill could not be carried out: {e}", file=sys.stderr)
        return 3
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")
    if args.html is not None:
        from chaos._drill_report import write_drill_html

        write_drill_html(report, args.html)
    print(_drill_summary(report))
    return 0 if report["passed"] else 1


def _drill_summary(report: dict[str, Any]) -> str:
    split = report["rto_split"]
    lines = [
        f"drill {report['fault']} ({report['mode']}): {'PASSED' if report['passed'] else 'FAILED'}",
        f"  RTO {report['rto_seconds']:.2f}s from the fault to the first commit at the new site "
        f"(detection {split['detection_s']:.2f}s, restore {split['restore_s']:.2f}s, first "
        f"commit {split['first_commit_after_restore_s']:.2f}s later)",
        f"  RPO {report['rpo_events']} events lost, {report['duplicates']} duplicated; lag at "
        f"the fault {report['lag_at_fault']}",
        f"  ledgers at checkpoint {report['fingerprints']['checkpoint_id']}: "
        f"{'identical' if report['fingerprints']['sink_match'] else 'DIFFERENT'}; state "
        f"{'identical' if report['fingerprints']['state_match'] else 'DIFFERENT'}",
        f"  exactly once on site {report['active_site']}: {report['exactly_once']} "
        f"({report['verdicts'].get(report['active_site'] or 'b', {}).get('detail', '')})",
    ]
    if report.get("failback_result"):
        lines.append(f"  failback: RTO {report['failback_result']['rto_seconds']:.2f}s")
    lines.extend(f"  FAILED: {f}" for f in report["failures"])
    return "\n".join(lines)


def _unwritable(path: Path | None) -> str | None:
    """Why a report could not be written to `path` (checked before a run, not after)."""
    if path is None:
        return None
    if path.is_dir():
        return f"{path} is a directory"
    parent = path.parent
    if not parent.is_dir():
        return f"the directory {parent} of {path.name} does not exist"
    if not os.access(parent, os.W_OK):
        return f"{parent} is not writable"
    return None


def _handle(args: argparse.Namespace) -> int:
    from chaos._scenario import InvalidScenario, load_scenario

    for option in ("json", "html", "out"):
        problem = _unwritable(getattr(args, option, None))
        if problem is not None:
            print(f"error: --{option}: {problem}", file=sys.stderr)
            return 2
    try:
        scenario = load_scenario(args.scenario)
        if args.chaos_command == "explore" and scenario.schedule is None:
            raise InvalidScenario(str(args.scenario), None,
                                  "explore needs a 'schedule' section (kinds, targets, window_s)")
    except InvalidScenario as err:
        print(f"error: invalid scenario: {err}", file=sys.stderr)
        return 2
    if args.chaos_command == "run":
        return _run(scenario, args)
    return _explore(scenario, args)


def _run(scenario: Any, args: argparse.Namespace) -> int:
    from chaos._runner import RunOptions, run_scenario

    plan = scenario.plan(args.seed)
    print(f"scenario: {scenario.title} ({args.scenario}), seed {args.seed}")
    print(f"job: {scenario.job.kind}, {scenario.job.events:,} events, "
          f"P={scenario.job.parallelism}, checkpoint every {scenario.job.checkpoint_interval:g}s")
    print("faults:" if plan else "faults: none")
    for step in plan:
        print(f"  - {step.describe()}")
    print("invariants: " + ", ".join(i.name for i in scenario.invariants))
    if scenario.needs():
        print("environment: " + ", ".join(sorted(scenario.needs())))
    if args.dry_run:
        print("dry run: nothing injected")
        return 0
    replay = f"resilience chaos run {args.scenario} --seed {args.seed}" + (
        f" --input {args.input}" if args.input else "")
    report = run_scenario(scenario, RunOptions(
        seed=args.seed, workdir=args.workdir, input_file=args.input, json_path=args.json,
        html_path=args.html, progress=not args.quiet, replay=replay))
    print(f"\n{'PASSED' if report.passed else 'FAILED'}: {scenario.title}")
    for inv in report.invariants:
        print(f"  {'PASS' if inv.passed else 'FAIL'} {inv.name}: {inv.detail}")
    for s in report.steady_state:
        print(f"  {'ok  ' if s.passed else 'FAIL'} steady state {s.phase} {s.name}: {s.detail}")
    if report.aborted:
        print(f"  aborted: {report.aborted}")
    where = report.job.get("workdir", "")
    print(f"report: {args.json or Path(where) / 'report.json'} and "
          f"{args.html or Path(where) / 'report.html'}")
    return 0 if report.passed else 1


def _explore(scenario: Any, args: argparse.Namespace) -> int:
    from chaos._explore import explore

    print(f"exploring {scenario.title}: up to {args.runs} randomized schedules, seed {args.seed}")
    result = explore(scenario, runs=args.runs, seed=args.seed, out=args.out,
                     workdir=args.workdir, shrink_runs=args.shrink_runs)
    summary = {"scenario": scenario.title, "seed": args.seed, "runs": result.runs,
               "faults_injected": result.faults_injected, "violations": result.violations,
               "mean_run_s": round(result.mean_run_s, 1),
               "minimal_failure": str(result.minimal_file) if result.minimal_file else None,
               "runs_detail": result.reports}
    print(f"\n{result.runs} runs, {result.faults_injected} faults injected, "
          f"{result.violations} invariant violations, mean run {result.mean_run_s:.1f}s")
    if result.minimal_file:
        print(f"minimal failing schedule ({len(result.minimal or [])} faults) saved to "
              f"{result.minimal_file}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 1 if result.violations else 0

"""`resilience chaos run|explore`: plugged into the `resilience` command by entry point.

The `resilience` package does not import `chaos` (the layering): it discovers this
module through the ``resilience.commands`` entry point group.
"""

from __future__ import annotations

import argparse
import json
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
    return {"chaos": _handle}


def _handle(args: argparse.Namespace) -> int:
    from chaos._scenario import InvalidScenario, load_scenario

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

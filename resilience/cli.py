"""The `resilience` command line.

Every user mistake (a missing file, a bad option, an unreachable etcd) ends
with one line on stderr and a non-zero exit code, never a traceback.
Exit codes: 0 success, 1 a check or the job failed, 2 bad usage or input,
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from checkpoint import ResilienceError
from resilience._errors import JobFailed, UserError

__all__ = ["main"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be > 0")
    return value


def _interval(text: str) -> float | None:
    if text.lower() in ("off", "none", "0"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds or 'off'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be > 0 (or 'off')")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="resilience",
        description="Fault tolerance and disaster recovery for fused jobs on Ray.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("gen-payments", help="write a deterministic payments input file")
    g.add_argument("--events", type=_positive_int, required=True)
    g.add_argument("--accounts", type=_positive_int, default=10_000)
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--invalid-rate", type=float, default=0.001,
                   help="share of deliberately malformed lines (default 0.001)")
    g.add_argument("--duplicate-rate", type=float, default=0.0005,
                   help="share of lines replaying an earlier id (default 0.0005)")

    r = sub.add_parser("run", help="run a job")
    r.add_argument("job", choices=["payments"])
    r.add_argument("--input", type=Path, required=True)
    r.add_argument("--workdir", type=Path, required=True)
    r.add_argument("--parallelism", type=_positive_int, default=2)
    r.add_argument("--checkpoint-interval", type=_interval, default=1.0,
                   help="seconds between checkpoints, or 'off' (default 1)")
    r.add_argument("--job-id", default="payments")
    r.add_argument("--etcd", default=None,
                   help="HOST:PORT of an etcd cluster (default: $RESILIENCE_ETCD, "
                        "else an embedded etcd under the workdir)")
    r.add_argument("--ray", dest="ray_address", default=None,
                   help="address of a Ray cluster to join (default: start a local one)")
    r.add_argument("--batch-size", type=_positive_int, default=2000)
    r.add_argument("--balances-stage", choices=["python", "java"], default="python",
                   help="run the per-account balance stage in Python or as a Java actor "
                        "(needs a JDK 17; see docs/java.md)")
    r.add_argument("--from-savepoint", default=None, metavar="NAME|PATH",
                   help="start from a savepoint (a name under the savepoint dir, or its path)")
    r.add_argument("--savepoint-dir", type=Path, default=None,
                   help="where savepoints live (default: WORKDIR/savepoints)")
    r.add_argument("--no-progress", action="store_true")

    s = sub.add_parser("savepoint", help="write a named, self-contained savepoint of a job")
    s.add_argument("job", metavar="JOB", help="job id (e.g. payments)")
    s.add_argument("--name", required=True)
    s.add_argument("--workdir", type=Path, default=None,
                   help="the job's workdir (to find its embedded etcd and store)")
    s.add_argument("--etcd", default=None)
    s.add_argument("--timeout", type=float, default=120.0)

    c = sub.add_parser("checkpoints", help="list, show or verify a job's checkpoints")
    c.add_argument("action", choices=["list", "show", "verify"])
    c.add_argument("checkpoint_id", nargs="?", type=int, default=None)
    c.add_argument("--workdir", type=Path, required=True)
    c.add_argument("--job-id", default="payments")
    c.add_argument("--store", default=None, help="store URI (default: WORKDIR/checkpoints)")
    c.add_argument("--etcd", default=None)
    c.add_argument("--no-etcd", action="store_true",
                   help="do not consult etcd for which checkpoints are complete")
    c.add_argument("--json", action="store_true", help="print JSON")

    v = sub.add_parser("verify", help="check a payments ledger for exactly-once")
    v.add_argument("--input", type=Path, required=True)
    v.add_argument("--workdir", type=Path, required=True)
    v.add_argument("--json", type=Path, default=None, help="also write the verdict as JSON")
    v.add_argument("--reference", type=Path, default=None,
                   help="ledger.sqlite of a crash-free run to compare rows with")

    d = sub.add_parser("demo", help="generate, run with a worker kill, verify")
    d.add_argument("--workdir", type=Path, default=Path("demo-work"))
    d.add_argument("--events", type=_positive_int, default=200_000)
    d.add_argument("--parallelism", type=_positive_int, default=2)
    d.add_argument("--no-kill", action="store_true", help="run without injecting a fault")
    for name, handler in _plugins(sub).items():
        _PLUGIN_HANDLERS[name] = handler
    return p


_PLUGIN_HANDLERS: dict[str, Any] = {}


def _plugins(sub: Any) -> dict[str, Any]:
    """Sub-commands registered by other packages under the `resilience.commands` entry points."""
    from importlib.metadata import entry_points

    handlers: dict[str, Any] = {}
    for ep in entry_points(group="resilience.commands"):
        try:
            handlers.update(ep.load()(sub))
        except Exception as e:  # noqa: BLE001 - a broken plugin must not break the CLI
            print(f"warning: sub-command plugin {ep.name} not loaded: {e}", file=sys.stderr)
    return handlers


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(_dispatch(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except JobFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ResilienceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "gen-payments":
        return _gen(args)
    if args.command == "run":
        return _run(args)
    if args.command == "verify":
        from resilience.checker import run_cli

        return run_cli(args.input, args.workdir, args.json, reference_ledger=args.reference)
    if args.command == "demo":
        return _demo(args)
    if args.command == "savepoint":
        from resilience._admin import savepoint_command

        return savepoint_command(args.job, args.name, workdir=args.workdir, etcd=args.etcd,
                                 timeout_s=args.timeout)
    if args.command == "checkpoints":
        from resilience._admin import checkpoints_command

        return checkpoints_command(args)
    if args.command in _PLUGIN_HANDLERS:
        return int(_PLUGIN_HANDLERS[args.command](args))
    raise UserError(f"unknown command {args.command}")


def _gen(args: argparse.Namespace) -> int:
    from resilience.jobs.payments.generator import generate

    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        stats = generate(args.out, events=args.events, accounts=args.accounts, seed=args.seed,
                         invalid_rate=args.invalid_rate, duplicate_rate=args.duplicate_rate)
    except OSError as e:
        raise UserError(f"cannot write {args.out}: {e.strerror}") from e
    except ValueError as e:
        raise UserError(str(e)) from e
    print(f"wrote {args.out}: {stats.lines:,} lines ({stats.valid:,} valid, "
          f"{stats.invalid:,} malformed, {stats.duplicates:,} duplicate ids, "
          f"{stats.fraud:,} fraud)")
    return 0


def _options(args: argparse.Namespace) -> Any:
    from resilience._admin import resolve_savepoint
    from resilience.jobs.payments.job import PaymentsOptions

    if args.balances_stage == "java":
        from resilience._java import java_unavailable_reason

        reason = java_unavailable_reason()
        if reason is not None:
            raise UserError(f"--balances-stage java: {reason}")
    savepoint = None
    if args.from_savepoint:
        savepoint = resolve_savepoint(args.from_savepoint,
                                      args.savepoint_dir or args.workdir / "savepoints")
    return PaymentsOptions(
        input_path=args.input,
        workdir=args.workdir,
        parallelism=args.parallelism,
        checkpoint_interval_s=args.checkpoint_interval,
        job_id=args.job_id,
        batch_size=args.batch_size,
        savepoint_dir=args.savepoint_dir,
        from_savepoint=savepoint,
        balances_stage=args.balances_stage,
    )


def _summary(result: Any) -> str:
    st = result.status
    start = (st.get("restores") or [{}])[0]
    restores = st.get("restores", [])[1:]
    origin = (f"from checkpoint {start['from_checkpoint']}" if start.get("from_checkpoint")
              else "from the beginning of the input")
    processing = (st["last_checkpoint"]["at"] - start["started_at"]
                  if st.get("last_checkpoint") and start.get("started_at") else result.elapsed_s)
    rate = result.input_lines / processing if processing > 0 else 0.0
    lines = [
        f"job {st['job_id']} finished: {result.input_lines:,} input lines in "
        f"{processing:.1f}s ({rate:,.0f} lines/s), {result.elapsed_s - processing:.1f}s of "
        "actor start-up",
        f"  started {origin}",
        f"  checkpoints: {st['checkpoints_completed']} completed, "
        f"{st['checkpoints_failed']} failed; fencing epoch {st['fencing_epoch']}",
        f"  restores after failures: {len(restores)}",
    ]
    for r in restores:
        lines.append(f"    from checkpoint {r['from_checkpoint']} in {r['duration_s']:.2f}s: "
                     f"{r['reason'][:120]}")
        lines.extend(f"      skipped {f}" for f in r.get("fallbacks", []))
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from resilience._run import run_payments

    result = run_payments(_options(args), etcd=args.etcd, ray_address=args.ray_address,
                          show_progress=not args.no_progress)
    print(_summary(result))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from resilience._run import run_payments
    from resilience.checker import verify
    from resilience.jobs.payments.generator import generate
    from resilience.jobs.payments.job import PaymentsOptions

    root: Path = args.workdir
    input_path = root / f"payments-{args.events}.jsonl"
    job_dir = root / "job"
    if job_dir.exists():
        shutil.rmtree(job_dir)
    root.mkdir(parents=True, exist_ok=True)
    print(f"1/4 generating {args.events:,} transfers into {input_path}")
    if not input_path.exists():
        stats = generate(input_path, events=args.events, accounts=10_000, seed=2026)
        print(f"    {stats.valid:,} valid, {stats.invalid:,} malformed and "
              f"{stats.duplicates:,} replayed ids (these must end in the dead-letter file)")
    kill_info: dict[str, Any] = {}

    def kill_one_worker(runner: Any) -> None:
        # Kill a stateful worker (a balances partition) once a third of the input is in.
        target = "balances-0"
        while True:
            st = runner.status()
            if st is None or st.get("finished") or st.get("failed"):
                return
            if st["state"] == "running" and st["lines_read"] >= args.events // 3 \
                    and st["checkpoints_completed"] >= 1:
                pid = runner.pids()[target]
                kill_info.update(task=target, pid=pid, at=time.time(),
                                 lines=st["lines_read"])
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    print("2/4 starting an embedded etcd and a local Ray (127.0.0.1 only)")
    print("3/4 running the payments job (source -> fraud model -> balances x"
          f"{args.parallelism} -> ledger), checkpoint every 1s"
          + ("" if args.no_kill else "; a balances worker gets SIGKILLed mid-run"))
    result = run_payments(
        PaymentsOptions(input_path=input_path, workdir=job_dir, parallelism=args.parallelism,
                        checkpoint_interval_s=1.0),
        during=None if args.no_kill else kill_one_worker,
    )
    print(_summary(result))
    if kill_info:
        restores = result.status["restores"][1:]
        first = next((r for r in restores if r.get("first_commit_at")), None)
        print(f"    killed {kill_info['task']} (pid {kill_info['pid']}) after "
              f"{kill_info['lines']:,} lines")
        if first is not None:
            print(f"    recovery: {first['first_commit_at'] - kill_info['at']:.2f}s from the "
                  "kill to the first ledger commit after the restore")
    print("4/4 verifying the ledger with the independent exactly-once checker")
    verdict = verify(input_path, job_dir)
    print(verdict.summary())
    (job_dir / "verdict.json").write_text(json.dumps(verdict.to_dict(), indent=2))
    print(f"verdict: {'EXACTLY ONCE' if verdict.ok else 'VIOLATED'} "
          f"(details in {job_dir / 'verdict.json'})")
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""The `resilience` command line.

Every user mistake (a missing file, a bad option, an unreachable etcd) ends
with one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from checkpoint import ResilienceError
from resilience._errors import InfrastructureError, JobFailed, UserError

__all__ = ["EXIT_CODES", "main"]

EXIT_CODES = """exit codes:
  0    success (run: the job finished; verify: exactly once)
  1    the job failed, or a check failed
  2    bad usage or input (a wrong option, a missing file, a busy workdir)
  3    etcd or Ray is unreachable or was lost: the checkpoints are intact, rerun
  130  interrupted (Ctrl-C)      143  terminated (SIGTERM): rerun to resume"""


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: every cleanup that runs on Ctrl-C runs on it too."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


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
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a number of seconds > 0 (or 'off')")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a number of seconds > 0")
    return value


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key.strip(), value


def _endpoints(text: str) -> str:
    """HOST:PORT[,HOST:PORT...] (an http:// prefix is accepted), checked for shape."""
    for part in text.split(","):
        bare = part.strip().removeprefix("http://")
        host, _, port = bare.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise argparse.ArgumentTypeError(f"{part.strip()!r} is not HOST:PORT")
    return text


def _ray_address(text: str) -> str:
    if text == "auto" or "://" in text:
        return text
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="resilience",
        description="Fault tolerance and disaster recovery for fused jobs on Ray.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run a job (payments, keyed-sums, or yours)")
    r.add_argument("job", metavar="JOB",
                   help="a registered job (entry point group resilience.jobs: payments, "
                        "keyed-sums, ...) or module:attribute of a JobDefinition")
    r.add_argument("--input", type=Path, default=None, help="the job's input file")
    r.add_argument("--workdir", type=Path, default=None,
                   help="the job's checkpoints, output, dead letters and embedded etcd "
                        "(required, unless --sites gives the site's)")
    r.add_argument("--parallelism", type=_positive_int, default=2,
                   help="tasks of the job's parallel stages (default 2)")
    r.add_argument("--checkpoint-interval", type=_interval, default=1.0,
                   help="seconds between checkpoints, or 'off' (default 1)")
    r.add_argument("--job-id", default=None, help="the job's identity in etcd (default: JOB)")
    r.add_argument("--set", dest="settings", action="append", default=[], type=_setting,
                   metavar="KEY=VALUE", help="a setting of the job (see `resilience jobs`)")
    r.add_argument("--etcd", default=None, type=_endpoints,
                   help="HOST:PORT of an etcd cluster (default: $RESILIENCE_ETCD, "
                        "else an embedded etcd under the workdir)")
    r.add_argument("--ray", dest="ray_address", default=None, type=_ray_address,
                   help="address of a Ray cluster to join (default: start a local one)")
    r.add_argument("--etcd-timeout", type=_seconds, default=15.0, metavar="SECONDS",
                   help="how long etcd may answer nothing before the run restarts the "
                        "embedded one, or stops with exit code 3 (default 15)")
    r.add_argument("--max-quarantined", type=int, default=100, metavar="N",
                   help="poison records (that make a stage raise) the run may quarantine in "
                        "WORKDIR/quarantine.jsonl before it fails instead (default 100)")
    r.add_argument("--batch-size", type=_positive_int, default=2000,
                   help="records the source reads per step (default 2000)")
    r.add_argument("--balances-stage", choices=["python", "java"], default=None,
                   help="payments: the per-account balance stage in Python or as a Java "
                        "actor (needs a JDK 17; docs/java.md); --set balances_stage=...")
    r.add_argument("--from-savepoint", default=None, metavar="NAME|PATH",
                   help="start from a savepoint (a name under the savepoint dir, or its path)")
    r.add_argument("--savepoint-dir", type=Path, default=None,
                   help="where savepoints live (default: WORKDIR/savepoints)")
    r.add_argument("--no-progress", action="store_true", help="no progress line")
    r.add_argument("--sites", type=Path, default=None, metavar="FILE",
                   help="run as one site of a job on two sites (docs/replication.md): the "
                        "sites file gives each site's workdir, Ray, etcd and link")
    r.add_argument("--site", default=None, metavar="NAME", help="this site's name in --sites")
    r.add_argument("--replication", choices=["sync", "async"], default=None,
                   help="with --sites: sync commits a checkpoint once the standby holds it "
                        "(RPO 0); async commits at once and ships behind (default: the file's)")
    r.add_argument("--on-standby-loss", choices=["fail-closed", "degrade"], default=None,
                   help="sync mode, when the standby stops answering: stop committing "
                        "(fail-closed) or go on and record the loss of RPO 0 (degrade)")

    sub.add_parser("jobs", help="list the registered jobs and their settings")

    s = sub.add_parser("savepoint", help="write a named, self-contained savepoint of a job")
    s.add_argument("job", metavar="JOB", help="job id (e.g. payments)")
    s.add_argument("--name", required=True)
    s.add_argument("--workdir", type=Path, default=None,
                   help="the job's workdir (to find its embedded etcd and store)")
    s.add_argument("--etcd", default=None, type=_endpoints)
    s.add_argument("--timeout", type=_seconds, default=120.0)

    c = sub.add_parser("checkpoints", help="list, show or verify a job's checkpoints")
    c.add_argument("action", choices=["list", "show", "verify"])
    c.add_argument("checkpoint_id", nargs="?", type=int, default=None)
    c.add_argument("--workdir", type=Path, required=True)
    c.add_argument("--job-id", default="payments")
    c.add_argument("--store", default=None, help="store URI (default: WORKDIR/checkpoints)")
    c.add_argument("--etcd", default=None, type=_endpoints)
    c.add_argument("--no-etcd", action="store_true",
                   help="do not consult etcd for which checkpoints are complete")
    c.add_argument("--json", action="store_true", help="print JSON")

    from resilience.cli._models import add_models_parser

    add_models_parser(sub, _endpoints)

    v = sub.add_parser("verify", help="check a job's output for exactly-once")
    v.add_argument("--job", default="payments", help="the job whose output it is "
                   "(default payments)")
    v.add_argument("--input", type=Path, required=True)
    v.add_argument("--workdir", type=Path, required=True)
    v.add_argument("--json", type=Path, default=None, help="also write the verdict as JSON")
    v.add_argument("--reference", type=Path, default=None,
                   help="ledger.sqlite of a crash-free run to compare rows with")

    so = sub.add_parser("switchover", help="hand a job on two sites over to its standby site "
                        "(planned: no loss, no duplicate; also the way to fail back)")
    so.add_argument("job", metavar="JOB", help="job id (e.g. payments)")
    so.add_argument("--sites", type=Path, required=True, metavar="FILE")
    so.add_argument("--to", required=True, metavar="SITE", help="the site that takes over")
    so.add_argument("--expect-primary", default=None, metavar="SITE",
                    help="refuse unless this site is the active one now (two operators "
                         "cannot switch over twice)")
    so.add_argument("--timeout", type=_seconds, default=30.0,
                    help="seconds the handover may take before it rolls back (default 30)")
    st = sub.add_parser("sites", help="which site of a job on two sites leads, its "
                        "replication lag, its takeovers")
    st.add_argument("job", metavar="JOB", help="job id (e.g. payments)")
    st.add_argument("--sites", type=Path, required=True, metavar="FILE")
    st.add_argument("--json", action="store_true", help="print JSON")

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
    """The command line; returns the exit code (see `EXIT_CODES`)."""
    args = _parser().parse_args(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(_dispatch(args))
    except _Terminated:
        print("terminated (SIGTERM); the job resumes from its last checkpoint when rerun",
              file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserError as e:
        return _error(e, 2)
    except InfrastructureError as e:
        return _error(e, 3)
    except (JobFailed, ResilienceError) as e:
        return _error(e, 1)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _error(error: BaseException, code: int) -> int:
    """One line on stderr, whatever the message holds."""
    text = " ".join(str(error).split()) or type(error).__name__
    print(f"error: {text}".encode("utf-8", "backslashreplace").decode("utf-8"),
          file=sys.stderr)
    return code


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        return _run(args)
    if args.command == "jobs":
        return _jobs()
    if args.command == "verify":
        return _verify(args)
    if args.command == "demo":
        return _demo(args)
    if args.command == "savepoint":
        from resilience.cli._admin import savepoint_command

        return savepoint_command(args.job, args.name, workdir=args.workdir, etcd=args.etcd,
                                 timeout_s=args.timeout)
    if args.command == "switchover":
        from resilience.cli._sites import switchover_command

        return switchover_command(args.job, args.sites, to=args.to,
                                  expect_primary=args.expect_primary, timeout_s=args.timeout)
    if args.command == "sites":
        from resilience.cli._sites import sites_status_command

        return sites_status_command(args.job, args.sites, as_json=args.json)
    if args.command == "checkpoints":
        from resilience.cli._admin import checkpoints_command

        return checkpoints_command(args)
    if args.command == "models":
        from resilience.cli._models import models_command

        return models_command(args)
    if args.command in _PLUGIN_HANDLERS:
        return int(_PLUGIN_HANDLERS[args.command](args))
    raise UserError(f"unknown command {args.command}")


def _options(args: argparse.Namespace, job: Any) -> Any:
    from resilience.cli._admin import resolve_savepoint
    from resilience.pipeline import JobOptions

    if args.max_quarantined < 0:
        raise UserError(f"--max-quarantined must be >= 0, got {args.max_quarantined}")
    settings = dict(args.settings)
    if args.balances_stage is not None:
        settings["balances_stage"] = args.balances_stage
    savepoint = None
    if args.from_savepoint:
        savepoint = resolve_savepoint(args.from_savepoint,
                                      args.savepoint_dir or args.workdir / "savepoints",
                                      schema_version=job.schema_version)
    return JobOptions(
        input_path=args.input,
        workdir=args.workdir,
        job_id=args.job_id or job.name,
        parallelism=args.parallelism,
        checkpoint_interval_s=args.checkpoint_interval,
        batch_size=args.batch_size,
        savepoint_dir=args.savepoint_dir,
        from_savepoint=savepoint,
        max_quarantined=args.max_quarantined,
        settings=settings,
    )


def _spans(numbers: list[int]) -> str:
    """[3, 4, 5, 9] -> '3-5, 9'."""
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in spans)


def _summary(result: Any) -> str:
    st = result.status
    if st.get("role") == "standby" and not st.get("restores"):
        replica = st.get("replica") or {}
        return (f"site {st.get('site')} (standby): {st.get('note') or 'stopped'}; it applied "
                f"checkpoints up to {replica.get('applied_through', 0)}")
    start = (st.get("restores") or [{}])[0]
    restores = st.get("restores", [])[1:]
    quarantined = int(st.get("quarantined") or 0)
    origin = (f"from checkpoint {start['from_checkpoint']}" if start.get("from_checkpoint")
              else "from the beginning of the input")
    processing = (st["last_checkpoint"]["at"] - start["started_at"]
                  if st.get("last_checkpoint") and start.get("started_at") else result.elapsed_s)
    # A run that resumed read only the lines after its checkpoint.
    read = max(result.input_lines - max(int(start.get("watermark") or 1) - 1, 0), 0)
    rate = read / processing if processing > 0 else 0.0
    lines = [
        f"job {st['job_id']} finished: {read:,} input lines in "
        f"{processing:.1f}s ({rate:,.0f} lines/s), {result.elapsed_s - processing:.1f}s of "
        "actor start-up",
        f"  started {origin}",
        *(f"    skipped {f}" for f in start.get("fallbacks", [])),
        f"  checkpoints: {st['checkpoints_completed']} completed, "
        f"{st['checkpoints_failed']} failed; fencing epoch {st['fencing_epoch']}",
        f"  restores after failures: {len(restores)}",
    ]
    for r in restores:
        lines.append(f"    from checkpoint {r['from_checkpoint']} in {r['duration_s']:.2f}s: "
                     f"{r['reason'][:120]}")
        lines.extend(f"      skipped {f}" for f in r.get("fallbacks", []))
    for name, model in sorted((st.get("models") or {}).items()):
        bad = model.get("bad") or []
        lines.append(
            f"  model {name}: version {model.get('serving')} serving, "
            f"{model.get('last_good')} last good, {model.get('published', 0)} published; "
            f"{model.get('rollbacks', 0)} rollbacks"
            + (f" (versions {_spans(bad)} marked bad, {model.get('quarantined', 0):,} labels "
               "quarantined)" if bad else ""))
    if quarantined:
        lines.append(f"  poison records quarantined: {quarantined} (see "
                     f"{st.get('quarantine_file', 'WORKDIR/quarantine.jsonl')})")
    lines.extend(f"  note: {n}" for n in result.notes)
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from resilience._runtime._watchdog import Deadlines
    from resilience.cli._run import run_job
    from resilience.pipeline import find_job

    job = find_job(args.job)
    site_run = _site_run(args)
    if args.workdir is None:
        raise UserError("run: give --workdir (or --sites and --site)")
    result = run_job(job, _options(args, job), etcd=args.etcd, ray_address=args.ray_address,
                     show_progress=not args.no_progress,
                     deadlines=Deadlines(etcd_unreachable_s=args.etcd_timeout), **site_run)
    print(_summary(result))
    return 0


def _site_run(args: argparse.Namespace) -> dict[str, Any]:
    """With --sites/--site: this site's workdir, etcd, Ray and replication settings."""
    if args.sites is None and args.site is None:
        for flag in ("replication", "on_standby_loss"):
            if getattr(args, flag) is not None:
                raise UserError(f"--{flag.replace('_', '-')} needs --sites and --site")
        return {}
    if args.sites is None or args.site is None:
        raise UserError("--sites and --site go together")
    from resilience.replication import Sites

    sites = Sites.load(args.sites)
    site = sites.site(args.site)
    if args.workdir is not None and args.workdir.resolve() != site.workdir:
        raise UserError(f"--workdir {args.workdir} is not site {site.name}'s workdir "
                        f"({site.workdir}); leave it out")
    args.workdir = site.workdir
    args.etcd = args.etcd or site.etcd_endpoint
    args.ray_address = args.ray_address or site.ray
    config = sites.config_for(site.name, mode=args.replication,
                              on_standby_loss=args.on_standby_loss)
    return {"replication": config, "lease_ttl_s": sites.lease_ttl_s,
            "ray_temp_dir": site_ray_temp_dir(site.workdir)}


def site_ray_temp_dir(workdir: Path) -> str:
    """A Ray temp dir of this site's own: short (Ray's socket paths must fit 107 bytes)."""
    import hashlib

    return f"/tmp/fr-{hashlib.sha256(str(workdir).encode()).hexdigest()[:10]}"  # noqa: S108


def _jobs() -> int:
    from resilience.pipeline import find_job, known_jobs

    for name in sorted(known_jobs()):
        job = find_job(name)
        print(f"{name}: {job.description}" + ("" if job.needs_input else " (no --input)"))
        for key, meaning in sorted(job.settings.items()):
            print(f"    --set {key}=...  {meaning}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from resilience.pipeline import find_job

    job = find_job(args.job)
    if job.verify is None:
        raise UserError(f"job {job.name} has no verifier")
    verdict = (job.verify(args.input, args.workdir) if args.reference is None
               else job.verify(args.input, args.workdir, reference=args.reference))
    print(verdict.summary())
    if args.json is not None:
        try:
            args.json.write_text(json.dumps(verdict.to_dict(), indent=2) + "\n")
        except OSError as e:
            raise UserError(f"cannot write {args.json}: {e.strerror}") from e
    return 0 if verdict.ok else 1


def _demo(args: argparse.Namespace) -> int:
    from resilience.cli._run import run_job
    from resilience.pipeline import JobOptions, find_job

    job = find_job("payments")  # the reference job, found as any job is
    assert job.generate is not None
    assert job.verify is not None
    root: Path = args.workdir
    input_path = root / f"payments-{args.events}.jsonl"
    job_dir = root / "job"
    if job_dir.exists():
        shutil.rmtree(job_dir)
    root.mkdir(parents=True, exist_ok=True)
    print(f"1/4 generating {args.events:,} transfers into {input_path}")
    if not input_path.exists():
        print(f"    {job.generate(input_path, args.events, 2026)}")
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
    result = run_job(
        job, JobOptions(input_path=input_path, workdir=job_dir, job_id=job.name,
                        parallelism=args.parallelism, checkpoint_interval_s=1.0),
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
    verdict = job.verify(input_path, job_dir)
    print(verdict.summary())
    (job_dir / "verdict.json").write_text(json.dumps(verdict.to_dict(), indent=2))
    print(f"verdict: {'EXACTLY ONCE' if verdict.ok else 'VIOLATED'} "
          f"(details in {job_dir / 'verdict.json'})")
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""`resilience models list|show|history|promote|rollback`: a job's model registry.

Reads and moves go to the registry in etcd (the job's embedded etcd under ``--workdir``, or
``--etcd``). ``promote`` and ``rollback`` are operator moves: fenced by the job's current
epoch, appended to the alias history with who and why, refused with one line (exit 2, nothing
moved) for a version that does not exist, belongs to another model, is marked bad, or whose
weights do not verify against their digest.
"""

from __future__ import annotations

import argparse
import getpass
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from checkpoint import CheckpointStore, store_from_uri
from resilience._errors import ModelRefused, UserError
from resilience._runtime._registry import job_prefix
from resilience.cli._admin import etcd_for
from resilience.models._registry import ModelRegistry

__all__ = ["add_models_parser", "models_command"]


def add_models_parser(sub: Any, endpoints: Any) -> None:
    m = sub.add_parser("models", help="list, show, history, promote or roll back a job's "
                       "model versions")
    m.add_argument("action", choices=["list", "show", "history", "promote", "rollback"])
    m.add_argument("model", nargs="?", default=None, metavar="MODEL",
                   help="the model (all but list)")
    m.add_argument("--to", type=_version, default=None, metavar="VERSION",
                   help="promote: the version to serve (required); rollback: the version "
                        "to go back to (default: last_good)")
    m.add_argument("--why", default=None, help="the reason recorded with the move")
    m.add_argument("--at", default=None, metavar="TIME",
                   help="history: say which version served at TIME (UTC, "
                        "'YYYY-MM-DD HH:MM:SS', or seconds since the epoch)")
    m.add_argument("--workdir", type=Path, default=None,
                   help="the job's workdir (its embedded etcd and its job id)")
    m.add_argument("--etcd", default=None, type=endpoints)
    m.add_argument("--job-id", default=None,
                   help="the job's id in etcd (default: the one WORKDIR ran, else payments)")
    m.add_argument("--json", action="store_true", help="print JSON")


def _version(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a version number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"a version is a positive integer, got {text}")
    return value


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _parse_time(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    for fmt in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S",
                "%Y-%m-%d %H:%M"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    raise UserError(f"--at {text!r}: use 'YYYY-MM-DD HH:MM:SS' (UTC) or seconds since the "
                    "epoch")


def _job_id(args: argparse.Namespace) -> str:
    if args.job_id:
        return str(args.job_id)
    if args.workdir is not None:
        marker = args.workdir / ".resilience" / "job-id"
        if marker.is_file():
            return str(marker.read_text().strip())
        if not args.workdir.is_dir():
            raise UserError(f"workdir {args.workdir} does not exist")
    return "payments"


def _store(client: Any, job_id: str) -> CheckpointStore | None:
    kv = client.get(f"{job_prefix(job_id)}spec")
    if kv is None:
        return None
    return store_from_uri(json.loads(kv.value)["store_uri"], job_id=job_id)


def _known(registry: ModelRegistry, model: str | None) -> str:
    if model is None:
        raise UserError("name the model (resilience models list shows them)")
    models = registry.models()
    if model not in models:
        listed = ", ".join(models) if models else "none"
        raise ModelRefused(f"job {registry.job_id} has no model {model!r} (its models: "
                           f"{listed}); nothing was moved")
    return model


def models_command(args: argparse.Namespace) -> int:
    job_id = _job_id(args)
    if args.action == "promote" and args.to is None:
        raise UserError("promote: give --to VERSION")
    with etcd_for(args.etcd, args.workdir) as client:
        registry = ModelRegistry(client, job_id)
        if args.action == "list":
            return _list(registry, args.json)
        model = _known(registry, args.model)
        if args.action == "show":
            return _show(registry, model, args.json)
        if args.action == "history":
            return _history(registry, model, args.json, args.at)
        return _move(registry, model, args, _store(client, job_id))


def _summary(registry: ModelRegistry, model: str) -> dict[str, Any]:
    aliases = registry.aliases(model)
    versions = registry.versions(model)
    return {"model": model, **{a: r.version for a, r in sorted(aliases.items())},
            "versions": len(versions), "newest": versions[-1].version if versions else None,
            "bad": sorted(registry.bad(model))}


def _list(registry: ModelRegistry, as_json: bool) -> int:
    rows = [_summary(registry, m) for m in registry.models()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"job {registry.job_id} has no model versions")
        return 0
    print(f"{'MODEL':<14} {'SERVING':>8} {'LAST_GOOD':>10} {'CANDIDATE':>10} "
          f"{'VERSIONS':>9} {'BAD':>5}")
    for r in rows:
        print(f"{r['model']:<14} {r.get('serving', '-')!s:>8} {r.get('last_good', '-')!s:>10} "
              f"{r.get('candidate', '-')!s:>10} {r['versions']:>9} {len(r['bad']):>5}")
    return 0


def _show(registry: ModelRegistry, model: str, as_json: bool) -> int:
    aliases = registry.aliases(model)
    bad = registry.bad(model)
    versions = registry.versions(model)
    if as_json:
        print(json.dumps({
            "model": model, "aliases": {a: r.version for a, r in aliases.items()},
            "versions": [{**json.loads(v.to_bytes()), "bad": bad.get(v.version)}
                         for v in versions]}, indent=2))
        return 0
    named: dict[int, list[str]] = {}
    for alias, record in sorted(aliases.items()):
        named.setdefault(record.version, []).append(alias)
    print(f"model {model} of job {registry.job_id}: " + ", ".join(
        f"{a} {r.version}" for a, r in sorted(aliases.items())))
    print(f"{'VERSION':>7} {'PARENT':>6} {'CKPT':>6} {'LABELS':>8} {'LINE':>9} "
          f"{'CREATED (UTC)':<23} {'DIGEST':<19} NOTE")
    for v in versions:
        line = v.position.get("input") if isinstance(v.position, dict) else None
        notes = named.get(v.version, [])
        if v.version in bad:
            notes = [*notes, "BAD: " + str(bad[v.version].get("why", ""))[:60]]
        parent = "-" if v.parent is None else str(v.parent)
        print(f"{v.version:>7} {parent:>6} {v.checkpoint_id:>6} {v.trained_labels:>8} "
              f"{'-' if line is None else str(line):>9} {_when(v.created_at):<23} "
              f"{v.digest[:19]:<19} {', '.join(notes)}")
    return 0


def _history(registry: ModelRegistry, model: str, as_json: bool, at: str | None) -> int:
    moves = registry.history(model)
    if at is not None:
        when = _parse_time(at)
        version = registry.serving_at(model, when)
        if as_json:
            print(json.dumps({"model": model, "at": when, "serving": version}))
        elif version is None:
            print(f"model {model}: nothing served at {_when(when)} (its first move was later)")
        else:
            print(f"model {model}: version {version} served at {_when(when)}")
        return 0
    if as_json:
        print(json.dumps([json.loads(m.to_bytes()) for m in moves], indent=2))
        return 0
    print(f"{'AT (UTC)':<23} {'ALIAS':<9} {'MOVE':>11} {'BY':<16} {'EPOCH':>5} WHY")
    for m in moves:
        move = f"{m.from_version if m.from_version is not None else '-'}->{m.to_version}"
        print(f"{_when(m.at):<23} {m.alias:<9} {move:>11} {m.by[:16]:<16} {m.epoch:>5} "
              f"{m.why[:100]}")
    return 0


def _move(registry: ModelRegistry, model: str, args: argparse.Namespace,
          store: CheckpointStore | None) -> int:
    by = f"operator:{getpass.getuser()}"
    aliases = registry.aliases(model)
    serving = aliases.get("serving")
    if args.action == "promote":
        to = int(args.to)
        why = args.why or f"promoted by {by}"
        move = registry.operator_move(model, "serving", to, why=why, by=by, store=store)
        if "last_good" not in aliases or aliases["last_good"].version != to:
            registry.operator_move(model, "last_good", to, why=why, by=by, store=store)
        print(f"model {model}: version {to} serves and is last_good (move {move.move_id}, "
              f"epoch {move.epoch})")
        return 0
    target = args.to
    if target is None:
        good = aliases.get("last_good")
        if good is None:
            raise ModelRefused(f"model {model} has no last_good version; give --to VERSION")
        target = good.version
    if serving is not None and serving.version == target:
        raise ModelRefused(f"model {model}: version {target} already serves; nothing was "
                           "moved")
    why = args.why or f"rolled back by {by}"
    # The version rolled back from is marked bad when it is newer than the target (moving
    # serving forward is no verdict on the version it leaves).
    mark = ({serving.version: {"why": why}}
            if serving is not None and serving.version > target else None)
    move = registry.operator_move(model, "serving", target, why=why, by=by, store=store,
                                  mark_bad=mark)
    marked = f"; version {serving.version} marked bad" if mark and serving else ""
    print(f"model {model}: version {target} serves (move {move.move_id}, epoch "
          f"{move.epoch}){marked}")
    return 0

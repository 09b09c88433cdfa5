"""Operator commands over checkpoints and savepoints (`resilience checkpoints|savepoint`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from checkpoint import (
    CheckpointError,
    CheckpointStore,
    copy_checkpoint,
    store_from_uri,
    verify_checkpoint,
)
from resilience._errors import UserError
from resilience._runtime._registry import CheckpointRegistry, job_prefix
from resilience._runtime._savepoints import open_savepoint, savepoint_store
from resilience.coordination._client import EtcdClient, EtcdError
from resilience.coordination._embedded import etcd_endpoint

__all__ = ["checkpoints_command", "etcd_for", "resolve_savepoint", "savepoint_command"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def resolve_savepoint(text: str, savepoint_dir: Path, *, schema_version: int) -> Path:
    """The directory of savepoint `text` (a path, or a name under `savepoint_dir`).

    Checks the savepoint is readable and written with the job's state schema:
    raises `UserError` if absent, `IncompatibleState` naming both versions.
    """
    candidates = [Path(text), savepoint_dir / text]
    for path in candidates:
        if (path / "manifests").is_dir():
            open_savepoint(savepoint_store(path.resolve()), schema_version=schema_version)
            return path.resolve()
    raise UserError(f"no savepoint {text!r} (looked in {text} and {savepoint_dir / text})")


@contextlib.contextmanager
def etcd_for(etcd: str | None, workdir: Path | None) -> Iterator[EtcdClient]:
    """A client of `etcd`, or of the embedded etcd of `workdir` (started for the command
    if the job is not running)."""
    if workdir is None and etcd is None:
        import os

        etcd = os.environ.get("RESILIENCE_ETCD") or None
        if etcd is None:
            raise UserError("give --workdir (embedded etcd) or --etcd HOST:PORT")
    with etcd_endpoint(etcd, workdir or Path(".")) as endpoint:
        try:
            client = EtcdClient.connect(endpoint)
        except EtcdError as e:
            raise UserError(str(e)) from e
        with client:
            yield client


def savepoint_command(job: str, name: str, *, workdir: Path | None, etcd: str | None,
                      timeout_s: float) -> int:
    """Write savepoint `name` of `job`: a fresh one if it runs, else from its latest checkpoint."""
    if not _NAME.fullmatch(name):
        raise UserError(f"savepoint name {name!r}: use letters, digits, '.', '_' and '-'")
    with etcd_for(etcd, workdir) as client:
        prefix = job_prefix(job)
        registry = CheckpointRegistry(client, job)
        spec_kv = client.get(f"{prefix}spec")
        if spec_kv is None:
            raise UserError(f"job {job!r} is unknown to etcd at {client.endpoints[0]}")
        spec = json.loads(spec_kv.value)
        state = (registry.state() or {}).get("state")
        answer_key = f"{prefix}savepoints/{name}"
        if state == "running":
            client.delete(answer_key)
            client.put(f"{prefix}requests/savepoint/{name}", b"{}")
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                kv = client.get(answer_key)
                if kv is not None:
                    answer = json.loads(kv.value)
                    if not answer.get("ok"):
                        raise UserError(f"savepoint {name} failed: {answer.get('error')}")
                    print(f"savepoint {name}: checkpoint {answer['checkpoint_id']} of running "
                          f"job {job}, {answer['bytes']:,} bytes, in {answer['path']}")
                    return 0
                time.sleep(0.2)
            client.delete(f"{prefix}requests/savepoint/{name}")
            raise UserError(f"job {job} did not write savepoint {name} within {timeout_s:g}s")
        latest = registry.latest()
        if latest is None:
            raise UserError(f"job {job} has no complete checkpoint to save")
        store = store_from_uri(spec["store_uri"], job_id=job)
        target = savepoint_store(Path(spec["savepoint_dir"]), name)
        manifest = copy_checkpoint(store, latest.checkpoint_id, target, name=name)
        print(f"savepoint {name}: checkpoint {latest.checkpoint_id} of job {job} ({state}), "
              f"{manifest.total_bytes():,} bytes, in {target.describe()}")
        return 0


def _committed(args: argparse.Namespace) -> set[int] | None:
    if args.no_etcd:
        return None
    try:
        with etcd_for(args.etcd, args.workdir) as client:
            return {r.checkpoint_id for r in CheckpointRegistry(client, args.job_id).completed()}
    except (EtcdError, UserError):
        return None


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def checkpoints_command(args: argparse.Namespace) -> int:
    """`resilience checkpoints list|show|verify`."""
    if args.store is None and not args.workdir.is_dir():
        # A store opened on a missing path would create it: say so instead.
        raise UserError(f"workdir {args.workdir} does not exist")
    store: CheckpointStore = store_from_uri(
        args.store or str(args.workdir / "checkpoints"), job_id=args.job_id
    )
    ids = store.list_checkpoints()
    if args.action == "list":
        committed = _committed(args)
        rows: list[dict[str, Any]] = []
        for cid in ids:
            try:
                m = store.get_manifest(cid)
                rows.append({"id": cid, "kind": m.kind, "epoch": m.fencing_epoch,
                             "created": _when(m.created_at), "duration_s": round(m.duration_s, 3),
                             "bytes": m.total_bytes(), "tasks": len(m.tasks),
                             "complete": None if committed is None else cid in committed})
            except CheckpointError as e:
                rows.append({"id": cid, "error": str(e)})
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        print(f"{'id':>6} {'kind':10} {'epoch':>5} {'created (UTC)':19} {'duration':>9} "
              f"{'bytes':>12} {'tasks':>5}  complete")
        for r in rows:
            if "error" in r:
                print(f"{r['id']:>6} CORRUPT: {r['error']}")
                continue
            complete = {None: "?", True: "yes", False: "no (never committed)"}[r["complete"]]
            print(f"{r['id']:>6} {r['kind']:10} {r['epoch']:>5} {r['created']:19} "
                  f"{r['duration_s']:>8.3f}s {r['bytes']:>12,} {r['tasks']:>5}  {complete}")
        if not rows:
            print(f"no checkpoints in {store.describe()}")
        return 0
    if args.action == "show":
        if args.checkpoint_id is None:
            raise UserError("checkpoints show needs a checkpoint id")
        m = store.get_manifest(args.checkpoint_id)
        doc = json.loads(m.to_bytes())
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    targets = [args.checkpoint_id] if args.checkpoint_id is not None else ids
    ok = True
    for cid in targets:
        report = verify_checkpoint(store, cid)
        print(report.summary())
        ok = ok and report.ok
    if not targets:
        print(f"no checkpoints in {store.describe()}")
    return 0 if ok else 1

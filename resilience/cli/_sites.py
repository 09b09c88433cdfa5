"""`resilience switchover` and `resilience sites`: the operator's view of a job on two sites."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from resilience._errors import EtcdError, InfrastructureError, SwitchoverRefused, UserError
from resilience.coordination._client import EtcdClient
from resilience.replication import ReplicationRegistry, Sites

__all__ = ["sites_status_command", "switchover_command"]


def _client(sites: Sites) -> EtcdClient:
    endpoints = [e for s in sites.sites.values() for e in s.etcd]
    if sites.witness_etcd:
        endpoints.insert(0, sites.witness_etcd)
    unique = ",".join(dict.fromkeys(endpoints))
    try:
        return EtcdClient.connect(unique, timeout_s=2.0)
    except EtcdError as e:
        raise InfrastructureError(f"etcd of the sites in {sites.path} does not answer: {e}") from e


def switchover_command(job_id: str, sites_path: Path, *, to: str, expect_primary: str | None,
                       timeout_s: float, wait: bool = True) -> int:
    """Ask the active site to hand the job over to site `to`, and follow it to the end.

    Exit 0 when `to` leads, 1 when the switchover rolled back (the old site still leads)
    or a failover overtook it, 2 when refused (a precondition: nothing moved).
    """
    sites = Sites.load(sites_path)
    sites.site(to)
    if expect_primary is not None:
        sites.site(expect_primary)
    with _client(sites) as client:
        registry = ReplicationRegistry(client, job_id)
        request = registry.request_handover(target=to, expected_primary=expect_primary,
                                            timeout_s=timeout_s)
        print(f"switchover {request.id}: asked site {request.source} to hand job {job_id} "
              f"over to site {to} (deadline {timeout_s:g}s)", file=sys.stderr)
        if not wait:
            return 0
        deadline = time.monotonic() + timeout_s + 15
        seen = request.state
        while time.monotonic() < deadline:
            try:
                current = registry.handover()
            except EtcdError:
                time.sleep(0.2)
                continue
            if current is None or current.id != request.id:
                raise UserError(f"switchover {request.id}: its record was replaced")
            if current.state != seen:
                seen = current.state
                print(f"  {current.state}" + (f": {current.reason}" if current.reason else ""),
                      file=sys.stderr)
            if current.state == "done":
                print(f"site {to} leads job {job_id} (its last checkpoint at site "
                      f"{request.source} was {current.checkpoint_id})")
                return 0
            if current.state == "refused":
                raise SwitchoverRefused(f"switchover refused by site {request.source}: "
                                        f"{current.reason}")
            if current.state in ("rolled_back", "superseded"):
                print(f"switchover {current.state}: {current.reason}", file=sys.stderr)
                return 1
            time.sleep(0.1)
    raise InfrastructureError(f"switchover {request.id}: no outcome within {timeout_s + 15:g}s")


def sites_status_command(job_id: str, sites_path: Path, *, as_json: bool) -> int:
    """Which site leads, how its replication stands, and every takeover so far."""
    sites = Sites.load(sites_path)
    with _client(sites) as client:
        registry = ReplicationRegistry(client, job_id)
        doc: dict[str, Any] = {"job_id": job_id, "active": registry.active_site(),
                               "replication": registry.state(),
                               "handover": None, "takeovers": registry.takeovers()}
        handover = registry.handover()
        if handover is not None:
            doc["handover"] = handover.__dict__
    if as_json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    active = doc["active"] or {}
    state = doc["replication"] or {}
    standby = state.get("standby") or {}
    lag = standby.get("lag") or {}
    print(f"job {job_id}: active site {active.get('site', 'none')} (epoch "
          f"{active.get('epoch', '-')}, {active.get('kind', '-')})")
    if state:
        print(f"  replication {state.get('mode')} to site {state.get('peer')}: "
              f"{state.get('gate')}; standby {'connected' if standby.get('connected') else 'down'}"
              f", acknowledged through checkpoint {standby.get('acked_through', 0)}, lag "
              f"{lag.get('checkpoints')} checkpoints / {lag.get('events')} lines / "
              f"{lag.get('seconds')} s")
    for t in doc["takeovers"]:
        lost = t.get("lost_checkpoints") or []
        print(f"  epoch {t.get('epoch')}: {t.get('kind')} {t.get('from_site')} -> {t.get('site')}"
              f", restored checkpoint {t.get('restored_from')}, lost {len(lost)} checkpoints "
              f"({t.get('lost_events', 0)} lines)")
    if doc["handover"]:
        h = doc["handover"]
        print(f"  switchover {h['id']}: {h['source']} -> {h['target']}: {h['state']}"
              + (f" ({h['reason']})" if h.get("reason") else ""))
    return 0

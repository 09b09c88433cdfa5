"""Disaster recovery end to end: two real Ray clusters, a three-member etcd, the gRPC link.

Each test runs one drill (`chaos._drill.run_drill`): two `resilience run --sites` processes,
each with its own Ray, a three-member etcd (site a, site b, witness), mutual TLS on the
replication link through a proxy, the payments job under load, and a real fault: every
process of site a SIGKILLed, site a cut off while it runs on, or a planned switchover and
failback. The verdicts come from the payments checker (which shares no code with the
job) and from the sites' ledgers read here with plain SQL, not from the drill's own
judgement.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from chaos._drill import DrillOptions, run_drill
from fusion_jobs.payments.checker import verify

pytestmark = [pytest.mark.ray, pytest.mark.etcd]


def _postings(workdir: Path) -> set[tuple[str, str]]:
    with sqlite3.connect(f"file:{workdir / 'ledger.sqlite'}?mode=ro", uri=True) as db:
        return set(db.execute("SELECT event_id, account FROM postings"))


def _commits(workdir: Path) -> list[tuple[int, int, float]]:
    """(checkpoint, fencing epoch, committed at) of every commit the site's ledger made."""
    with sqlite3.connect(f"file:{workdir / 'ledger.sqlite'}?mode=ro", uri=True) as db:
        return list(db.execute("SELECT ckpt, fencing_epoch, committed_at "
                               "FROM _resilience_commits ORDER BY committed_at"))


def _drill(tmp_path: Path, **options: Any) -> tuple[dict[str, Any], Path, Path, Path]:
    report = run_drill(DrillOptions(workdir=tmp_path / "drill", progress=False, **options))
    root = tmp_path / "drill"
    return report, root / f"payments-{report['events']}.jsonl", root / "a", root / "b"


def _takeover_of(report: dict[str, Any], site: str) -> dict[str, Any]:
    return next(e for e in report["epochs"] if e["site"] == site and e["kind"] != "start")


def test_site_a_killed_in_sync_mode_site_b_takes_over_and_nothing_is_lost(
        tmp_path: Path) -> None:
    report, input_path, a, b = _drill(tmp_path, mode="sync", fault="site-kill", events=150_000)
    assert report["active_site"] == "b"
    verdict = verify(input_path, b)
    assert verdict.ok, verdict.summary()
    # RPO 0: every posting site a had committed when it died is in site b's ledger.
    lost = _postings(a) - _postings(b)
    assert not lost, f"{len(lost)} postings committed at site a are missing at site b"
    takeover = _takeover_of(report, "b")
    assert takeover["kind"] == "failover"
    assert takeover["epoch"] > 1
    # The new reign commits from the restored checkpoint on (that one itself, when site a
    # died between its commit and shipping it), and then new ones.
    new_reign = [c[0] for c in _commits(b) if c[1] == takeover["epoch"]]
    assert min(new_reign) >= takeover["restored_from"]
    assert max(new_reign) > takeover["restored_from"]
    assert report["fingerprints"]["sink_match"]
    assert report["fingerprints"]["state_match"]
    # The RTO's parts follow one another: detection (fault to election), restore, first
    # commit; none is negative and together they do not exceed the whole.
    split = report["rto_split"]
    assert min(split.values()) >= 0, split
    assert sum(split.values()) <= report["rto_seconds"] + 0.05, (split, report["rto_seconds"])
    assert report["passed"], report["failures"]


def test_a_partitioned_site_runs_on_but_commits_nothing_after_the_new_epoch(
        tmp_path: Path) -> None:
    report, input_path, a, b = _drill(tmp_path, mode="sync", fault="partition",
                                      events=150_000, partition_s=6.0)
    takeover = _takeover_of(report, "b")
    # Site a's processes were never stopped: after site b was elected, nothing of site a's
    # old reign may become visible.
    late = [c for c in _commits(a) if c[1] < takeover["epoch"] and c[2] > takeover["at"]]
    assert not late, f"site a committed {late} after epoch {takeover['epoch']} began"
    assert not (_postings(a) - _postings(b))
    verdict = verify(input_path, b)
    assert verdict.ok, verdict.summary()
    assert report["passed"], report["failures"]


def test_a_switchover_and_a_failback_lose_nothing_and_duplicate_nothing(
        tmp_path: Path) -> None:
    report, input_path, a, b = _drill(tmp_path, mode="sync", fault="switchover",
                                      failback=True, events=350_000)
    kinds = [(e["site"], e["kind"]) for e in report["epochs"] if e["kind"] != "start"]
    assert ("b", "switchover") in kinds, kinds
    assert ("a", "switchover") in kinds, kinds
    assert report["active_site"] == "a"
    # Both sites end complete: the active one, and the standby that received everything.
    for site in (a, b):
        verdict = verify(input_path, site)
        assert verdict.ok, f"{site.name}: {verdict.summary()}"
    assert _postings(a) == _postings(b)
    assert report["rpo_events"] == 0
    assert report["duplicates"] == 0
    assert report["passed"], report["failures"]

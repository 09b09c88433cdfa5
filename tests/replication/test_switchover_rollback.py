"""A switchover that cannot finish rolls back: the old primary leads on and loses nothing.

Two real sites (`chaos.LocalSites`: two Ray clusters, a three-member etcd, mutual TLS
through a proxy on each link) run the payments job in sync mode. Once site a commits,
the link to site b is cut and an operator asks for a switchover to b with a 4 s
deadline, through the real CLI: the drain's last checkpoint can never be acknowledged,
so the handover must roll back, say so (exit 1), and site a must go on leading. The
link heals, b catches up, the job finishes. Verdicts come from the payments checker and
from plain SQL over both ledgers.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from chaos import LocalSites
from fusion_jobs.payments.checker import verify
from fusion_jobs.payments.generator import generate
from resilience.replication import Sites

# ~80-100 s: in `make soak`, to keep `make test` well under 30 minutes on 2 cores.
pytestmark = [pytest.mark.ray, pytest.mark.etcd, pytest.mark.slow]

EVENTS = 150_000


def _listening(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def _commits(workdir: Path) -> list[tuple[int, int]]:
    """(checkpoint, fencing epoch) of every commit a site's ledger made, in order."""
    path = workdir / "ledger.sqlite"
    if not path.exists():
        return []
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return list(db.execute("SELECT ckpt, fencing_epoch FROM _resilience_commits "
                                   "ORDER BY committed_at"))
    except sqlite3.OperationalError:  # not created yet
        return []


def _postings(workdir: Path) -> set[tuple[str, str]]:
    with sqlite3.connect(f"file:{workdir / 'ledger.sqlite'}?mode=ro", uri=True) as db:
        return set(db.execute("SELECT event_id, account FROM postings"))


def test_a_switchover_that_cannot_finish_rolls_back_and_the_old_site_leads_on(
        tmp_path: Path) -> None:
    input_path = tmp_path / "payments.jsonl"
    generate(input_path, events=EVENTS, accounts=2_000, seed=11)
    topology = LocalSites(tmp_path / "sites", 2, "sync", "fail-closed")
    sites = Sites.load(topology.sites_file)
    job_id = f"rollback-{uuid.uuid4().hex[:8]}"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in ("b", "a"):  # the standby first
            env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
            env["RAY_AUTH_TOKEN"] = hashlib.sha256(f"{job_id}/{name}".encode()).hexdigest()
            log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "resilience.cli", "run", "payments",
                 "--input", str(input_path), "--sites", str(topology.sites_file),
                 "--site", name, "--job-id", job_id, "--replication", "sync",
                 "--checkpoint-interval", "0.5", "--no-progress"],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            deadline = time.monotonic() + 180
            while name == "b" and not _listening(sites.site("b").listen):
                assert procs["b"].poll() is None, (tmp_path / "b.log").read_text()
                assert time.monotonic() < deadline, "site b's receiver never listened"
                time.sleep(0.2)
        a, b = sites.site("a").workdir, sites.site("b").workdir
        deadline = time.monotonic() + 180
        while len(_commits(a)) < 2:
            assert procs["a"].poll() is None, (tmp_path / "a.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "site a never committed"
            time.sleep(0.2)

        topology.proxies["b"].blackhole()
        started = time.monotonic()
        switchover = subprocess.run(
            [sys.executable, "-m", "resilience.cli", "switchover", job_id,
             "--sites", str(topology.sites_file), "--to", "b", "--expect-primary", "a",
             "--timeout", "4"],
            capture_output=True, text=True, timeout=120, check=False)
        took = time.monotonic() - started
        assert switchover.returncode == 1, switchover.stderr
        assert "rolled_back" in switchover.stderr, switchover.stderr
        assert took < 4 + 15, took
        committed_at_rollback = len(_commits(a))
        topology.proxies["b"].heal()

        for name, proc in procs.items():
            assert proc.wait(timeout=600) == 0, \
                (tmp_path / f"{name}.log").read_text()[-3000:]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        topology.stop()

    # Site a led throughout: one reign, no takeover by b, and it went on committing
    # after the rollback.
    commits = _commits(a)
    assert len({epoch for _, epoch in commits}) == 1, commits
    assert len(commits) > committed_at_rollback
    assert not any(epoch > commits[0][1] for _, epoch in _commits(b))
    verdict = verify(input_path, a)
    assert verdict.ok, verdict.summary()
    # The standby caught up after the link healed: it holds every posting of site a.
    assert _postings(a) == _postings(b)
    verdict = verify(input_path, b)
    assert verdict.ok, f"standby: {verdict.summary()}"

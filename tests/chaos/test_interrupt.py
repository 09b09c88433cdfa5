"""Ctrl-C in the middle of a chaos run: every fault is healed, the journal says so.

A real `resilience chaos run` process (its own etcd and Ray) pauses the coordinator
with SIGSTOP for two minutes; the test sends SIGINT as soon as the journal shows the
fault, and the process must resume the paused coordinator before it exits.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from resilience.testing import process_state, wait_until

pytestmark = [pytest.mark.ray, pytest.mark.etcd]

SCENARIO = """\
title: A coordinator paused for two minutes, interrupted
job: {kind: payments, events: 200000, accounts: 500, parallelism: 1, checkpoint_interval: 0.5}
method:
  - {fault: pause, target: coordinator, at: {lines: 20000}, duration: 120}
invariants: [exactly_once]
"""


def _journal(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip().endswith("}")]


def test_ctrl_c_heals_every_injected_fault(tmp_path: Path) -> None:
    scenario = tmp_path / "pause.yaml"
    scenario.write_text(SCENARIO)
    workdir = tmp_path / "run"
    journal = workdir / "journal.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "resilience.cli", "chaos", "run", str(scenario), "--quiet",
         "--workdir", str(workdir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_until(lambda: any(e["kind"] == "fault" for e in _journal(journal))
                   or proc.poll() is not None, timeout_s=180,
                   message="the pause was never injected")
        assert proc.poll() is None, proc.communicate()[0]
        fault = next(e for e in _journal(journal) if e["kind"] == "fault")
        pid = int(str(fault["message"]).split()[-1])
        assert process_state(pid) == "T"  # really stopped
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    kinds = [(e["kind"], str(e["message"])) for e in _journal(journal)]
    assert ("abort", "interrupted (Ctrl-C)") in kinds
    assert ("heal", "healed pause on coordinator (rollback)") in kinds
    assert process_state(pid) != "T", f"coordinator {pid} left stopped"

"""What the job stands on fails under a running `resilience run`: never a hang.

Each test runs the real command in a subprocess (its own embedded etcd and local Ray,
as a user gets them), kills or stops a real process once the job has committed, and
requires either an automatic recovery with an exact ledger (the independent checker)
or a non-zero exit within a bounded time with one line naming the cause, after which
a rerun is exact.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fusion_jobs.payments.checker import verify
from fusion_jobs.payments.generator import generate
from resilience.testing import embedded_etcd, process_state, wait_until

pytestmark = [pytest.mark.ray, pytest.mark.etcd]

EVENTS = 150_000
RUN_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def big_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("input") / "payments.jsonl"
    generate(path, events=EVENTS, accounts=2_000, seed=77)
    return path


def _command(input_path: Path, workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "resilience.cli", "run", "payments", "--input",
            str(input_path), "--workdir", str(workdir), "--no-progress", *extra]


def _start(input_path: Path, workdir: Path, *extra: str,
           env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(_command(input_path, workdir, *extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def _finish(proc: subprocess.Popen[str], timeout_s: float = RUN_TIMEOUT_S) -> tuple[int, str,
                                                                                    str]:
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the run hung for {timeout_s} s:\n{out[-2000:]}\n{err[-2000:]}")
    return proc.returncode, out, err


def _committed(workdir: Path) -> int:
    """The ledger's committed source watermark (0 before the first commit)."""
    try:
        with sqlite3.connect(f"file:{workdir / 'ledger.sqlite'}?mode=ro", uri=True,
                             timeout=1) as db:
            row = db.execute("SELECT max(watermark) FROM _resilience_sinks").fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0] or 0)


def _mid_run(proc: subprocess.Popen[str], workdir: Path) -> None:
    """Wait until the job has committed something and is still far from its end."""
    wait_until(lambda: _committed(workdir) > 0 or proc.poll() is not None, timeout_s=120,
               message="the job committed nothing")
    assert proc.poll() is None, "the job ended before the fault"
    assert _committed(workdir) < EVENTS // 2, "the fault would land too late to matter"


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(
            "utf-8", "replace")
    except OSError:
        return ""


def _find(root: int, match: Callable[[str], bool], depth: int = 3) -> int:
    """A descendant of `root` whose command line matches."""
    frontier = [root]
    for _ in range(depth):
        frontier = [child for pid in frontier for child in _children(pid)]
        for pid in frontier:
            if match(_cmdline(pid)):
                return pid
    raise AssertionError(f"no matching process under {root}")


def _etcd_pid(workdir: Path) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and f"{workdir}/.resilience/etcd/data" in _cmdline(
                int(entry.name)):
            return int(entry.name)
    raise AssertionError("the run's etcd was not found")


def _assert_exact(input_path: Path, workdir: Path) -> None:
    verdict = verify(input_path, workdir)
    assert verdict.ok, verdict.summary()


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "no message at all"
    assert "Traceback" not in err, err[-3000:]
    return lines[-1]


def test_a_killed_embedded_etcd_is_restarted_and_the_ledger_is_exact(
        big_input: Path, tmp_path: Path) -> None:
    proc = _start(big_input, tmp_path)
    _mid_run(proc, tmp_path)
    os.kill(_etcd_pid(tmp_path), signal.SIGKILL)
    code, out, err = _finish(proc)
    assert code == 0, err[-3000:]
    assert "the embedded etcd exited (killed by signal 9); restarting" in out + err
    _assert_exact(big_input, tmp_path)


def test_a_paused_embedded_etcd_is_replaced_after_its_timeout(
        big_input: Path, tmp_path: Path) -> None:
    proc = _start(big_input, tmp_path, "--etcd-timeout", "4")
    _mid_run(proc, tmp_path)
    pid = _etcd_pid(tmp_path)
    os.kill(pid, signal.SIGSTOP)
    code, out, err = _finish(proc)
    assert code == 0, err[-3000:]
    assert "etcd has not answered for" in out + err
    assert process_state(pid) is None, "the stopped etcd was left behind"
    _assert_exact(big_input, tmp_path)


def test_losing_an_external_etcd_ends_the_run_in_seconds_and_a_rerun_is_exact(
        big_input: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    with embedded_etcd(tmp_path) as etcd:
        proc = _start(big_input, workdir, "--etcd", etcd.endpoint, "--etcd-timeout", "4")
        _mid_run(proc, workdir)
        etcd.kill()
        lost_at = time.monotonic()
        code, _, err = _finish(proc, timeout_s=90)
        took = time.monotonic() - lost_at
        assert code == 3, err[-3000:]
        line = _one_line_error(err)
        assert line.startswith("error: job payments stopped: etcd has not answered for"), line
        assert took < 60, f"noticed only after {took:.0f} s"
        etcd.restart()  # the same member, its data intact
        code, _, err = _finish(_start(big_input, workdir, "--etcd", etcd.endpoint))
        assert code == 0, err[-3000:]
    _assert_exact(big_input, workdir)


@pytest.mark.parametrize("victim", ["raylet", "agent"])
def test_a_dead_local_ray_node_is_restarted_and_the_ledger_is_exact(
        big_input: Path, tmp_path: Path, victim: str) -> None:
    proc = _start(big_input, tmp_path)
    _mid_run(proc, tmp_path)
    raylet = _find(proc.pid, lambda cmd: "raylet/raylet" in cmd)
    # Ray's per-node agents fate-share with the raylet: killing one takes the node down.
    pid = raylet if victim == "raylet" else _find(
        raylet, lambda cmd: "runtime_env/agent" in cmd or "RuntimeEnvAgent" in cmd
        or "dashboard/agent" in cmd, depth=1)
    os.kill(pid, signal.SIGKILL)
    code, out, err = _finish(proc)
    assert code == 0, err[-3000:]
    assert "restarting the local Ray" in out + err
    _assert_exact(big_input, tmp_path)


def test_a_second_run_on_a_busy_workdir_is_refused_at_once(
        big_input: Path, tmp_path: Path) -> None:
    first = _start(big_input, tmp_path)
    _mid_run(first, tmp_path)
    t0 = time.monotonic()
    code, _, err = _finish(_start(big_input, tmp_path), timeout_s=60)
    assert code == 2
    assert time.monotonic() - t0 < 30
    line = _one_line_error(err)
    assert f"is in use by another run (pid {first.pid}" in line, line
    code, _, err = _finish(first)
    assert code == 0, err[-3000:]
    _assert_exact(big_input, tmp_path)


def test_sigterm_stops_cleanly_and_a_rerun_resumes_exactly(
        big_input: Path, tmp_path: Path) -> None:
    proc = _start(big_input, tmp_path)
    _mid_run(proc, tmp_path)
    etcd = _etcd_pid(tmp_path)
    proc.send_signal(signal.SIGTERM)
    code, out, err = _finish(proc, timeout_s=60)
    assert code == 143
    assert _one_line_error(err).startswith("terminated (SIGTERM)")
    assert "SIGTERM received" not in out + err  # Ray's crash dump
    wait_until(lambda: process_state(etcd) in (None, "Z"), timeout_s=10,
               message="the embedded etcd outlived the run")
    code, out, err = _finish(_start(big_input, tmp_path))
    assert code == 0, err[-3000:]
    assert "started from checkpoint" in out
    _assert_exact(big_input, tmp_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_ray_address_is_one_line_at_once(big_input: Path,
                                                        tmp_path: Path) -> None:
    t0 = time.monotonic()
    code, _, err = _finish(_start(big_input, tmp_path, "--ray", f"127.0.0.1:{_free_port()}"),
                           timeout_s=60)
    assert code == 3
    assert time.monotonic() - t0 < 30
    assert "no Ray cluster answers at 127.0.0.1:" in _one_line_error(err)


def test_a_ray_head_that_refuses_the_token_is_one_line_at_once(
        big_input: Path, tmp_path: Path, ray_local: str) -> None:
    t0 = time.monotonic()
    code, _, err = _finish(_start(big_input, tmp_path, "--ray", ray_local,
                                  env={"RAY_AUTH_TOKEN": "not-the-token"}), timeout_s=60)
    assert code == 3
    assert time.monotonic() - t0 < 30
    assert "refused this driver's auth token" in _one_line_error(err)


def test_another_input_on_a_used_workdir_is_refused_and_a_grown_one_resumed(
        big_input: Path, tmp_path: Path) -> None:
    small = tmp_path / "small.jsonl"
    generate(small, events=2_000, accounts=50, seed=3)
    workdir = tmp_path / "work"
    code, _, err = _finish(_start(small, workdir))
    assert code == 0, err[-3000:]
    other = tmp_path / "other.jsonl"
    generate(other, events=3_000, accounts=50, seed=4)  # another file, longer
    code, _, err = _finish(_start(other, workdir), timeout_s=60)
    assert code == 2
    line = _one_line_error(err)
    assert "is not the job's input" in line
    assert str(small) in line
    grown = tmp_path / "grown.jsonl"
    tail = tmp_path / "tail.jsonl"
    generate(tail, events=1_000, accounts=50, seed=5)
    grown.write_bytes(small.read_bytes() + tail.read_bytes().replace(b'"tx-', b'"more-'))
    code, out, err = _finish(_start(grown, workdir))
    assert code == 0, err[-3000:]
    assert "started from checkpoint" in out
    _assert_exact(grown, workdir)


def test_a_run_joins_an_existing_ray_cluster(tmp_path: Path, ray_local: str) -> None:
    """--ray ADDRESS with the cluster's token: the job runs there and is exact."""
    small = tmp_path / "small.jsonl"
    generate(small, events=5_000, accounts=50, seed=8)
    code, out, err = _finish(_start(small, tmp_path / "w", "--ray", ray_local,
                                    "--job-id", f"joined-{time.time_ns()}"), timeout_s=180)
    assert code == 0, err[-3000:]
    assert "finished" in out
    _assert_exact(small, tmp_path / "w")

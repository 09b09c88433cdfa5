"""Throughput of the payments job with sync and async replication, against none, side by side.

    .venv/bin/python bench/replication.py [--events N] [--rounds R]

Each round runs, in turn, the same job on the same input: on one site without
replication (`resilience run payments`), then on two sites with `--replication sync`,
then with `--replication async` (`LocalSites`: two Ray clusters, a three-member etcd
with a witness, mutual TLS through a proxy). The figure is the active site's own
processing rate, printed by the job when it ends ("N input lines in S s"), which leaves
actor start-up out. The median over the rounds is reported, with the ratios to no
replication measured in the same invocation.

It also counts, from /proc, the CPU seconds each part of a run used: site a (its Ray and
job), site b (the standby: its Ray, receiver and idle pipeline), the etcd members, and
this process (the link's proxies). Runs are whole, start-up included.

On this machine both sites share the same cores: the standby's receiver (and its idle
pipeline) take CPU from the active site, which a real deployment, with the standby in
another datacenter, does not pay.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _common import ROOT, SessionCpu, machine, median

from chaos import LocalSites
from fusion_jobs.payments.generator import generate
from resilience.replication import Sites

_FINISHED = re.compile(r"([\d,]+) input lines in ([\d.]+)s")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "resilience.cli", "run", "payments", *args,
            "--checkpoint-interval", "0.5", "--parallelism", "2", "--no-progress"]


def _rate(log: str) -> float:
    match = _FINISHED.search(log)
    if match is None:
        raise RuntimeError(f"no finish line in:\n{log[-2000:]}")
    return int(match.group(1).replace(",", "")) / float(match.group(2))


def _env(token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_TOKEN"] = token
    return env


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one_site(input_path: Path, workdir: Path) -> tuple[float, dict[str, float]]:
    """(lines/s, CPU seconds by part) of one run without replication."""
    with SessionCpu() as cpu:
        proc = subprocess.Popen(_cli("--input", str(input_path), "--workdir", str(workdir)),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=_env(uuid.uuid4().hex), start_new_session=True)
        cpu.watch("site a", proc.pid)
        cpu.watch_children("etcd", proc.pid)
        out, _ = proc.communicate(timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"the run failed ({proc.returncode}): {out[-2000:]}")
    return _rate(out), cpu.totals()


def _listening(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def two_sites(input_path: Path, root: Path, mode: str) -> tuple[float, dict[str, float]]:
    """(lines/s of site a, CPU seconds by part) of one run with replication `mode`."""
    cpu = SessionCpu().__enter__()
    cpu.watch_children("etcd", os.getpid())
    own = _self_cpu()
    topology = LocalSites(root, 2, mode, "fail-closed")
    sites = Sites.load(topology.sites_file)
    job_id = f"bench-{uuid.uuid4().hex[:8]}"
    procs: dict[str, subprocess.Popen[str]] = {}
    logs = {name: root / f"{name}.log" for name in ("a", "b")}
    try:
        for name in ("b", "a"):  # the standby first: the primary ships to it from the start
            procs[name] = subprocess.Popen(
                _cli("--input", str(input_path), "--sites", str(topology.sites_file),
                     "--site", name, "--job-id", job_id, "--replication", mode),
                stdout=open(logs[name], "w"), stderr=subprocess.STDOUT, text=True,  # noqa: SIM115
                env=_env(f"{job_id}-{name}"), start_new_session=True)
            cpu.watch(f"site {name}", procs[name].pid)
            if name == "b":
                deadline = time.monotonic() + 180
                while not _listening(sites.site("b").listen):
                    if time.monotonic() > deadline or procs["b"].poll() is not None:
                        raise RuntimeError(f"site b did not come up: {logs['b'].read_text()}")
                    time.sleep(0.2)
        for name, proc in procs.items():
            if proc.wait(timeout=1800) != 0:
                raise RuntimeError(f"site {name} failed: {logs[name].read_text()[-2000:]}")
        cpu.__exit__(None, None, None)
        return _rate(logs["a"].read_text()), {
            **cpu.totals(), "bench (link proxies)": round(_self_cpu() - own, 2)}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        topology.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-repl-"))
    input_path = scratch / "payments.jsonl"
    generate(input_path, events=args.events, accounts=2_000, seed=7)
    rates: dict[str, list[float]] = {"none": [], "sync": [], "async": []}
    cpu: dict[str, list[dict[str, float]]] = {"none": [], "sync": [], "async": []}
    print(f"machine: {machine()}; {args.events:,} events, P=2, checkpoint every 0.5 s, "
          f"{args.rounds} rounds interleaved", flush=True)

    def show(r: int, mode: str) -> None:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(cpu[mode][-1].items()))
        print(f"  round {r + 1}: {mode:5} {rates[mode][-1]:9,.0f} lines/s   "
              f"CPU s: {parts}", flush=True)

    for r in range(args.rounds):
        for mode in ("none", "sync", "async"):
            rate, used = (one_site(input_path, scratch / f"none-{r}") if mode == "none"
                          else two_sites(input_path, scratch / f"{mode}-{r}", mode))
            rates[mode].append(rate)
            cpu[mode].append(used)
            show(r, mode)
    result: dict[str, Any] = {"machine": machine(), "events": args.events,
                              "rounds": args.rounds, "rates": rates, "cpu_seconds": cpu}
    base = median(rates["none"])
    for mode in ("none", "sync", "async"):
        m = median(rates[mode])
        result[f"{mode}_median"] = round(m, 1)
        result[f"{mode}_vs_none"] = round(m / base, 3)
        print(f"{mode:5}: median {m:9,.0f} lines/s  = {m / base:.2f}x no replication "
              f"(runs: {', '.join(f'{x:,.0f}' for x in rates[mode])})")
    print("CPU seconds per run, median by part (whole runs, start-up included; the standby "
          "and the etcd members share this machine's cores with the active site):")
    for mode in ("none", "sync", "async"):
        labels = sorted({k for run in cpu[mode] for k in run})
        parts = ", ".join(f"{k} {median([run.get(k, 0.0) for run in cpu[mode]]):.1f}"
                          for k in labels)
        print(f"  {mode:5}: {parts}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())

"""Shared helpers of the benchmark scripts: one etcd and one Ray for a whole script."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resilience import EmbeddedEtcd
from resilience import ray_session


def machine() -> str:
    return (f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
            f"Python {platform.python_version()}")


@contextlib.contextmanager
def runtime(workdir: Path | None = None) -> Iterator[tuple[str, Path]]:
    """An embedded etcd and a local Ray; yields (etcd endpoint, scratch dir)."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        etcd = stack.enter_context(EmbeddedEtcd(workdir / "etcd"))
        stack.enter_context(ray_session(num_cpus=os.cpu_count()))
        yield etcd.endpoint, workdir


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def now() -> float:
    return time.monotonic()


def fmt(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


class SessionCpu:
    """CPU seconds (user + system) used by the processes of some sessions, from /proc.

    `watch(label, sid)` counts every process whose session is `sid` under `label` (a
    process started with `start_new_session=True` leads a session holding everything it
    starts, Ray's head and workers included); `watch_children(label, pid)` counts the
    other children of `pid` and their sessions (etcd members lead sessions of their
    own), unless their session is watched already. A thread samples /proc every `interval_s`
    and keeps each process's last figure, so one that exits between two samples loses
    at most that interval; children's times (cutime) are left out, as they are counted
    from their own samples.
    """

    def __init__(self, interval_s: float = 0.25) -> None:
        import threading

        self.interval_s = interval_s
        self._labels: dict[int, str] = {}
        self._parents: dict[int, str] = {}
        self._seen: dict[int, tuple[str, float]] = {}
        self._tick = os.sysconf("SC_CLK_TCK")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="session-cpu", daemon=True)

    def watch(self, label: str, sid: int) -> None:
        with self._lock:
            self._labels[sid] = label

    def watch_children(self, label: str, pid: int) -> None:
        with self._lock:
            self._parents[pid] = label

    def __enter__(self) -> SessionCpu:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        procs: dict[int, tuple[int, int, float]] = {}  # pid -> (parent, session, cpu s)
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read().decode(errors="replace")
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            procs[int(entry.name)] = (int(fields[1]), int(fields[3]),
                                      (int(fields[11]) + int(fields[12])) / self._tick)
        with self._lock:
            for ppid, sid, _ in procs.values():
                if sid not in self._labels and ppid in self._parents:
                    self._labels[sid] = self._parents[ppid]
            labels = dict(self._labels)
        for pid, (_, sid, cpu) in procs.items():
            label = labels.get(sid)
            if label is not None:
                self._seen[pid] = (label, cpu)

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = dict.fromkeys(self._labels.values(), 0.0)
        for label, cpu in self._seen.values():
            out[label] = out.get(label, 0.0) + cpu
        return {k: round(v, 2) for k, v in out.items()}

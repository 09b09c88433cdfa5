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

from resilience._embedded_etcd import EmbeddedEtcd
from resilience._ray import ray_session


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

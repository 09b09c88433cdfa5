"""Test kit for users' own tests: a real etcd and a condition-waiting helper.

Nothing here imports pytest, so the module can be used from any test runner:

    from resilience.testing import embedded_etcd, wait_until

    def test_my_job(tmp_path):
        with embedded_etcd(tmp_path) as etcd:
            client = EtcdClient(etcd.endpoint)
            ...
            wait_until(lambda: job.committed() >= 10, timeout_s=5)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from resilience.coordination._embedded import EmbeddedEtcd, EmbeddedEtcdCluster

__all__ = ["embedded_etcd", "embedded_etcd_cluster", "process_state", "wait_until"]


@contextlib.contextmanager
def embedded_etcd(tmp_path: Path | str) -> Iterator[EmbeddedEtcd]:
    """A real single-node etcd under `tmp_path/etcd`, stopped (no orphan) at exit."""
    with EmbeddedEtcd(Path(tmp_path) / "etcd") as server:
        yield server


@contextlib.contextmanager
def embedded_etcd_cluster(tmp_path: Path | str, members: int = 3) -> Iterator[EmbeddedEtcdCluster]:
    """A real `members`-member etcd cluster under `tmp_path/etcd-cluster`, stopped at exit."""
    with EmbeddedEtcdCluster(Path(tmp_path) / "etcd-cluster", members) as cluster:
        yield cluster


def wait_until(
    condition: Callable[[], object],
    timeout_s: float,
    *,
    interval_s: float = 0.02,
    message: str | None = None,
) -> None:
    """Poll `condition` until it returns something truthy; raise `TimeoutError` after `timeout_s`.

    Use instead of a bare sleep standing in for a condition.
    """
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(message or f"condition not met within {timeout_s:g} s")
        time.sleep(interval_s)


def process_state(pid: int) -> str | None:
    """The Linux state letter of process `pid` (``R``, ``S``, ``T`` stopped, ``Z`` zombie
    ...), or None when there is no such process. For tests that stop and kill processes."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name, in parentheses, may itself hold spaces and parentheses.
    return stat.rsplit(")", 1)[1].split()[0]

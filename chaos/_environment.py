"""The job under test and everything around it that faults act on (`Environment`).

It starts what a scenario needs (an embedded etcd, a 3-member cluster behind proxies, a
local Ray or a two-node cluster), the job through its adapter (`chaos._jobs`), and reads
the job's state through public APIs only: the leader through `LeaderElection`, complete
checkpoints through `CheckpointRegistry`, the sink's progress through
`SQLiteTwoPhaseSink.read_progress`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import chaos._broken  # noqa: F401 - harness-only job kinds (deliberately broken builds)
from chaos._jobs import adapter_for
from chaos._scenario import Scenario
from resilience import (
    CheckpointRegistry,
    EmbeddedEtcd,
    EmbeddedEtcdCluster,
    EtcdClient,
    LeaderElection,
    PipelineRunner,
    ray_session,
)
from resilience.pipeline import SQLiteTwoPhaseSink
from resilience.testing import process_state

__all__ = ["ChaosEnvironment", "RunOptions"]

# How long a pid query waits before the pid the process reported last is used instead.
_PID_QUICK_S = 2.0


@dataclasses.dataclass
class RunOptions:
    """How to run a scenario (the scenario says what)."""

    seed: int = 0
    workdir: Path | None = None
    input_file: Path | None = None
    json_path: Path | None = None
    html_path: Path | None = None
    progress: bool = True
    etcd: str | None = None  # an etcd to use instead of starting one (tests)
    replay: str = ""


class ChaosEnvironment:
    """The job under test and everything around it that faults can act on."""

    def __init__(self, scenario: Scenario, workdir: Path, opts: RunOptions) -> None:
        self.scenario = scenario
        self.workdir = workdir
        self.opts = opts
        self.job_id = f"chaos-{int(time.time() * 1000) % 10**9}"
        self.needs = scenario.needs()
        self.runner: Any = None
        self.etcd_endpoint = ""
        self.input_file = opts.input_file or workdir / "input.jsonl"
        self.adapter = adapter_for(scenario.job.kind)
        self._stack = contextlib.ExitStack()
        self._etcd: Any = None
        self._proxies: dict[str, Any] = {}
        self._cluster: Any = None
        self._nodes: dict[int, Any] = {}
        self._client: EtcdClient | None = None
        # The pid each process last reported (see `_pid`).
        self._pids: dict[tuple[str, str], int] = {}
        self._no_helper: set[tuple[str, str]] = set()

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        job = self.scenario.job
        if self.opts.input_file is None and self.adapter.write_input is not None:
            self.adapter.write_input(job, self.input_file)
        self._start_etcd()
        self._start_ray()
        self._client = self._stack.enter_context(EtcdClient(self.etcd_endpoint, timeout_s=3))
        spec = self._spec()
        self.runner = PipelineRunner(spec, self.etcd_endpoint)
        self.runner.start()

    def _start_etcd(self) -> None:
        if "etcd_cluster" in self.needs:
            self._etcd = self._stack.enter_context(
                EmbeddedEtcdCluster(self.workdir / "etcd-cluster", 3))
            upstream = self._etcd.endpoints[0]
            endpoint = self._etcd.endpoint
        elif self.opts.etcd and "etcd_proxy" not in self.needs:
            upstream = endpoint = self.opts.etcd
        else:
            self._etcd = self._stack.enter_context(EmbeddedEtcd(self.workdir / "etcd"))
            upstream = endpoint = self._etcd.endpoint
        if "etcd_proxy" in self.needs:
            from chaos.proxy import ChaosProxy

            proxy = ChaosProxy(upstream, name="etcd")
            proxy.start()
            self._stack.callback(proxy.stop)
            self._proxies["etcd"] = proxy
            endpoint = proxy.endpoint
        self.etcd_endpoint = endpoint

    def _start_ray(self) -> None:
        if "nodes" not in self.needs:
            self._stack.enter_context(ray_session())
            return
        import ray
        from ray.cluster_utils import Cluster

        if ray.is_initialized():
            raise RuntimeError("a node-loss scenario starts its own Ray cluster: run it in a "
                               "process without Ray (e.g. `resilience chaos run`)")
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 2, "node_ip_address": "127.0.0.1", "include_dashboard": False})
        self._cluster = cluster
        self._stack.callback(cluster.shutdown)
        self._nodes[1] = cluster.add_node(num_cpus=1, resources={"zone_b": 100},
                                          node_ip_address="127.0.0.1")
        ray.init(address=cluster.address, namespace="resilience", logging_level=logging.WARNING,
                 log_to_driver=False)
        self._stack.callback(ray.shutdown)

    def _spec(self) -> Any:
        return self.adapter.pipeline(self.scenario.job, self.input_file, self.job_dir,
                                     self.job_id, "nodes" in self.needs)

    def stop(self) -> None:
        if self.runner is not None:
            with contextlib.suppress(Exception):
                self.runner.stop()
        self._stack.close()

    # -- Environment protocol (what faults act on) -----------------------------------

    @property
    def job_dir(self) -> Path:
        return self.workdir / "job"

    def task_names(self) -> list[str]:
        return sorted(self.runner.tasks)

    def task_pid(self, task: str) -> int:
        return self._pid(("task", task),
                         lambda timeout_s: self.runner.pids(timeout_s, tasks=[task])[task])

    def helper_pids(self, kind: str) -> dict[str, int]:
        def ask(task: str) -> Callable[[float], int]:
            return lambda timeout_s: self.runner.helper_pids(timeout_s, tasks=[task])[task][kind]

        out: dict[str, int] = {}
        for task in self.task_names():
            if (kind, task) in self._no_helper:
                continue  # an operator's helpers do not change across restarts
            try:
                out[task] = self._pid((kind, task), ask(task))
            except KeyError:
                self._no_helper.add((kind, task))
        return out

    def coordinator_pid(self) -> int:
        return self._pid(("coordinator", ""), self.runner.coordinator_pid)

    def remember_pids(self) -> None:
        """Ask every process for its pid while none is stopped (the job has just started)."""
        with contextlib.suppress(Exception):
            self.coordinator_pid()
            for task in self.task_names():
                self.task_pid(task)
            self.helper_pids("java")

    def _pid(self, key: tuple[str, str], ask: Callable[[float], int]) -> int:
        """A process's pid, without waiting for a process that a fault has stopped.

        The actor itself is asked, but an actor stopped by an earlier pause never answers:
        after a short wait the pid it last reported is used while that process exists
        (stopped or not). A process that is gone (killed, being restarted by Ray) is
        asked again and waited for.
        """
        from ray.exceptions import GetTimeoutError

        try:
            pid = int(ask(_PID_QUICK_S))
        except GetTimeoutError:
            last = self._pids.get(key)
            if last is not None and process_state(last) is not None:
                return last
            pid = int(ask(30.0))
        self._pids[key] = pid
        return pid

    def etcd_member(self, index: int) -> Any:
        if not isinstance(self._etcd, EmbeddedEtcdCluster):
            raise RuntimeError("etcd faults need the 3-member cluster")
        return self._etcd.members[index]

    def proxy(self, link: str) -> Any:
        if link not in self._proxies:
            raise RuntimeError(f"no proxied link {link!r} (have: {', '.join(self._proxies)})")
        return self._proxies[link]

    def node(self, index: int) -> Any:
        return self._nodes[index]

    def remove_node(self, index: int) -> None:
        self._cluster.remove_node(self._nodes.pop(index), allow_graceful=False)

    def restore_node(self, index: int) -> None:
        if index not in self._nodes:
            self._nodes[index] = self._cluster.add_node(
                num_cpus=1, resources={"zone_b": 100}, node_ip_address="127.0.0.1")

    def _election(self) -> LeaderElection:
        assert self._client is not None
        return LeaderElection(self._client, f"jobs/{self.job_id}", "chaos-observer")

    def coordinator_lease(self) -> int | None:
        leader = self._election().current_leader()
        return None if leader is None else leader.lease_id

    def revoke_lease(self, lease_id: int) -> None:
        assert self._client is not None
        self._client.revoke_lease(lease_id)

    def leader(self) -> tuple[int, str] | None:
        try:
            leader = self._election().current_leader()
        except Exception:  # noqa: BLE001 - etcd may be partitioned on purpose
            return None
        return None if leader is None else (leader.epoch, leader.holder)

    def checkpoint_records(self) -> list[dict[str, Any]]:
        assert self._client is not None
        return [dataclasses.asdict(r)
                for r in CheckpointRegistry(self._client, self.job_id).completed()]

    @property
    def output_db(self) -> Path:
        return self.job_dir / self.adapter.output

    def ledger_watermark(self) -> tuple[int, int]:
        """(committed watermark, fencing epoch) read from the sink's own database."""
        progress = SQLiteTwoPhaseSink.read_progress(self.output_db)
        return progress.watermark, progress.fencing_epoch



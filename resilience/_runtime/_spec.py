"""The shape of a pipeline: stages, parallelism, and how records are routed.

A spec is plain, picklable data built by the driver. Ray re-runs an actor's
constructor with the same arguments when it restarts the actor, so every task
gets its whole wiring from its `TaskSpec` and a restarted task needs nothing
from anyone to rejoin.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checkpoint import DEFAULT_MAX_PARALLELISM, CheckpointConfig
from resilience._runtime._poison import QuarantineBudget
from resilience.replication._config import ReplicationConfig

__all__ = ["OutputSpec", "PipelineSpec", "StageSpec", "TaskSpec"]


@dataclass(frozen=True)
class StageSpec:
    """One stage: `parallelism` tasks running operators made by `factory`.

    `key` routes records *into* this stage when it has several tasks: a record
    goes to the task owning the key group of `key(record)`.
    """

    name: str
    factory: Callable[[], Any]
    parallelism: int = 1
    upstream: Sequence[str] = ()
    key: Callable[[Any], str] | None = None
    is_source: bool = False
    commits: bool = False  # has two-phase-commit effects: gets completion notices
    resources: Mapping[str, float] = field(default_factory=dict)  # Ray custom resources

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"stage name {self.name!r} must be non-empty without '/'")
        if self.parallelism < 1:
            raise ValueError(f"stage {self.name}: parallelism must be >= 1")
        if self.is_source and self.upstream:
            raise ValueError(f"stage {self.name}: a source has no upstream")
        if not self.is_source and not self.upstream:
            raise ValueError(f"stage {self.name}: needs an upstream stage or is_source=True")


@dataclass(frozen=True)
class OutputSpec:
    """Where one task sends its output: a downstream stage and our channel index there."""

    stage: str
    actor_names: tuple[str, ...]
    channel: int
    key: Callable[[Any], str] | None
    max_parallelism: int


@dataclass(frozen=True)
class TaskSpec:
    """Everything one task needs, passed to its actor's constructor."""

    job_id: str
    namespace: str
    stage: str
    index: int
    parallelism: int
    task_id: str
    actor_name: str
    coordinator_name: str
    factory: Callable[[], Any]
    n_inputs: int
    outputs: tuple[OutputSpec, ...]
    store_uri: str
    workdir: Path
    is_source: bool
    commits: bool
    alignment_timeout_s: float | None
    window: int
    checkpointing: bool = True
    replicated: bool = False


@dataclass(frozen=True)
class PipelineSpec:
    """A whole job: stages in topological order plus checkpointing settings."""

    job_id: str
    stages: Sequence[StageSpec]
    workdir: Path
    store_uri: str
    checkpoint: CheckpointConfig | None = field(default_factory=CheckpointConfig)
    code_version: str = "0"
    schema_version: int = 1
    namespace: str = "resilience"
    max_parallelism: int = DEFAULT_MAX_PARALLELISM
    alignment_timeout_s: float | None = 2.0
    window: int = 2
    batch_size: int = 2000
    restart_budget: int = 20
    quarantine: QuarantineBudget = field(default_factory=QuarantineBudget)
    lease_ttl_s: int = 3
    savepoint_dir: Path | None = None
    initial_savepoint: Path | None = None  # a savepoint's own directory, imported at start
    run_id: str = ""  # one `resilience run`; a savepoint is imported once per run
    replication: ReplicationConfig | None = None  # this site's part in a multi-site job

    def __post_init__(self) -> None:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate stage names in {names}")
        seen: set[str] = set()
        sources = 0
        for s in self.stages:
            for u in s.upstream:
                if u not in seen:
                    raise ValueError(
                        f"stage {s.name}: upstream {u!r} must be declared before it"
                    )
            seen.add(s.name)
            sources += s.is_source
        if sources != 1:
            raise ValueError(f"a pipeline needs exactly one source stage, got {sources}")
        for s in self.stages:
            if s.is_source and s.parallelism != 1:
                raise ValueError(f"source stage {s.name}: parallelism must be 1")

    def stage(self, name: str) -> StageSpec:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def coordinator_name(self) -> str:
        return f"{self.job_id}/coordinator"

    def actor_name(self, stage: str, index: int) -> str:
        return f"{self.job_id}/{stage}-{index}"

    def task_id(self, stage: str, index: int) -> str:
        return f"{stage}-{index}"

    def task_specs(self) -> list[TaskSpec]:
        """One spec per task, with channels numbered per downstream task."""
        out: list[TaskSpec] = []
        for s in self.stages:
            downstream = [d for d in self.stages if s.name in d.upstream]
            for i in range(s.parallelism):
                outputs = []
                for d in downstream:
                    # Channel number of (s, i) among d's inputs: upstreams in declared order.
                    offset = 0
                    for u in d.upstream:
                        if u == s.name:
                            break
                        offset += self.stage(u).parallelism
                    if d.parallelism > 1 and d.key is None:
                        raise ValueError(f"stage {d.name} has parallelism > 1 but no key")
                    outputs.append(
                        OutputSpec(
                            stage=d.name,
                            actor_names=tuple(
                                self.actor_name(d.name, j) for j in range(d.parallelism)
                            ),
                            channel=offset + i,
                            key=d.key,
                            max_parallelism=self.max_parallelism,
                        )
                    )
                n_inputs = sum(self.stage(u).parallelism for u in s.upstream)
                out.append(
                    TaskSpec(
                        job_id=self.job_id,
                        namespace=self.namespace,
                        stage=s.name,
                        index=i,
                        parallelism=s.parallelism,
                        task_id=self.task_id(s.name, i),
                        actor_name=self.actor_name(s.name, i),
                        coordinator_name=self.coordinator_name,
                        factory=s.factory,
                        n_inputs=max(n_inputs, 1),
                        outputs=tuple(outputs),
                        store_uri=self.store_uri,
                        workdir=self.workdir,
                        is_source=s.is_source,
                        commits=s.commits,
                        alignment_timeout_s=self.alignment_timeout_s,
                        window=self.window,
                        checkpointing=self.checkpoint is not None,
                        replicated=self.replication is not None,
                    )
                )
        return out

"""Write your own fused job: the public pipeline API.

A job is a list of stages, each running an *operator* (plain Python: it never sees
Ray, etcd or the store layout) in one or more tasks::

    from resilience.pipeline import (JobDefinition, JobOptions, PipelineSpec, StageSpec,
                                     SinkOperator, KeyedState, ...)

    def pipeline(opts: JobOptions) -> PipelineSpec:
        return PipelineSpec(job_id=opts.job_id, workdir=opts.workdir,
                            store_uri=str(opts.workdir / "checkpoints"), stages=[
            StageSpec("source", MySource, is_source=True),
            StageSpec("totals", Totals, parallelism=opts.parallelism,
                      upstream=["source"], key=lambda r: r[0]),
            StageSpec("sink", MySink, upstream=["totals"], commits=True),
        ])

    JOB = JobDefinition("my-job", pipeline, description="...")

`resilience run my-job` runs it once it is registered under the ``resilience.jobs``
entry point group (or `resilience run my_package.module:JOB` without registering), with
the same exactly-once checkpoints, savepoints, failover, poison-record quarantine and
watchdog as the shipped jobs; `PipelineRunner` runs a spec from Python. See
docs/pipeline.md and ``examples/word_totals.py``.

What an operator must know (the protocols are in this module): `process` must be a
deterministic function of its input order and state; `snapshot` is the cheap,
synchronous half of a checkpoint and returns a `SnapshotWriter` whose `write` runs on a
background thread; `restore` receives the snapshots to reset to (none: start empty).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from checkpoint import (
    CheckpointConfig,
    CheckpointStore,
    CompactionPolicy,
    IncompatibleState,
    JsonLinesSource,
    KeyedState,
    KeyGroupRange,
    SourcePosition,
    SQLiteTwoPhaseSink,
    StateHandle,
    TaskSnapshot,
    TwoPhaseCommitSink,
)
from resilience._errors import UserError
from resilience._runtime._driver import PipelineRunner
from resilience._runtime._operator import (
    CommitListener,
    Operator,
    OperatorContext,
    SnapshotWriter,
    SourceOperator,
    WrittenSnapshot,
)
from resilience._runtime._poison import QuarantineBudget
from resilience._runtime._side_file import SIDE_FILES_KEY, SideFile
from resilience._runtime._sink_operator import SinkOperator
from resilience._runtime._spec import PipelineSpec, StageSpec
from resilience._runtime._watchdog import Deadlines

__all__ = [
    "SIDE_FILES_KEY",
    "CheckpointConfig",
    "CheckpointStore",
    "CommitListener",
    "CompactionPolicy",
    "Deadlines",
    "IncompatibleState",
    "JobDefinition",
    "JobOptions",
    "JsonLinesSource",
    "KeyGroupRange",
    "KeyedState",
    "Operator",
    "OperatorContext",
    "PipelineRunner",
    "PipelineSpec",
    "QuarantineBudget",
    "SQLiteTwoPhaseSink",
    "SideFile",
    "SinkOperator",
    "SnapshotWriter",
    "SourceOperator",
    "SourcePosition",
    "StageSpec",
    "StateHandle",
    "TaskSnapshot",
    "TwoPhaseCommitSink",
    "Verdict",
    "WrittenSnapshot",
    "find_job",
    "known_jobs",
]

ENTRY_POINT_GROUP = "resilience.jobs"


@dataclass(frozen=True)
class JobOptions:
    """What `resilience run JOB` gives a job's `pipeline` function.

    The common options of every job, and `settings`: the job's own, from
    ``--set KEY=VALUE`` (documented in `JobDefinition.settings`).
    """

    workdir: Path
    job_id: str
    input_path: Path | None = None
    parallelism: int = 2
    checkpoint_interval_s: float | None = 1.0
    batch_size: int = 2000
    savepoint_dir: Path | None = None
    from_savepoint: Path | None = None  # a savepoint's own directory
    run_id: str = ""
    max_quarantined: int | None = 100
    settings: Mapping[str, str] = field(default_factory=dict)

    def replace(self, **changes: Any) -> JobOptions:
        return dataclasses.replace(self, **changes)


class Verdict(Protocol):
    """What a job's `verify` returns: whether the output is exact, and how to show it."""

    @property
    def ok(self) -> bool: ...

    def summary(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class JobDefinition:
    """A fused job as the command line knows it.

    `pipeline(options)` builds its `PipelineSpec`. Optional hooks: `verify(input,
    workdir)` judges a run's output (`resilience verify --job NAME`; with
    ``reference=PATH`` when given one to compare with); `count_input(path)`
    gives the progress bar its total; `generate(path, events, seed)` writes a sample
    input (the demo). `settings` documents the keys `pipeline` reads from
    `JobOptions.settings`; any other key is refused before the run starts.
    `needs_input`: the job reads an input file (``--input``).
    """

    name: str
    pipeline: Callable[[JobOptions], PipelineSpec]
    description: str = ""
    schema_version: int = 1
    needs_input: bool = True
    settings: Mapping[str, str] = field(default_factory=dict)
    verify: Callable[..., Verdict] | None = None
    count_input: Callable[[Path], int] | None = None
    generate: Callable[[Path, int, int], str] | None = None

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "/: "):
            raise ValueError(f"JobDefinition(name=...): {self.name!r} must be a non-empty word "
                             "without '/', ':' or spaces")
        if not callable(self.pipeline):
            raise TypeError(f"JobDefinition {self.name}: pipeline must be callable")

    def check_settings(self, settings: Mapping[str, str]) -> None:
        """Refuse a setting this job does not read (a typo must not be ignored)."""
        unknown = sorted(set(settings) - set(self.settings))
        if unknown:
            known = ", ".join(sorted(self.settings)) or "none"
            raise UserError(f"job {self.name} has no setting {', '.join(unknown)} "
                            f"(its settings: {known})")


def known_jobs() -> dict[str, Callable[[], JobDefinition]]:
    """The jobs registered under the ``resilience.jobs`` entry point group, not loaded."""
    from importlib.metadata import entry_points

    return {ep.name: ep.load for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _load_module(name: str, module_name: str) -> Any:
    """A module by dotted name, or a ``.py`` file by path.

    A file is imported under a name of its own and sent to Ray's workers by value
    (they need not find the file), as a notebook's classes are.
    """
    import importlib
    import importlib.util
    import sys

    if module_name.endswith(".py"):
        path = Path(module_name).resolve()
        if not path.is_file():
            raise UserError(f"job {name}: no file {module_name}")
        unique = f"resilience_job_{abs(hash(str(path))):x}"
        spec = importlib.util.spec_from_file_location(unique, path)
        if spec is None or spec.loader is None:
            raise UserError(f"job {name}: cannot load {module_name}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[unique] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[unique]
            raise UserError(f"job {name}: {module_name} fails to load: {e}") from e
        import ray.cloudpickle

        ray.cloudpickle.register_pickle_by_value(module)  # type: ignore[no-untyped-call]
        return module
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"job {name}: cannot import {module_name}: {e}") from e


def find_job(name: str) -> JobDefinition:
    """The job called `name` in the registry, at ``module:attribute``, or in a file at
    ``path/to/job.py:attribute``.

    Raises `UserError` naming the registered jobs when there is no such job.
    """
    if ":" in name:
        module_name, _, attribute = name.rpartition(":")
        module = _load_module(name, module_name)
        found = getattr(module, attribute, None)
    else:
        jobs = known_jobs()
        if name not in jobs:
            raise UserError(f"no job {name!r}: registered jobs are "
                            f"{', '.join(sorted(jobs)) or 'none'}; or give module:attribute")
        found = jobs[name]()
    if not isinstance(found, JobDefinition):
        raise UserError(f"job {name}: {type(found).__name__} is not a JobDefinition")
    return found

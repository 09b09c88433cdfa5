"""What the harness must know of each kind of job it drives: one adapter per kind.

An adapter says how to write the job's input, build its pipeline for a scenario, where its
sink writes, and how to judge the output (exactly once, and what was committed before a
fault). Everything else in the harness is the same for every job. The payments and
keyed-sums adapters ship; harness-only ones (deliberately broken builds, `chaos._broken`)
add themselves with `register`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resilience.pipeline import PipelineSpec

__all__ = ["ADAPTERS", "JobAdapter", "JobSpec", "Judgement", "adapter_for", "register"]


@dataclass(frozen=True)
class JobSpec:
    """The job under test and its size."""

    kind: str = "payments"
    events: int = 60_000
    accounts: int = 2_000
    parallelism: int = 2
    checkpoint_interval: float = 0.5
    seed: int = 1
    alignment_timeout: float | None = 2.0
    timeout_s: float = 300.0
    balances_stage: str = "python"  # payments only: "java" runs the stage as a Java actor
    sites: int = 1  # 2: the job runs on two sites (a drill carries the scenario's fault)
    replication: str = "sync"  # two sites: sync | async
    on_standby_loss: str = "fail-closed"  # two sites, sync: fail-closed | degrade


@dataclass(frozen=True)
class Judgement:
    passed: bool
    detail: str
    data: dict[str, Any] | None = None


@dataclass(frozen=True)
class JobAdapter:
    """How the harness drives one kind of job.

    `pipeline(job, input, workdir, job_id, pin_to_node_b)` builds the spec;
    `write_input(job, path)` writes its input (None: it reads none); `output` is the
    file its sink writes under the workdir; `exactly_once(job, input, workdir)` and
    `lost_before(job, input, output, watermark)` judge the output with checkers that
    share no code with the job.
    """

    kind: str
    pipeline: Callable[[JobSpec, Path, Path, str, bool], PipelineSpec]
    output: str
    exactly_once: Callable[[JobSpec, Path, Path], Judgement]
    lost_before: Callable[[JobSpec, Path, Path, int], list[Any]]
    write_input: Callable[[JobSpec, Path], None] | None = None


ADAPTERS: dict[str, JobAdapter] = {}


def register(adapter: JobAdapter) -> JobAdapter:
    ADAPTERS[adapter.kind] = adapter
    return adapter


def adapter_for(kind: str) -> JobAdapter:
    """The adapter of job kind `kind` (KeyError if none registered)."""
    return ADAPTERS[kind]


# -- payments ----------------------------------------------------------------------------


def _payments_input(job: JobSpec, path: Path) -> None:
    from fusion_jobs.payments.generator import generate

    generate(path, events=job.events, accounts=job.accounts, seed=job.seed)


def _payments_pipeline(job: JobSpec, input_path: Path, workdir: Path, job_id: str,
                       pin_to_node_b: bool) -> PipelineSpec:
    from fusion_jobs.payments.job import PaymentsOptions, payments_pipeline

    return payments_pipeline(PaymentsOptions(
        input_path, workdir, parallelism=job.parallelism,
        checkpoint_interval_s=job.checkpoint_interval, job_id=job_id,
        alignment_timeout_s=job.alignment_timeout, balances_stage=job.balances_stage,
        balances_resources={"zone_b": 0.01} if pin_to_node_b else None))


def _payments_exactly_once(job: JobSpec, input_path: Path, workdir: Path) -> Judgement:
    from fusion_jobs.payments.checker import verify

    verdict = verify(input_path, workdir)
    summary = (f"{verdict.applied_events:,}/{verdict.valid_events:,} applied, "
               f"{verdict.missing_events} missing, {verdict.duplicated_events} duplicated, "
               f"{verdict.chain_errors} chain errors, {verdict.balance_errors} balance errors, "
               f"{verdict.dead_letter_errors} dead-letter errors")
    return Judgement(verdict.ok, summary, verdict.to_dict())


def _payments_lost(job: JobSpec, input_path: Path, output: Path, high: int) -> list[Any]:
    """Ids of valid transfers on lines below `high` missing from the ledger.

    Only lines the contract applies count (the checker's own parser; rule 9 never
    fires on generated input, whose balances stay far inside the range).
    """
    from fusion_jobs.payments.checker import parse_transfer

    expected: list[str] = []
    seen: set[str] = set()
    with open(input_path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if line_no >= high:
                break
            try:
                text = raw.removesuffix(b"\n").removesuffix(b"\r").decode("utf-8")
            except UnicodeDecodeError:
                continue  # never applied (rule 2 of the contract)
            parsed = parse_transfer(text)
            if not isinstance(parsed, str) and parsed.id not in seen:
                seen.add(parsed.id)
                expected.append(parsed.id)
    with sqlite3.connect(f"file:{output}?mode=ro", uri=True) as db:
        have = {r[0] for r in db.execute("SELECT DISTINCT event_id FROM postings")}
    return [e for e in expected if e not in have]


register(JobAdapter("payments", _payments_pipeline, "ledger.sqlite", _payments_exactly_once,
                    _payments_lost, _payments_input))


# -- keyed sums --------------------------------------------------------------------------


def _sums_pipeline(job: JobSpec, input_path: Path, workdir: Path, job_id: str,
                   pin_to_node_b: bool) -> PipelineSpec:
    from fusion_jobs.keyed_sums import SumsOptions, keyed_sums_pipeline

    return keyed_sums_pipeline(SumsOptions(
        workdir, total=job.events, keys=job.accounts, sums=job.parallelism,
        checkpoint_interval_s=job.checkpoint_interval,
        alignment_timeout_s=job.alignment_timeout, job_id=job_id))


def _sums_exactly_once(job: JobSpec, input_path: Path, workdir: Path) -> Judgement:
    from fusion_jobs.keyed_sums import check_sums

    problems = check_sums(workdir, job.events, job.accounts)
    return Judgement(not problems, "; ".join(problems) or "every record once, sums exact")


def _sums_lost(job: JobSpec, input_path: Path, output: Path, high: int) -> list[Any]:
    with sqlite3.connect(f"file:{output}?mode=ro", uri=True) as db:
        have = {r[0] for r in db.execute("SELECT DISTINCT i FROM sums WHERE i < ?", (high,))}
    return [i for i in range(high) if i not in have]


register(JobAdapter("keyed_sums", _sums_pipeline, "sums.sqlite", _sums_exactly_once,
                    _sums_lost))

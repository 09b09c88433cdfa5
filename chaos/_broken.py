"""Deliberately broken builds, for the harness's own tests: proof that its checkers catch
what they claim to. Harness-only: nothing of the product imports this module.

* ``payments-early-commit``: the payments job whose ledger commits every batch as it
  arrives, before the checkpoint that covers it completes. After a restore the replayed
  records are committed again: the exactly-once invariant must fail.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chaos._jobs import ADAPTERS, JobAdapter, JobSpec, register
from resilience.pipeline import PipelineSpec, SinkOperator

__all__ = ["EarlyCommitSink"]


class EarlyCommitSink(SinkOperator):
    """A two-phase-commit sink with its first phase skipped (the bug)."""

    def process(self, channel: int, records: Sequence[Any]) -> list[Any]:
        rows = [self.row(r) for r in records]
        batch = self.sink.last_committed() + 1
        self.sink.precommit(batch, rows)
        self.sink.commit(batch, self._epoch, 0)
        return []


def _early_commit_ledger() -> SinkOperator:
    from fusion_jobs.payments.job import open_ledger

    return EarlyCommitSink(open_ledger, name="ledger")


def _pipeline(job: JobSpec, input_path: Path, workdir: Path, job_id: str,
              pin_to_node_b: bool) -> PipelineSpec:
    spec = ADAPTERS["payments"].pipeline(job, input_path, workdir, job_id, pin_to_node_b)
    stages = [dataclasses.replace(s, factory=_early_commit_ledger) if s.name == "ledger" else s
              for s in spec.stages]
    return dataclasses.replace(spec, stages=stages)


_payments = ADAPTERS["payments"]
register(JobAdapter("payments-early-commit", _pipeline, _payments.output,
                    _payments.exactly_once, _payments.lost_before, _payments.write_input))

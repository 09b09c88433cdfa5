"""Throughput of the payments job (events/s) at parallelism 1 and 2, side by side.

    .venv/bin/python bench/payments_throughput.py [--events N] [--repeat R]

Each configuration runs R times, interleaved (P=1, P=2, P=1, ...) so that
machine noise hits both alike; the median is reported. Time is measured from
the job's first restore (all actors up) to its final commit, so actor start-up
(several seconds on 2 cores) is reported apart. Checkpointing is on (every 1 s).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import machine, median, runtime

from resilience.pipeline import PipelineRunner
from fusion_jobs.payments.generator import generate
from fusion_jobs.payments.job import PaymentsOptions, payments_pipeline


def run_once(input_path: Path, workdir: Path, etcd: str, parallelism: int, interval: float | None,
             tag: str, balances_stage: str = "python") -> dict[str, float]:
    spec = payments_pipeline(PaymentsOptions(input_path, workdir, parallelism=parallelism,
                                             checkpoint_interval_s=interval,
                                             job_id=f"bench-{tag}-{time.time_ns()}",
                                             balances_stage=balances_stage))
    t0 = time.monotonic()
    with PipelineRunner(spec, etcd) as runner:
        status = runner.wait(timeout_s=1800)
        t_end = time.monotonic()
        stats = runner.task_stats()
    started = status["restores"][0]["started_at"]
    finished = status["last_checkpoint"]["at"]
    lines = status["committed_watermark"] - 1
    return {
        "events_per_s": lines / (finished - started),
        # Until the source read its last line: excludes the final commit, which
        # is one big transaction when checkpointing is off.
        "events_per_s_to_eof": lines / (status["eof_at"] - started),
        "startup_s": (t_end - t0) - (finished - started),
        "checkpoints": status["checkpoints_completed"],
        **{f"cpu_{tid}": round(st["cpu_s"], 1) for tid, st in sorted(stats.items())},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with runtime() as (etcd, scratch):
        src = scratch / "payments.jsonl"
        generate(src, events=args.events, accounts=10_000, seed=42)
        results: dict[int, list[dict[str, float]]] = {1: [], 2: []}
        for r in range(args.repeat):
            for p in (1, 2):
                res = run_once(src, scratch / f"p{p}-{r}", etcd, p, 1.0, f"p{p}")
                results[p].append(res)
                print(f"  run {r + 1} P={p}: {res['events_per_s']:,.0f} events/s "
                      f"(start-up {res['startup_s']:.1f}s)", flush=True)
        print(f"\npayments job, {args.events:,} events, checkpoint every 1 s, {machine()}")
        for p in (1, 2):
            eps = median([x["events_per_s"] for x in results[p]])
            cpu = {k: v for k, v in results[p][-1].items() if k.startswith("cpu_")}
            print(f"  P={p}: {eps:,.0f} events/s (median of {args.repeat}); "
                  f"CPU s of the last run: {cpu}")
        ratio = median([x["events_per_s"] for x in results[2]]) / median(
            [x["events_per_s"] for x in results[1]])
        print(f"  P=2 / P=1 = {ratio:.2f}")


if __name__ == "__main__":
    main()

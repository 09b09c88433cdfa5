"""Cost of exactly-once checkpointing: throughput with a checkpoint every second vs off.

    .venv/bin/python bench/checkpoint_overhead.py [--events N] [--repeat R] [--interval S]

Both variants run the same payments job on the same input, interleaved
(off, on, off, on, ...) in one process against one Ray and one etcd, so the
ratio compares like with like. "Off" still commits the ledger once at the end
(a final checkpoint), so both runs do the same sink work; the difference is
barriers, snapshots, manifests, etcd commits and per-checkpoint sink commits.
Target: ratio >= 0.90 (Quix Streams documents "at worst 10% slower"); goal 0.95.
"""

from __future__ import annotations

import argparse

from _common import machine, median, runtime
from payments_throughput import run_once

from fusion_jobs.payments.generator import generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=600_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--parallelism", type=int, default=2)
    args = ap.parse_args()
    with runtime() as (etcd, scratch):
        src = scratch / "payments.jsonl"
        generate(src, events=args.events, accounts=10_000, seed=42)
        on: list[float] = []
        off: list[float] = []
        on_eof: list[float] = []
        off_eof: list[float] = []
        ckpts: list[float] = []
        for r in range(args.repeat):
            res_off = run_once(src, scratch / f"off-{r}", etcd, args.parallelism, None, "off")
            res_on = run_once(src, scratch / f"on-{r}", etcd, args.parallelism, args.interval,
                              "on")
            off.append(res_off["events_per_s"])
            on.append(res_on["events_per_s"])
            off_eof.append(res_off["events_per_s_to_eof"])
            on_eof.append(res_on["events_per_s_to_eof"])
            ckpts.append(res_on["checkpoints"])
            print(f"  round {r + 1}: off {off[-1]:,.0f}/s, on {on[-1]:,.0f}/s "
                  f"({int(ckpts[-1])} checkpoints) ratio {on[-1] / off[-1]:.3f}", flush=True)
        ratios = [a / b for a, b in zip(on, off, strict=True)]
        ratios_eof = [a / b for a, b in zip(on_eof, off_eof, strict=True)]
        print(f"\ncheckpoint every {args.interval:g}s vs off, payments P={args.parallelism}, "
              f"{args.events:,} events, {machine()}")
        print(f"  off: {median(off):,.0f} events/s   on: {median(on):,.0f} events/s "
              f"(median of {args.repeat})")
        print(f"  throughput ratio on/off, to the final commit: median {median(ratios):.3f} "
              f"(per round: {', '.join(f'{x:.3f}' for x in ratios)})")
        print(f"  throughput ratio on/off, steady state (to the source's last line): median "
              f"{median(ratios_eof):.3f} (per round: {', '.join(f'{x:.3f}' for x in ratios_eof)})")


if __name__ == "__main__":
    main()

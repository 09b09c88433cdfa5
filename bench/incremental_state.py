"""Incremental keyed-state checkpoints: cost vs state size at a fixed change rate.

    .venv/bin/python bench/incremental_state.py [--sizes 10000,1000000,5000000] [--touch 0.01]

For each state size N, with `touch` (1 %) of the keys updated per interval:
  * barrier pause: `begin_snapshot` on the processing thread (copy of the changed keys);
  * incremental: the background write of one delta chunk (serialize + fsync), and its bytes;
  * compaction: the periodic fold of base + 10 deltas into a new base (background, amortized);
  * full: what a non-incremental snapshot of the same state costs (serialize all + fsync).
The ratio incremental/full is what makes checkpoint cost follow the change rate.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import msgpack
from _common import machine

from checkpoint import CompactionPolicy, FileSystemStore, KeyedState


def bench_size(n: int, touch: float, rounds: int, root: Path) -> dict[str, float]:
    store = FileSystemStore(root / f"n{n}", job_id="bench")
    state = KeyedState(compaction=CompactionPolicy(every_deltas=1))
    for i in range(n):
        state.put(f"acct-{i:09d}", i)
    state.begin_snapshot(1).write(store)  # initial base
    state.compaction = CompactionPolicy(every_deltas=rounds)
    rng = random.Random(1)
    keys = [f"acct-{i:09d}" for i in range(n)]
    pauses, writes, sizes, compactions = [], [], [], []
    for r in range(rounds):
        for k in rng.sample(keys, max(1, int(n * touch))):
            state.put(k, state.get(k, 0) + 1)
        t0 = time.perf_counter()
        snap = state.begin_snapshot(r + 2)
        t1 = time.perf_counter()
        handle = snap.write(store)
        t2 = time.perf_counter()
        if handle.metadata["delta_chunks"] == 0:  # this write compacted
            compactions.append(t2 - t1)
        else:
            pauses.append(t1 - t0)
            writes.append(t2 - t1)
            sizes.append(handle.chunks[-1].size)
    t0 = time.perf_counter()
    full = msgpack.packb(dict(state.items()), use_bin_type=True)
    store.put_chunk(full)
    t_full = time.perf_counter() - t0
    return {
        "pause_ms": statistics.median(pauses) * 1e3,
        "delta_ms": statistics.median(writes) * 1e3,
        "delta_bytes": statistics.median(sizes),
        "compaction_ms": (statistics.median(compactions) * 1e3) if compactions else float("nan"),
        "full_ms": t_full * 1e3,
        "full_bytes": len(full),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="10000,1000000,5000000")
    ap.add_argument("--touch", type=float, default=0.01)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    print(f"keyed state, {args.touch:.0%} of keys changed per interval, {machine()}")
    print(f"{'keys':>10} {'pause':>9} {'delta':>9} {'delta B':>12} {'full':>9} {'full B':>13} "
          f"{'time ratio':>10} {'bytes ratio':>11} {'compaction':>11}")
    with tempfile.TemporaryDirectory(prefix="bench-state-") as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            r = bench_size(n, args.touch, args.rounds, Path(tmp))
            print(f"{n:>10,} {r['pause_ms']:>7.1f}ms {r['delta_ms']:>7.1f}ms "
                  f"{r['delta_bytes']:>12,.0f} {r['full_ms']:>7.0f}ms {r['full_bytes']:>13,} "
                  f"{r['delta_ms'] / r['full_ms']:>10.3f} "
                  f"{r['delta_bytes'] / r['full_bytes']:>11.3f} "
                  f"{r['compaction_ms']:>9.0f}ms", flush=True)


if __name__ == "__main__":
    main()

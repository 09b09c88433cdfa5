"""RTO and RPO of failover drills: several `resilience drill --json` runs of each kind.

    .venv/bin/python bench/drills.py [--repeat R] [--kinds sync-kill,sync-partition,...]

Kinds: ``sync-kill`` and ``async-kill`` (every process of site a SIGKILLed with its etcd
member), ``sync-partition`` (site a cut off for 6 s while it runs on), ``switchover``
(a planned handover, then a failback). Each drill runs the payments job (300k events;
600k with a failback) on two local sites and a witness. RTO is measured from the fault,
detection included, to the first commit of a new checkpoint at the new site, and split
into detection (fault to the new site's takeover record), restore, and the first commit
after it. Every drill is judged by the independent checker; a failed one is reported.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import ROOT, machine, median

KINDS: dict[str, list[str]] = {
    "sync-kill": ["--mode", "sync", "--fault", "site-kill"],
    "sync-partition": ["--mode", "sync", "--fault", "partition"],
    "async-kill": ["--mode", "async", "--fault", "site-kill"],
    "switchover": ["--mode", "sync", "--fault", "switchover", "--failback", "--events",
                   "600000"],
}


def drill(kind: str, workdir: Path) -> dict[str, Any]:
    report = workdir.with_suffix(".json")
    out = subprocess.run([sys.executable, "-m", "resilience.cli", "drill", "--workdir",
                          str(workdir), "--json", str(report), *KINDS[kind]],
                         capture_output=True, text=True, timeout=1800, cwd=ROOT, check=False)
    if not report.exists():
        raise RuntimeError(f"drill {kind} wrote no report ({out.returncode}): "
                           f"{out.stderr[-2000:]}")
    data: dict[str, Any] = json.loads(report.read_text())
    return data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    scratch = Path(tempfile.mkdtemp(prefix="bench-drills-"))
    print(f"machine: {machine()}; {args.repeat} drills of each kind, interleaved", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for r in range(args.repeat):
        for kind in kinds:
            d = drill(kind, scratch / f"{kind}-{r}")
            split = d["rto_split"]
            row = {"passed": d["passed"], "failures": d["failures"], "rto_s": d["rto_seconds"],
                   "detection_s": split["detection_s"], "restore_s": split["restore_s"],
                   "first_commit_s": split["first_commit_after_restore_s"],
                   "rpo_events": d["rpo_events"], "duplicates": d["duplicates"],
                   "lag_at_fault": d["lag_at_fault"],
                   "failback_rto_s": (d.get("failback_result") or {}).get("rto_seconds")}
            runs[kind].append(row)
            print(f"  {kind:15} {'PASSED' if d['passed'] else 'FAILED'}  RTO {row['rto_s']:5.2f}s "
                  f"(detection {row['detection_s']:.2f}, restore {row['restore_s']:.2f}, "
                  f"first commit {row['first_commit_s']:.2f})  RPO {row['rpo_events']} events, "
                  f"{row['duplicates']} duplicated; lag at fault {row['lag_at_fault']}"
                  + (f"; failback RTO {row['failback_rto_s']:.2f}s"
                     if row["failback_rto_s"] is not None else "")
                  + ("" if d["passed"] else f"  {d['failures']}"), flush=True)
    summary: dict[str, Any] = {"machine": machine(), "repeat": args.repeat, "runs": runs}
    print("\nkind             drills  passed  RTO median  RTO max  detection  restore  "
          "first commit  RPO events (max)")
    for kind, rows in runs.items():
        rto = [x["rto_s"] for x in rows]
        s = {"drills": len(rows), "passed": sum(x["passed"] for x in rows),
             "rto_median_s": median(rto), "rto_max_s": max(rto),
             "detection_median_s": median([x["detection_s"] for x in rows]),
             "restore_median_s": median([x["restore_s"] for x in rows]),
             "first_commit_median_s": median([x["first_commit_s"] for x in rows]),
             "rpo_events_max": max(x["rpo_events"] for x in rows)}
        fb = [x["failback_rto_s"] for x in rows if x["failback_rto_s"] is not None]
        if fb:
            s["failback_rto_median_s"] = median(fb)
        summary[kind] = s
        print(f"{kind:16} {s['drills']:6}  {s['passed']:6}  {s['rto_median_s']:9.2f}s "
              f"{s['rto_max_s']:7.2f}s {s['detection_median_s']:9.2f}s "
              f"{s['restore_median_s']:7.2f}s {s['first_commit_median_s']:12.2f}s  "
              f"{s['rpo_events_max']}"
              + (f"   failback RTO median {s['failback_rto_median_s']:.2f}s" if fb else ""))
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 0 if all(x["passed"] for rows in runs.values() for x in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Serving through version swaps: latency and throughput of ``POST /fraud/score`` on Ray
Serve in steady state and while the ``serving`` alias moves, and the time from a move to
every replica answering with the new version.

    .venv/bin/python bench/serving_swap.py [--seconds S] [--clients C] [--swaps N]

A payments job (poisoned labels: several versions, some bad) fills the registry; two
replicas serve the fraud model. Then, side by side in one run: C client threads score for
S seconds with the alias still; then for S seconds while an operator moves the alias
between two good versions every S/N seconds. A watcher polls ``GET /fraud/version``
after each move until 20 answers in a row from both replicas name the new version.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from _common import ROOT, machine, runtime

from fusion_jobs.payments.generator import LabelPoison, generate, generate_labels
from fusion_jobs.payments.job import PaymentsOptions, payments_pipeline, score_transfer
from resilience import EtcdClient
from resilience.models import ModelRegistry
from resilience.pipeline import PipelineRunner
from resilience.serving import model_app

BODY = json.dumps({"from": "acct-000001", "to": "acct-000002", "amount": 250_000}).encode()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _score(url: str) -> tuple[int, int]:
    req = urllib.request.Request(f"{url}/score", data=BODY, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, int(json.loads(r.read())["version"])


def _load(url: str, clients: int, seconds: float) -> dict[str, Any]:
    lat: list[float] = []
    failures = [0]
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def client() -> None:
        mine = []
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                status, _ = _score(url)
                ok = status == 200
            except (urllib.error.URLError, OSError):
                ok = False
            if ok:
                mine.append(time.perf_counter() - t0)
            else:
                with lock:
                    failures[0] += 1
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat.sort()
    q = statistics.quantiles(lat, n=100) if len(lat) > 100 else [float("nan")] * 99
    return {"requests": len(lat), "failures": failures[0], "per_s": round(len(lat) / seconds, 1),
            "p50_ms": round(1000 * q[49], 2), "p99_ms": round(1000 * q[98], 2)}


def _until_all_on(url: str, version: int, timeout_s: float = 10.0) -> float:
    t0 = time.monotonic()
    run, pids = 0, set()
    while time.monotonic() - t0 < timeout_s:
        with urllib.request.urlopen(f"{url}/version", timeout=5) as r:
            doc = json.loads(r.read())
        if int(doc["version"]) == version:
            run += 1
            pids.add(int(doc["pid"]))
            if run >= 20 and len(pids) >= 2:
                return time.monotonic() - t0
        else:
            run, pids = 0, set()
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--swaps", type=int, default=10, help="alias moves per swap phase")
    ap.add_argument("--rounds", type=int, default=3, help="steady/swap phase pairs")
    ap.add_argument("--out", default=None, help="also write the results as JSON")
    args = ap.parse_args()
    from ray import serve

    print(f"machine: {machine()}", flush=True)
    with runtime() as (etcd, scratch):
        path = scratch / "payments.jsonl"
        generate(path, events=30_000, accounts=2_000, seed=3)
        generate_labels(path, seed=3, poison=LabelPoison(0.4, 0.6, 0.3))
        job_id = f"bench-serving-{os.getpid()}"
        spec = payments_pipeline(PaymentsOptions(path, scratch / "work", parallelism=2,
                                                 checkpoint_interval_s=0.5, job_id=job_id))
        with PipelineRunner(spec, etcd) as runner:
            runner.wait(timeout_s=600)
        port = _port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(model_app(etcd, job_id, "fraud", score_transfer, replicas=2), name="fraud",
                  route_prefix="/fraud")
        url = f"http://127.0.0.1:{port}/fraud"
        with EtcdClient(etcd, timeout_s=5.0) as client:
            registry = ModelRegistry(client, job_id)
            bad = set(registry.bad("fraud"))
            good = [v.version for v in registry.versions("fraud") if v.version not in bad]
            a, b = good[-1], good[-2]
            _load(url, args.clients, 5.0)  # warm-up
            swaps: list[float] = []
            rounds: list[tuple[dict[str, Any], dict[str, Any]]] = []
            for _ in range(args.rounds):  # alternated, so neither phase gets the warm cache
                steady_round = _load(url, args.clients, args.seconds)
                print("steady:", json.dumps(steady_round), flush=True)
                done = threading.Event()

                def swapper(done: threading.Event = done) -> None:
                    target = b
                    interval = args.seconds / args.swaps
                    while not done.is_set():
                        registry.operator_move("fraud", "serving", target, why="bench swap",
                                               by="operator:bench")
                        swaps.append(_until_all_on(url, target))
                        target = a if target == b else b
                        done.wait(max(interval - swaps[-1], 0.0))

                t = threading.Thread(target=swapper)
                t.start()
                during_round = _load(url, args.clients, args.seconds)
                done.set()
                t.join()
                print("during swaps:", json.dumps(during_round), flush=True)
                rounds.append((steady_round, during_round))
        serve.shutdown()

    def merged(phase: int) -> dict[str, Any]:
        parts = [r[phase] for r in rounds]
        return {"requests": sum(p["requests"] for p in parts),
                "failures": sum(p["failures"] for p in parts),
                "per_s": round(statistics.median(p["per_s"] for p in parts), 1),
                "p50_ms": round(statistics.median(p["p50_ms"] for p in parts), 2),
                "p99_ms": round(statistics.median(p["p99_ms"] for p in parts), 2)}

    steady, during = merged(0), merged(1)
    result = {
        "machine": machine(), "clients": args.clients, "seconds": args.seconds,
        "rounds": [{"steady": st, "during_swaps": du} for st, du in rounds],
        "steady": steady, "during_swaps": during, "swaps": len(swaps),
        "move_to_all_replicas_s": {"median": round(statistics.median(swaps), 3),
                                   "max": round(max(swaps), 3),
                                   "all": [round(s, 3) for s in swaps]},
        "throughput_ratio": round(during["per_s"] / steady["per_s"], 3),
        "p99_ratio": round(during["p99_ms"] / steady["p99_ms"], 3),
    }
    print()
    print(f"steady (medians of {len(rounds)} rounds): {steady['per_s']:,} scores/s, "
          f"p50 {steady['p50_ms']} ms, p99 "
          f"{steady['p99_ms']} ms, {steady['failures']} failed")
    print(f"during {len(swaps)} swaps (medians of {len(rounds)} rounds): "
          f"{during['per_s']:,} scores/s "
          f"({result['throughput_ratio']}x), p50 {during['p50_ms']} ms, p99 "
          f"{during['p99_ms']} ms ({result['p99_ratio']}x), {during['failures']} failed")
    print(f"move to every replica on the new version: median "
          f"{result['move_to_all_replicas_s']['median']} s, max "
          f"{result['move_to_all_replicas_s']['max']} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())

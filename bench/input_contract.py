"""Cost of the input contract at the door: the payments source with the full contract
(rules 1-9, running balances, the CRC-32 of the input) against the same source with only
the validation it had before (strict JSON object, string ids, a positive integer amount,
duplicate ids), side by side on the same lines.

    .venv/bin/python bench/input_contract.py [--events N] [--repeat R]

Both read the same generated input through `PaymentsSource.poll` in this process (no
Ray: the source is one task, and this is its own CPU cost); rounds alternate, the
median of R is reported with every round.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import machine, median

from resilience.pipeline import OperatorContext
from fusion_jobs.payments.generator import generate
from fusion_jobs.payments.hostile import mix_hostile
from fusion_jobs.payments.job import PaymentsSource


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def before(raw: bytes) -> tuple[str, str, str, int] | str:
    """The validation of the previous release (no bounds: the poison pills got through)."""
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        return f"invalid: {e}"
    if not isinstance(doc, dict):
        return "not an object"
    fields = []
    for name in ("id", "from", "to"):
        value = doc.get(name)
        if not isinstance(value, str) or not value:
            return f"bad {name}"
        fields.append(value)
    amount = doc.get("amount")
    if type(amount) is not int or amount <= 0:
        return "bad amount"
    return fields[0], fields[1], fields[2], amount


class BeforeSource(PaymentsSource):
    """The source as it was: no balances kept, no bounds."""

    def poll(self, max_records: int) -> tuple[list[Any], bool]:
        lines = self.source.read_batch(max_records)
        out: list[Any] = []
        seen = self.seen
        for line_no, raw in lines:
            parsed = before(raw)
            if isinstance(parsed, str):
                self._dead_letter(line_no, parsed, raw)
                continue
            first = seen.get(parsed[0])
            if first is not None:
                self._dead_letter(line_no, "duplicate id", raw)
                continue
            seen.put(parsed[0], line_no)
            out.append((line_no, *parsed))
        return out, self.source.exhausted


def read_all(source_class: type[PaymentsSource], path: Path, workdir: Path) -> float:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "dead_letter.jsonl").unlink(missing_ok=True)
    source = source_class(str(path))
    source.open(OperatorContext("bench", "source-0", 0, 1, workdir))
    source.restore(None, [])  # type: ignore[arg-type] - a fresh start reads no store
    t0 = time.perf_counter()
    end = False
    while not end:
        _, end = source.poll(2000)
    took = time.perf_counter() - t0
    source.close()
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=400_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="bench-contract-") as scratch:
        root = Path(scratch)
        path = root / "in.jsonl"
        generate(path, events=args.events, accounts=10_000, seed=7)
        hostile = root / "hostile.jsonl"
        mix_hostile(path, hostile, count=200, seed=7)
        for name, data in (("generated input", path), ("with 200 hostile lines", hostile)):
            rounds: dict[str, list[float]] = {"before": [], "contract": []}
            for r in range(args.repeat):
                for label, cls in (("before", BeforeSource), ("contract", PaymentsSource)):
                    took = read_all(cls, data, root / f"w-{label}-{r}")
                    rounds[label].append(args.events / took)
            ratio = median(rounds["contract"]) / median(rounds["before"])
            print(f"{name}: {args.events:,} lines, lines/s median of {args.repeat}: "
                  f"before {median(rounds['before']):,.0f}, "
                  f"contract {median(rounds['contract']):,.0f}, ratio {ratio:.2f}")
            for label, values in rounds.items():
                print(f"  {label}: " + " · ".join(f"{v:,.0f}" for v in values))


if __name__ == "__main__":
    main()

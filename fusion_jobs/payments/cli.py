"""`resilience gen-payments`: the payments job's input generator as a sub-command.

Registered under the ``resilience.commands`` entry point group (pyproject.toml), as any
package may add a sub-command to `resilience`.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be > 0")
    return value


def register(sub: Any) -> dict[str, Any]:
    """Add `gen-payments`; return {command name: handler(args) -> exit code}."""
    from pathlib import Path

    g = sub.add_parser("gen-payments", help="write a deterministic payments input file")
    g.add_argument("--events", type=_positive_int, required=True,
                   help="lines to write (transfers, malformed lines and replays)")
    g.add_argument("--accounts", type=_positive_int, default=10_000,
                   help="distinct accounts (default 10000)")
    g.add_argument("--seed", type=int, default=1, help="the same seed writes the same file")
    g.add_argument("--out", type=Path, required=True, help="the file to write")
    g.add_argument("--invalid-rate", type=float, default=0.001,
                   help="share of deliberately malformed lines (default 0.001)")
    g.add_argument("--duplicate-rate", type=float, default=0.0005,
                   help="share of lines replaying an earlier id (default 0.0005)")
    g.add_argument("--hostile", type=int, default=0, metavar="N",
                   help="also insert N hostile lines (every kind of line that ever broke a "
                        "job, and valid ones on each boundary) and a balance bomb")
    g.add_argument("--no-labels", dest="labels", action="store_false",
                   help="write no labels file (by default the fraud labels of the transfers "
                        "go to OUT with .labels.jsonl for .jsonl)")
    g.add_argument("--label-delay-ms", type=int, default=None, metavar="MS",
                   help="event time from a transfer to its label (default 5000)")
    g.add_argument("--label-jitter-ms", type=int, default=2_000, metavar="MS",
                   help="up to this much more delay, drawn per label (default 2000)")
    g.add_argument("--poison-labels", type=_poison, default=None, metavar="START:END:SHARE",
                   help="flip SHARE of the labels of the transfers between fractions START "
                        "and END of the input, e.g. 0.4:0.6:0.3")
    return {"gen-payments": _gen}


def _poison(text: str) -> Any:
    from fusion_jobs.payments.generator import LabelPoison

    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise ValueError("expected START:END:SHARE")
        return LabelPoison(float(parts[0]), float(parts[1]), float(parts[2]))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None


def _gen(args: argparse.Namespace) -> int:
    from fusion_jobs.payments.generator import (
        LABEL_DELAY_MS,
        generate,
        generate_labels,
        labels_path_for,
    )
    from fusion_jobs.payments.hostile import mix_hostile
    from resilience import UserError

    if args.hostile < 0:
        raise UserError(f"--hostile must be >= 0, got {args.hostile}")
    if args.poison_labels is not None and not args.labels:
        raise UserError("--poison-labels needs labels: drop --no-labels")
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        stats = generate(args.out, events=args.events, accounts=args.accounts, seed=args.seed,
                         invalid_rate=args.invalid_rate, duplicate_rate=args.duplicate_rate)
        hostile = (mix_hostile(args.out, args.out, count=args.hostile, seed=args.seed)
                   if args.hostile else None)
        labels = None
        if args.labels:
            labels = generate_labels(
                args.out, seed=args.seed, jitter_ms=args.label_jitter_ms,
                delay_ms=LABEL_DELAY_MS if args.label_delay_ms is None else args.label_delay_ms,
                poison=args.poison_labels)
    except OSError as e:
        raise UserError(f"cannot write {args.out}: {e.strerror}") from e
    except ValueError as e:
        raise UserError(str(e)) from e
    print(f"wrote {args.out}: {stats.lines:,} lines ({stats.valid:,} valid, "
          f"{stats.invalid:,} malformed, {stats.duplicates:,} duplicate ids, "
          f"{stats.fraud:,} fraud)")
    if hostile is not None:
        print(f"  + {hostile.hostile:,} hostile lines ({hostile.valid_hostile:,} of them valid "
              f"on a boundary) and a balance bomb of {hostile.bomb:,} transfers (the last two "
              "out of range)")
    if labels is not None:
        poisoned = (f", {labels.poisoned:,} poisoned (flipped) for lines "
                    f"{labels.first_poisoned_line:,}-{labels.last_poisoned_line:,}"
                    if labels.poisoned else "")
        print(f"wrote {labels_path_for(args.out)}: {labels.labels:,} labels ({labels.fraud:,} "
              f"fraud, {labels.invalid:,} malformed or of unknown ids{poisoned})")
    return 0

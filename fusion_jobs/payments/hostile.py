"""Hostile input lines for drills: every way a line has broken a job, and the valid ones
that sit right at a boundary.

`mix_hostile(src, out, count=N, seed=S)` copies a generated input and inserts N
hostile lines at random places, plus one *balance bomb*: 1,026 transfers of the
largest amount between two fresh accounts, whose last two would take the balances
past the 64-bit range (rule 9 refuses them). `resilience gen-payments --hostile N`
does the same. Every kind breaks exactly one rule of the input contract, or is a
valid line on a boundary that must be applied; the independent checker decides which.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fusion_jobs.payments.contract import MAX_AMOUNT, MAX_ID_BYTES, MAX_LINE_BYTES

__all__ = ["BOMB_LINES", "HOSTILE_KINDS", "HostileStats", "hostile_line", "mix_hostile"]

BOMB_LINES = 1026
"""Lines of a balance bomb: 1,024 fit, the last two are out of range."""


def _transfer(tx_id: str, src: object = "acct-h1", dst: object = "acct-h2",
              amount: object = 100, **extra: object) -> bytes:
    doc = {"id": tx_id, "from": src, "to": dst, "amount": amount, **extra}
    return json.dumps(doc).encode()


def _raw(tx_id: str, amount: str = "100", extra: str = "") -> bytes:
    """A transfer written by hand, for what `json.dumps` will not write."""
    return (f'{{"id":"{tx_id}","from":"acct-h1","to":"acct-h2","amount":{amount}'
            f'{extra}}}').encode()


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


_KINDS: dict[str, Callable[[str], bytes]] = {
    # Rule 7: amounts past what every JSON reader agrees on, or not integers at all.
    "amount 2^53": lambda i: _transfer(i, amount=2**53),
    "amount 2^63": lambda i: _transfer(i, amount=2**63),
    "amount 2^64": lambda i: _transfer(i, amount=2**64),
    "amount 2^70": lambda i: _transfer(i, amount=2**70),
    "amount of 5,000 digits": lambda i: _raw(i, amount="9" * 5000),
    "amount 1e30": lambda i: _raw(i, amount="1e30"),
    "amount NaN": lambda i: _raw(i, amount="NaN"),
    "amount -Infinity": lambda i: _raw(i, amount="-Infinity"),
    "amount 0": lambda i: _transfer(i, amount=0),
    "amount true": lambda i: _transfer(i, amount=True),
    # Rule 5: lone surrogates, in each field, a key, an extra field, and hidden by a
    # repeated key.
    "id with a lone surrogate": lambda i: _raw("\\ud800" + i),
    "from with a lone surrogate": lambda i: _transfer(i).replace(b'"acct-h1"',
                                                                  b'"acct-\\udc00"'),
    "extra field with a lone surrogate": lambda i: _raw(i, extra=',"memo":"x\\udbff"'),
    "key with a lone surrogate": lambda i: _raw(i, extra=',"\\ud834":1'),
    "surrogate hidden by a repeated key": lambda i: _raw(i, extra=',"m":"\\ud800","m":1'),
    # Rules 3 and 4: nesting and structure.
    "nested 17 deep": lambda i: _raw(i, extra=',"x":' + _nested(16)),
    "nested 100,000 deep": lambda i: _raw(i, extra=',"x":' + _nested(100_000)),
    "an array 50,000 deep": lambda i: _nested(50_000).encode(),
    "not an object": lambda i: json.dumps([i, "acct-h1", "acct-h2", 100]).encode(),
    "truncated JSON": lambda i: _transfer(i)[:-3],
    "a NUL byte": lambda i: _transfer(i).replace(b'"acct-h2"', b'"acct\x00h2"'),
    "empty line": lambda i: b"",
    # Rule 2: not UTF-8.
    "not UTF-8": lambda i: _transfer(i).replace(b"acct-h2", b"acct-\xff\xfe"),
    "an encoded surrogate": lambda i: _transfer(i).replace(b"acct-h2", b"acct-\xed\xa0\x80"),
    # Rule 6: ids.
    "id of 257 bytes": lambda i: _transfer(i + "-" + "\u00e9" * ((MAX_ID_BYTES + 1) // 2)),
    "empty from": lambda i: _transfer(i, src=""),
    "numeric to": lambda i: _transfer(i, dst=7),
    # Rule 1.
    "line over 1 MiB": lambda i: _transfer(i, pad="p" * MAX_LINE_BYTES),
    # Valid on a boundary: these must be applied.
    "valid: largest amount": lambda i: _transfer(i, src="acct-h3", dst="acct-h4",
                                                 amount=MAX_AMOUNT),
    "valid: id of 256 bytes": lambda i: _transfer(
        i + "-" + "x" * (MAX_ID_BYTES - len(i.encode()) - 1)),
    "valid: a surrogate pair": lambda i: _raw(i + "\\ud83d\\ude00"),
    "valid: nested 16 deep": lambda i: _raw(i, extra=',"x":' + _nested(15)),
    "valid: brackets in a string": lambda i: _raw(i, extra=',"memo":"' + "[{" * 40 + '"'),
    "valid: unicode accounts": lambda i: _transfer(i, src="k\u00e4se", dst="\u6c34"),
    "valid: CRLF ending": lambda i: _transfer(i) + b"\r",
}

HOSTILE_KINDS: tuple[str, ...] = tuple(_KINDS)


def hostile_line(kind: str, tx_id: str) -> bytes:
    """A line of `kind` (one of `HOSTILE_KINDS`) with id `tx_id`, without its newline."""
    return _KINDS[kind](tx_id)


@dataclass(frozen=True)
class HostileStats:
    lines: int  # lines written in all
    hostile: int  # hostile lines inserted (the bomb not included)
    valid_hostile: int  # of them, valid lines on a boundary (to be applied)
    bomb: int  # lines of the balance bomb, of which two are out of range
    at: tuple[tuple[int, str], ...] = ()  # (line number, kind) of every hostile line


def _bomb(tag: str) -> list[bytes]:
    return [_transfer(f"bomb-{tag}-{n}", src=f"bomb-src-{tag}", dst=f"bomb-dst-{tag}",
                      amount=MAX_AMOUNT) for n in range(BOMB_LINES)]


def mix_hostile(src: Path, out: Path, *, count: int, seed: int) -> HostileStats:
    """Copy `src` to `out` with `count` hostile lines (every kind once, then drawn) and a
    balance bomb inserted at random places; the same seed gives the same file."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    rng = random.Random(seed)
    lines = src.read_bytes().split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # the newline of the last line
    kinds = [*HOSTILE_KINDS[:count], *(rng.choice(HOSTILE_KINDS)
                                       for _ in range(count - len(HOSTILE_KINDS)))]
    inserts = [hostile_line(kind, f"hostile-{seed}-{n}") for n, kind in enumerate(kinds)]
    bomb = _bomb(str(seed)) if count else []
    # The bomb stays in order (its last two lines must come last); the rest anywhere.
    positions = sorted(rng.randrange(len(lines) + 1) for _ in range(len(inserts)))
    bomb_at = rng.randrange(len(lines) + 1)
    # Kinds in the order they are inserted (positions were sorted, kinds were not).
    order = sorted(range(len(inserts)), key=lambda n: rng.random())
    out_lines: list[bytes] = []
    at: list[tuple[int, str]] = []
    k = 0
    for index in range(len(lines) + 1):
        while k < len(positions) and positions[k] == index:
            at.append((len(out_lines) + 1, kinds[order[k]]))
            out_lines.append(inserts[order[k]])
            k += 1
        if index == bomb_at:
            out_lines.extend(bomb)
        if index < len(lines):
            out_lines.append(lines[index])
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(b"\n".join(out_lines) + b"\n")
    os.replace(tmp, out)
    return HostileStats(lines=len(out_lines), hostile=len(inserts),
                        valid_hostile=sum(k.startswith("valid") for k in kinds), bomb=len(bomb),
                        at=tuple(at))

"""Deterministic input generator and fraud rule of the payments reference job.

``generate`` writes a JSON Lines file of money transfers, one a line::

    {"id":"tx-000000001","from":"acct-000042","to":"acct-000007","amount":1234,"ts":1700000000003}

Amounts are integer cents. Same arguments give a byte-identical file (one
``random.Random(seed)``, never the global generator), so a crash run and a
crash-free reference run read the very same input. A small share of lines is
deliberately malformed and a small share replays the id of a recent transfer, so
the job's dead-letter path is always exercised.

``is_fraud`` is the generator's fraud rule, a pure function the job's learning
stage uses as a delayed label oracle. The rule is exactly a half-space over the
learner's features, so an online logistic regression can learn it:

* ``bias``;
* ``log1p(amount) / 10``;
* one-hot of ``account_bucket(from)`` (``zlib.crc32`` of the UTF-8 bytes ``% 64``);
* one-hot of ``account_bucket(to)``;
* ``amount % 100 == 0`` (a whole number of dollars).

The rule: a transfer is fraud iff ``(amount + 1) * multiplier > 100_000_000`` where
``multiplier`` starts at 1 and is

* ``x 1000`` when the sender is *compromised*: ``crc32(from) % 16 == 0``, that is
  from-bucket 0, 16, 32 or 48;
* ``x 1000`` when the receiver is a *money mule*: ``crc32(to) % 64 == 37``;
* ``x 2`` when the amount is whole dollars.

Taking logarithms, fraud iff ``10 * (log1p(amount) / 10) + ln(1000) * compromised +
ln(1000) * mule + ln(2) * whole_dollars - ln(1e8) > 0``. In plain words:

==================  ==============  ==========================  =================
sender compromised  receiver mule   fraud when amount >=        if whole dollars
==================  ==============  ==========================  =================
no                  no              $1,000,000 (never emitted)  $500,000
yes                 no              $1,000                      $500
no                  yes             $1,000                      $500
yes                 yes             $1.00                       any
==================  ==============  ==========================  =================

The generator makes compromised senders send bursts of large transfers and mules
receive large round sums, so about 1-3 % of the applied transfers are fraud.
"""

from __future__ import annotations

import bisect
import itertools
import math
import os
import random
import re
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any, Final

__all__ = [
    "COMPROMISED_MODULUS",
    "FEATURE_BUCKETS",
    "FRAUD_LIMIT_CENTS",
    "LABEL_DELAY_MS",
    "MULE_BUCKET",
    "GenerateStats",
    "LabelPoison",
    "LabelStats",
    "account_bucket",
    "generate",
    "generate_labels",
    "is_fraud",
    "labels_path_for",
]

FEATURE_BUCKETS: Final = 64
"""Number of one-hot buckets per account feature: ``crc32(account) % 64``."""

COMPROMISED_MODULUS: Final = 16
"""A sender is compromised iff ``crc32(from) % 16 == 0`` (4 of the 64 from-buckets)."""

MULE_BUCKET: Final = 37
"""A receiver is a money mule iff ``crc32(to) % 64 == 37`` (one to-bucket)."""

FRAUD_LIMIT_CENTS: Final = 100_000_000
"""Fraud iff ``(amount + 1) * multiplier`` exceeds this ($1,000,000 in cents)."""

_COMPROMISED_FACTOR: Final = 1000
_MULE_FACTOR: Final = 1000
_WHOLE_DOLLAR_FACTOR: Final = 2

# Traffic shape. Senders and receivers follow a Zipf law over a shuffled account
# list: a handful of hot accounts (merchants, payroll) and a long cold tail.
_ZIPF_EXPONENT: Final = 1.05
# Ordinary amounts are log-normal: median $25, a long tail, capped well below the
# plain-fraud limit so that fraud needs a compromised sender or a mule receiver.
_AMOUNT_LOG_MEDIAN: Final = math.log(2_500)
_AMOUNT_LOG_SIGMA: Final = 1.3
_MAX_AMOUNT_CENTS: Final = 2_000_000
_WHOLE_DOLLAR_SHARE: Final = 0.2
_AMOUNT_QUANTILES: Final = 4096
# Injected fraud, as shares of the ordinary transfers; with the transfers that
# happen to hit a compromised sender or a mule, the fraud rate lands near 2 %.
_TAKEOVER_SHARE: Final = 0.012
_MULE_SHARE: Final = 0.004
# At-least-once delivery replays recent messages, so duplicates reuse an id from
# this many latest transfers; some replays even carry a different amount, which
# the job must still reject on the id alone.
_REPLAY_WINDOW: Final = 2048
_CONFLICTING_REPLAY_SHARE: Final = 0.1
_BASE_TS_MS: Final = 1_700_000_000_000
# Lines are written, and progress reported, in blocks of this many lines.
_BLOCK_LINES: Final = 10_000


@dataclass(frozen=True)
class GenerateStats:
    """What ``generate`` wrote.

    ``lines == valid + invalid + duplicates``. ``valid`` counts the distinct
    transfers the job must apply (first occurrence of each id), ``duplicates`` the
    well-formed replays of an earlier id, ``invalid`` the malformed lines, and
    ``fraud`` how many of the ``valid`` transfers ``is_fraud`` flags.
    """

    lines: int
    valid: int
    invalid: int
    duplicates: int
    fraud: int


def account_bucket(account: str) -> int:
    """Return the one-hot feature bucket of an account: ``crc32(UTF-8) % 64``."""
    return zlib.crc32(account.encode("utf-8")) % FEATURE_BUCKETS


def _is_compromised(account: str) -> bool:
    return zlib.crc32(account.encode("utf-8")) % COMPROMISED_MODULUS == 0


def _is_mule(account: str) -> bool:
    return account_bucket(account) == MULE_BUCKET


def is_fraud(from_account: str, to_account: str, amount: int) -> bool:
    """Return the ground-truth fraud label of a transfer (see the module docstring).

    Pure and exact (integer arithmetic only), so the job, the tests and the
    generator agree on every label, on every platform.
    """
    multiplier = 1
    if _is_compromised(from_account):
        multiplier *= _COMPROMISED_FACTOR
    if _is_mule(to_account):
        multiplier *= _MULE_FACTOR
    if amount % 100 == 0:
        multiplier *= _WHOLE_DOLLAR_FACTOR
    return (amount + 1) * multiplier > FRAUD_LIMIT_CENTS


def _transfer_json(tx_id: str, sender: str, receiver: str, amount: int, ts: int) -> str:
    # Ids and account names are generated ASCII without quotes or backslashes, so
    # an f-string is valid JSON and several times faster than json.dumps.
    return f'{{"id":"{tx_id}","from":"{sender}","to":"{receiver}","amount":{amount},"ts":{ts}}}'


def _malformed(
    rng: random.Random, tx_id: str, sender: str, receiver: str, amount: int, *, ts: int
) -> str:
    """Return one line that a correct consumer must reject (never a valid transfer)."""
    fields = {
        "id": f'"{tx_id}"',
        "from": f'"{sender}"',
        "to": f'"{receiver}"',
        "amount": str(amount),
    }
    kind = rng.randrange(12)
    if kind == 0:  # a write torn mid-line: every strict prefix of an object is bad JSON
        whole = _transfer_json(tx_id, sender, receiver, amount, ts)
        return whole[: rng.randrange(1, len(whole) - 1)]
    if kind == 1:  # hand-edited or foreign-producer JSON
        return rng.choice(
            [
                f'{{"id":"{tx_id}","from":"{sender}","to":"{receiver}","amount":{amount},}}',
                f"{{'id':'{tx_id}','from':'{sender}','to':'{receiver}','amount':{amount}}}",
                f'{{id:"{tx_id}",from:"{sender}",to:"{receiver}",amount:{amount}}}',
                f'{{"id":"{tx_id}" "from":"{sender}","to":"{receiver}","amount":{amount}}}',
                f'{{"id":"{tx_id}","from":"{sender}","to":"{receiver}","amount":NaN}}',
                "#" + tx_id,
                "",
            ]
        )
    if kind == 2:  # valid JSON that is not an object
        return rng.choice(
            [f'["{tx_id}","{sender}","{receiver}",{amount}]', f'"{tx_id}"', str(amount), "null"]
        )
    if kind == 3:
        del fields[rng.choice(["id", "from", "to", "amount"])]
    elif kind == 4:
        fields["amount"] = "0"
    elif kind == 5:
        fields["amount"] = str(-amount)
    elif kind == 6:
        fields["amount"] = rng.choice([f"{amount}.0", f"{amount / 100:.2f}", f"{amount}e0"])
    elif kind == 7:
        fields["amount"] = f'"{amount}"'
    elif kind == 8:
        fields["amount"] = rng.choice(["true", "false", "null"])
    elif kind == 9:
        fields["id"] = rng.choice([tx_id[3:].lstrip("0") or "0", "null", '""', f'["{tx_id}"]'])
    elif kind == 10:
        fields[rng.choice(["from", "to"])] = rng.choice(['""', "42", "null", "{}"])
    else:
        fields["amount"] = rng.choice(["[]", "{}", f'{{"cents":{amount}}}'])
    return "{" + ",".join(f'"{name}":{value}' for name, value in fields.items()) + "}"


def _amount_quantiles() -> list[float]:
    """Return evenly spaced quantiles of the ordinary log-normal amount law.

    Sampling by inverse CDF from this table costs one random draw and no
    ``gauss`` call, which keeps ``generate`` well inside its time budget.
    """
    law = NormalDist(_AMOUNT_LOG_MEDIAN, _AMOUNT_LOG_SIGMA)
    steps = _AMOUNT_QUANTILES
    return [math.exp(law.inv_cdf((step + 0.5) / (steps + 1))) for step in range(steps + 1)]


def _check_arguments(
    events: int, accounts: int, invalid_rate: float, duplicate_rate: float
) -> None:
    if events < 0:
        raise ValueError(f"events must be >= 0, got {events}")
    if accounts < 2:
        raise ValueError(f"accounts must be >= 2 (a transfer needs two accounts), got {accounts}")
    for name, rate in (("invalid_rate", invalid_rate), ("duplicate_rate", duplicate_rate)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be within [0, 1], got {rate}")
    if invalid_rate + duplicate_rate > 1.0:
        raise ValueError(
            f"invalid_rate + duplicate_rate must be <= 1, got {invalid_rate + duplicate_rate}"
        )


def generate(
    out: Path,
    *,
    events: int,
    accounts: int,
    seed: int,
    invalid_rate: float = 0.001,
    duplicate_rate: float = 0.0005,
    progress: Callable[[int], None] | None = None,
) -> GenerateStats:
    """Write ``events`` lines of payments input to ``out`` and return what was written.

    ``events`` counts lines: about ``invalid_rate`` of them are malformed (bad or
    truncated JSON, not an object, a missing field, an amount that is zero,
    negative, a float, a string, a bool or null, an id or account of the wrong
    type or empty) and about ``duplicate_rate`` replay the id of a recent valid
    transfer; the rest are distinct valid transfers. A new id is the line number,
    ``tx-000000001`` and up, so valid ids have gaps where malformed lines (which
    use their number as id when they have one) and replays sit. Accounts are
    ``acct-000000`` .. ``acct-{accounts-1:06d}`` and never send to themselves.

    The file is written to ``out.tmp`` and renamed into place, so a reader never
    sees a half-written input; on an error the temporary file is removed.
    ``progress``, when given, is called with the number of lines written so far
    after every 10,000 lines and after the last one (its last call reports
    ``events``).

    Raises ValueError for a negative ``events``, fewer than 2 accounts or rates
    outside [0, 1].
    """
    _check_arguments(events, accounts, invalid_rate, duplicate_rate)
    rng = random.Random(seed)
    names = [f"acct-{index:06d}" for index in range(accounts)]
    # Shuffle so the hot ranks land on arbitrary ids rather than on acct-000000...
    rng.shuffle(names)
    cumulative = list(
        itertools.accumulate(1.0 / (rank + 1) ** _ZIPF_EXPONENT for rank in range(accounts))
    )
    total_weight = cumulative[-1]
    last_index = accounts - 1
    # The fraud factors per account index, so the loop needs no crc32 per line;
    # a test pins that the inlined rule counts exactly what is_fraud says.
    sender_factor = [_COMPROMISED_FACTOR if _is_compromised(name) else 1 for name in names]
    receiver_factor = [_MULE_FACTOR if _is_mule(name) else 1 for name in names]
    compromised = [index for index, factor in enumerate(sender_factor) if factor > 1]
    mules = [index for index, factor in enumerate(receiver_factor) if factor > 1]
    quantiles = _amount_quantiles()
    quantile_steps = len(quantiles) - 1

    # Local aliases: the loop below runs once per line and dominates the run time.
    draw = rng.random
    locate = bisect.bisect_right
    duplicate_cutoff = invalid_rate + duplicate_rate
    recent: deque[tuple[str, int, int, int]] = deque(maxlen=_REPLAY_WINDOW)
    valid = invalid = duplicates = fraud = 0
    ts = _BASE_TS_MS
    tmp = out.with_name(out.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8", newline="\n", buffering=1 << 20) as sink:
            for block_start in range(1, events + 1, _BLOCK_LINES):
                block_end = min(block_start + _BLOCK_LINES, events + 1)
                lines: list[str] = []
                for number in range(block_start, block_end):
                    ts += 1 + int(draw() * 20)
                    roll = draw()
                    if invalid_rate <= roll < duplicate_cutoff and recent:
                        tx_id, sender, receiver, amount = recent[int(draw() * len(recent))]
                        if draw() < _CONFLICTING_REPLAY_SHARE:
                            amount += 1 + int(draw() * 1000)
                        lines.append(
                            _transfer_json(tx_id, names[sender], names[receiver], amount, ts)
                        )
                        duplicates += 1
                        continue
                    kind = draw()
                    if kind < _TAKEOVER_SHARE and compromised:
                        # Account takeover: a compromised sender drains money in large sums.
                        sender = compromised[int(draw() * len(compromised))]
                        receiver = locate(cumulative, draw() * total_weight, 0, last_index)
                        amount = 100_000 + int(math.exp(rng.gauss(11.5, 0.8)))
                        if draw() < 0.5:
                            amount -= amount % 100
                    elif kind < _TAKEOVER_SHARE + _MULE_SHARE and mules:
                        # Mules collect round sums just above their threshold.
                        sender = locate(cumulative, draw() * total_weight, 0, last_index)
                        receiver = mules[int(draw() * len(mules))]
                        amount = 100 * (500 + int(draw() * 4500))
                    else:
                        sender = locate(cumulative, draw() * total_weight, 0, last_index)
                        receiver = locate(cumulative, draw() * total_weight, 0, last_index)
                        position = draw() * quantile_steps
                        step = int(position)
                        low = quantiles[step]
                        amount = int(low + (quantiles[step + 1] - low) * (position - step))
                        amount = min(max(amount, 1), _MAX_AMOUNT_CENTS)
                        if draw() < _WHOLE_DOLLAR_SHARE:
                            amount = max(100, amount - amount % 100)
                    while receiver == sender:
                        receiver = locate(cumulative, draw() * total_weight, 0, last_index)
                    tx_id = f"tx-{number:09d}"
                    if roll < invalid_rate:
                        lines.append(
                            _malformed(rng, tx_id, names[sender], names[receiver], amount, ts=ts)
                        )
                        invalid += 1
                        continue
                    # Inlined _transfer_json: a function call per line is measurable here.
                    lines.append(
                        f'{{"id":"{tx_id}","from":"{names[sender]}","to":"{names[receiver]}",'
                        f'"amount":{amount},"ts":{ts}}}'
                    )
                    recent.append((tx_id, sender, receiver, amount))
                    valid += 1
                    multiplier = sender_factor[sender] * receiver_factor[receiver]
                    if amount % 100 == 0:
                        multiplier *= _WHOLE_DOLLAR_FACTOR
                    if (amount + 1) * multiplier > FRAUD_LIMIT_CENTS:
                        fraud += 1
                lines.append("")  # so that the join ends the block's last line too
                sink.write("\n".join(lines))
                if progress is not None:
                    progress(block_end - 1)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return GenerateStats(
        lines=events, valid=valid, invalid=invalid, duplicates=duplicates, fraud=fraud
    )


# -- labels -------------------------------------------------------------------------------

_TS = re.compile(rb'"ts":\s*(\d{1,18})[,}\s]')

LABEL_DELAY_MS: Final = 5_000
"""Event time between a transfer and its label by default (chargebacks come late)."""


def labels_path_for(transfers: Path) -> Path:
    """Where the labels of a transfers file live: ``payments.jsonl`` ->
    ``payments.labels.jsonl``."""
    name = transfers.name
    stem = name[:-len(".jsonl")] if name.endswith(".jsonl") else name
    return transfers.with_name(stem + ".labels.jsonl")


@dataclass(frozen=True)
class LabelPoison:
    """Flip a share of the labels of the transfers between two fractions of the input."""

    start: float  # fraction of the transfers lines where the poisoned stretch begins
    end: float
    share: float  # probability that a label in the stretch is flipped

    def __post_init__(self) -> None:
        if not 0.0 <= self.start < self.end <= 1.0:
            raise ValueError(f"poison stretch must satisfy 0 <= start < end <= 1, got "
                             f"{self.start}..{self.end}")
        if not 0.0 < self.share <= 1.0:
            raise ValueError(f"poison share must be in (0, 1], got {self.share}")


@dataclass(frozen=True)
class LabelStats:
    """What ``generate_labels`` wrote."""

    labels: int
    fraud: int
    poisoned: int  # labels flipped
    invalid: int  # malformed label lines, and labels of ids no transfer has
    first_poisoned_line: int | None  # transfers line of the first flipped label
    last_poisoned_line: int | None


def generate_labels(
    transfers: Path,
    out: Path | None = None,
    *,
    seed: int = 1,
    delay_ms: int = LABEL_DELAY_MS,
    jitter_ms: int = 2_000,
    invalid_rate: float = 0.0005,
    poison: LabelPoison | None = None,
) -> LabelStats:
    """Write the fraud label of every valid transfer of ``transfers``, in event-time order.

    One line a label, ``{"id": "tx-...", "fraud": true, "ts": ...}``: ``fraud`` is
    `is_fraud` of the transfer (flipped with probability ``poison.share`` for the transfers
    in the poisoned stretch) and ``ts`` the transfer's own plus ``delay_ms`` and up to
    ``jitter_ms`` more. The job releases a label once the transfers it has read reach the
    label's ``ts``. About ``invalid_rate`` of the lines are malformed or name an id no
    transfer has (the job must dead-letter them). Deterministic in its arguments; written to
    a temporary file and renamed into place.
    """
    import heapq
    import json

    from fusion_jobs.payments.contract import parse_transfer

    if delay_ms < 0 or jitter_ms < 0:
        raise ValueError("delay_ms and jitter_ms must be >= 0")
    if not 0.0 <= invalid_rate <= 1.0:
        raise ValueError(f"invalid_rate must be in [0, 1], got {invalid_rate}")
    out = labels_path_for(transfers) if out is None else out
    rng = random.Random(seed ^ 0x1ABE1)
    total = sum(1 for _ in transfers.open("rb"))
    lo = hi = 0
    if poison is not None:
        lo, hi = int(poison.start * total), int(poison.end * total)
    seen: set[str] = set()
    heap: list[tuple[int, int, str]] = []
    labels = fraud = poisoned = invalid = 0
    first_bad: int | None = None
    last_bad: int | None = None
    tmp = out.with_name(out.name + ".tmp")

    def emit(sink: Any, until_ts: float) -> None:
        while heap and heap[0][0] <= until_ts:
            _, _, line = heapq.heappop(heap)
            sink.write(line)

    try:
        with transfers.open("rb") as source, tmp.open("w", encoding="utf-8", newline="\n",
                                                      buffering=1 << 20) as sink:
            for number, raw in enumerate(source, start=1):
                parsed = parse_transfer(raw.rstrip(b"\r\n"))
                if isinstance(parsed, str):
                    continue
                tx_id, src, dst, amount = parsed
                if tx_id in seen:
                    continue
                seen.add(tx_id)
                found = _TS.search(raw)
                ts = int(found.group(1)) if found else 0
                emit(sink, ts)
                label = is_fraud(src, dst, amount)
                if lo <= number < hi and rng.random() < (poison.share if poison else 0.0):
                    label = not label
                    poisoned += 1
                    first_bad = number if first_bad is None else first_bad
                    last_bad = number
                fraud += label
                labels += 1
                due = ts + delay_ms + (int(rng.random() * jitter_ms) if jitter_ms else 0)
                quoted = json.dumps(tx_id)
                line = f'{{"id":{quoted},"fraud":{"true" if label else "false"},"ts":{due}}}\n'

                if rng.random() < invalid_rate:
                    invalid += 1
                    line = rng.choice([
                        f'{{"id":{quoted},"fraud":"yes","ts":{due}}}\n',
                        f'{{"id":"unknown-{number}","fraud":false,"ts":{due}}}\n',
                        f'{{"id":{quoted},"fraud":tr\n',
                    ])
                heapq.heappush(heap, (due, number, line))
            emit(sink, math.inf)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return LabelStats(labels, fraud, poisoned, invalid, first_bad, last_bad)

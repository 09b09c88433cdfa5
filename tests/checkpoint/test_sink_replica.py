"""SQLiteTwoPhaseSink as a standby's replica: fenced staging, the commit log, fingerprints,
whole copies. A primary and a replica fed the same checkpoints must hold the same rows."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from checkpoint import FencedOut, SQLiteTwoPhaseSink

COLUMNS = (("ord", "INTEGER"), ("account", "TEXT"), ("delta", "INTEGER"),
           ("balance_after", "INTEGER"))
BALANCES_DDL = "CREATE TABLE IF NOT EXISTS balances (account TEXT PRIMARY KEY, balance INTEGER)"
BALANCES_UPSERT = (
    "INSERT INTO balances (account, balance) "
    "SELECT account, balance_after FROM ("
    "  SELECT account, balance_after, max(seq) FROM {staging} "
    "  WHERE ckpt > :lo AND ckpt <= :hi GROUP BY account"
    ") WHERE true "
    "ON CONFLICT(account) DO UPDATE SET balance = excluded.balance"
)


def open_sink(path: Path) -> SQLiteTwoPhaseSink:
    sink = SQLiteTwoPhaseSink(path, table="postings", columns=COLUMNS,
                              on_commit=[BALANCES_UPSERT], extra_ddl=[BALANCES_DDL])
    sink.open()
    return sink


def make_rows(start: int, n: int, balances: dict[str, int]) -> list[tuple[Any, ...]]:
    out = []
    for ordinal in range(start, start + n):
        account = f"acc-{ordinal % 5}"
        delta = (ordinal * 37) % 101 - 50
        balances[account] = balances.get(account, 0) + delta
        out.append((ordinal, ordinal, account, delta, balances[account]))
    return out


def table(path: Path, name: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT * FROM {name} ORDER BY rowid").fetchall()


def test_a_replica_fed_the_same_checkpoints_holds_the_same_rows_and_fingerprints(
    tmp_path: Path,
) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    primary, replica = open_sink(tmp_path / "a.sqlite"), open_sink(tmp_path / "b.sqlite")
    balances: dict[str, int] = {}
    ordinal = 0
    for checkpoint_id in range(1, 40):
        rows = make_rows(ordinal, rng.randrange(0, 30), balances)
        ordinal += len(rows)
        staged = primary.above_replay_floor(rows)
        primary.precommit(checkpoint_id, staged)
        replica.stage_replica(checkpoint_id, [r[1:] for r in staged], fencing_epoch=1)
        if rng.random() < 0.7:  # some checkpoints never complete: a later one commits them
            primary.commit(checkpoint_id, 1, ordinal)
            replica.commit(checkpoint_id, 1, ordinal)
    primary.commit(40, 1, ordinal)
    replica.commit(40, 1, ordinal)
    assert table(tmp_path / "a.sqlite", "postings") == table(tmp_path / "b.sqlite", "postings")
    assert table(tmp_path / "a.sqlite", "balances") == table(tmp_path / "b.sqlite", "balances")
    for through in (None, 1, 17, 40):
        a = SQLiteTwoPhaseSink.fingerprint(tmp_path / "a.sqlite", through)
        b = SQLiteTwoPhaseSink.fingerprint(tmp_path / "b.sqlite", through)
        assert a == b
        assert len(a) == 1
    full = SQLiteTwoPhaseSink.fingerprint(tmp_path / "a.sqlite")[0]
    assert (full.rows, full.checkpoint_id) == (ordinal, 40)
    # One changed value anywhere changes the digest.
    with sqlite3.connect(tmp_path / "b.sqlite") as db:
        db.execute("UPDATE postings SET delta = delta + 1 WHERE rowid = 3")
    assert (SQLiteTwoPhaseSink.fingerprint(tmp_path / "b.sqlite")[0].digest != full.digest)


def test_the_commit_log_records_every_commit_and_nothing_else(tmp_path: Path) -> None:
    sink = open_sink(tmp_path / "a.sqlite")
    balances: dict[str, int] = {}
    sink.precommit(1, make_rows(0, 3, balances))
    sink.precommit(2, make_rows(3, 4, balances))
    sink.commit(2, 5, 7)
    sink.commit(2, 5, 7)  # again: changes nothing
    sink.precommit(3, make_rows(7, 1, balances))
    sink.recover(3, 6, 8)
    log = SQLiteTwoPhaseSink.read_commits(tmp_path / "a.sqlite")
    assert [(c.checkpoint_id, c.fencing_epoch, c.rows, c.watermark) for c in log] == [
        (2, 5, 7, 7), (3, 6, 1, 8)]
    assert SQLiteTwoPhaseSink.read_commits(tmp_path / "none.sqlite") == []


def test_replica_staging_is_idempotent_and_fenced(tmp_path: Path) -> None:
    replica = open_sink(tmp_path / "b.sqlite")
    cols: Sequence[Sequence[Any]] = [(1, "acc-1", 5, 5), (2, "acc-2", -5, -5)]
    assert replica.stage_replica(1, cols, fencing_epoch=3) == 2
    assert replica.stage_replica(1, cols, fencing_epoch=3) == 2  # re-sent: replaced
    assert replica.staged_count() == 2
    replica.commit(1, 3, 2)
    assert replica.stage_replica(1, cols, fencing_epoch=3) == 0  # committed: nothing staged
    # The site took over under epoch 4 (its recover records it): epoch 3 is deposed.
    replica.recover(1, 4, 2)
    with pytest.raises(FencedOut):
        replica.stage_replica(2, cols, fencing_epoch=3)
    assert replica.staged_count() == 0
    assert len(table(tmp_path / "b.sqlite", "postings")) == 2


def test_a_whole_copy_replaces_a_diverged_replica_and_is_fenced(tmp_path: Path) -> None:
    primary, replica = open_sink(tmp_path / "a.sqlite"), open_sink(tmp_path / "b.sqlite")
    balances: dict[str, int] = {}
    primary.precommit(1, make_rows(0, 10, balances))
    primary.commit(1, 2, 10)
    primary.precommit(2, make_rows(10, 5, balances))  # staged, not committed
    # The replica diverged: it committed rows of its own reign (epoch 1).
    replica.precommit(1, make_rows(100, 3, {}))
    replica.commit(1, 1, 3)
    progress = primary.export_copy(tmp_path / "copy.sqlite")
    assert (progress.last_committed, progress.fencing_epoch, progress.watermark) == (1, 2, 10)
    replica.import_copy(tmp_path / "copy.sqlite", fencing_epoch=2)
    for name in ("postings", "balances", "_staging_postings", "_resilience_commits"):
        assert table(tmp_path / "a.sqlite", name) == table(tmp_path / "b.sqlite", name), name
    # The copy's staged rows commit at the replica exactly as at the primary.
    primary.commit(2, 2, 15)
    replica.commit(2, 2, 15)
    assert table(tmp_path / "a.sqlite", "postings") == table(tmp_path / "b.sqlite", "postings")
    assert SQLiteTwoPhaseSink.fingerprint(tmp_path / "a.sqlite") == \
        SQLiteTwoPhaseSink.fingerprint(tmp_path / "b.sqlite")
    replica.recover(2, 7, 15)  # this site leads now, under epoch 7
    with pytest.raises(FencedOut):
        replica.import_copy(tmp_path / "copy.sqlite", fencing_epoch=2)
    assert len(table(tmp_path / "b.sqlite", "postings")) == 15

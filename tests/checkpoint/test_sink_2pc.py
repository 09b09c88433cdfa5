"""SQLiteTwoPhaseSink: staging, commit, recover, fencing, the replay floor, crash durability."""

from __future__ import annotations

import pickle
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from checkpoint import FencedOut, SinkOwnedElsewhere, SQLiteTwoPhaseSink, TwoPhaseCommitSink

PROJECT_ROOT = Path(__file__).resolve().parents[2]

COLUMNS = (("ord", "INTEGER"), ("account", "TEXT"), ("delta", "INTEGER"),
           ("balance_after", "INTEGER"))

# As in fusion_jobs/payments/job.py: the last balance_after of each account in
# the committed range, upserted in the commit transaction.
BALANCES_DDL = "CREATE TABLE IF NOT EXISTS balances (account TEXT PRIMARY KEY, balance INTEGER)"
BALANCES_UPSERT = (
    "INSERT INTO balances (account, balance) "
    "SELECT account, balance_after FROM ("
    "  SELECT account, balance_after, max(seq) FROM {staging} "
    "  WHERE ckpt > :lo AND ckpt <= :hi GROUP BY account"
    ") WHERE true "
    "ON CONFLICT(account) DO UPDATE SET balance = excluded.balance"
)

Row = tuple[Any, ...]
MakeSink = Callable[..., SQLiteTwoPhaseSink]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite"


@pytest.fixture
def make_sink(db_path: Path) -> Iterator[MakeSink]:
    sinks: list[SQLiteTwoPhaseSink] = []

    def make(**kwargs: Any) -> SQLiteTwoPhaseSink:
        options: dict[str, Any] = {"table": "postings", "columns": COLUMNS}
        options.update(kwargs)
        sink = SQLiteTwoPhaseSink(db_path, **options)
        sink.open()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.close()


@pytest.fixture
def sink(make_sink: MakeSink) -> SQLiteTwoPhaseSink:
    return make_sink(on_commit=[BALANCES_UPSERT], extra_ddl=[BALANCES_DDL])


class Ledger:
    """Generates posting rows (ordinal, *columns) with running balances, like the payments job."""

    def __init__(self) -> None:
        self.balances: dict[str, int] = {}
        self.next_ordinal = 0

    def rows(self, n: int, accounts: Sequence[str] = ("acc-a", "acc-b", "acc-c")) -> list[Row]:
        out = []
        for _ in range(n):
            ordinal = self.next_ordinal
            self.next_ordinal += 1
            account = accounts[ordinal % len(accounts)]
            delta = ordinal % 7 - 3
            self.balances[account] = self.balances.get(account, 0) + delta
            out.append((ordinal, ordinal, account, delta, self.balances[account]))
        return out


def visible(rows: Sequence[Row]) -> list[Row]:
    """What the visible table holds for precommitted rows: the columns without the ordinal."""
    return [tuple(r[1:]) for r in rows]


def balances(db_path: Path) -> dict[str, int]:
    with sqlite3.connect(db_path) as conn:
        return dict(conn.execute("SELECT account, balance FROM balances").fetchall())


def other_reader_rows(db_path: Path) -> list[Row]:
    """Rows as another process sees them (a separate connection)."""
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute("SELECT * FROM postings ORDER BY rowid").fetchall()
    finally:
        conn.close()


# -- commit ---------------------------------------------------------------------------------


def test_is_a_two_phase_commit_sink(sink: SQLiteTwoPhaseSink) -> None:
    assert isinstance(sink, TwoPhaseCommitSink)


def test_precommitted_rows_are_invisible_until_commit(
    sink: SQLiteTwoPhaseSink, db_path: Path
) -> None:
    ledger = Ledger()
    rows = ledger.rows(10)
    sink.precommit(1, rows)
    assert list(sink.rows()) == []
    assert other_reader_rows(db_path) == []
    assert balances(db_path) == {}
    assert sink.staged_count() == 10
    assert sink.last_committed() == 0
    assert sink.commit(1, fencing_epoch=1) == 10
    assert list(sink.rows()) == visible(rows)
    assert other_reader_rows(db_path) == visible(rows)
    assert balances(db_path) == ledger.balances
    assert sink.staged_count() == 0
    assert sink.last_committed() == 1
    assert sink.fencing_epoch() == 1


def test_commit_moves_rows_up_to_n_in_order_and_is_idempotent(sink: SQLiteTwoPhaseSink) -> None:
    ledger = Ledger()
    first, second, third = ledger.rows(5), ledger.rows(4), ledger.rows(3)
    sink.precommit(1, first[:2])
    sink.precommit(1, first[2:])  # several precommits of one checkpoint add up
    sink.precommit(2, second)
    sink.precommit(3, third)
    assert sink.commit(2, fencing_epoch=1) == 9
    assert list(sink.rows()) == visible(first + second)
    assert sink.staged_count() == 3
    # Again, and an older one: nothing moves, nothing is duplicated.
    assert sink.commit(2, fencing_epoch=1) == 0
    assert sink.commit(1, fencing_epoch=1) == 0
    assert list(sink.rows()) == visible(first + second)
    assert sink.last_committed() == 2
    assert sink.commit(3, fencing_epoch=1) == 3
    assert list(sink.rows()) == visible(first + second + third)
    assert sink.commit(3, fencing_epoch=1) == 0
    assert list(sink.rows()) == visible(first + second + third)
    assert sink.last_committed() == 3


def test_commit_skipping_ids_moves_everything_up_to_n(sink: SQLiteTwoPhaseSink) -> None:
    ledger = Ledger()
    a, b = ledger.rows(3), ledger.rows(3)
    sink.precommit(4, a)
    sink.precommit(9, b)
    assert sink.commit(7, fencing_epoch=1) == 3
    assert sink.commit(12, fencing_epoch=1) == 3
    assert list(sink.rows()) == visible(a + b)


def test_on_commit_hooks_run_in_the_commit_transaction(
    make_sink: MakeSink, db_path: Path
) -> None:
    guard_ddl = "CREATE TABLE IF NOT EXISTS guard (hi INTEGER CHECK (hi < 3))"
    sink = make_sink(
        on_commit=[BALANCES_UPSERT, "INSERT INTO guard VALUES (:hi)"],
        extra_ddl=[BALANCES_DDL, guard_ddl],
    )
    ledger = Ledger()
    rows1 = ledger.rows(6)
    after_one = dict(ledger.balances)
    rows2 = ledger.rows(6)
    sink.precommit(1, rows1)
    assert sink.commit(1, fencing_epoch=1) == 6
    assert balances(db_path) == after_one
    sink.precommit(3, rows2)
    # The hook fails for checkpoint 3: the rows, the balances and the metadata stay as before.
    with pytest.raises(sqlite3.IntegrityError):
        sink.commit(3, fencing_epoch=1)
    assert list(sink.rows()) == visible(rows1)
    assert balances(db_path) == after_one
    assert sink.last_committed() == 1
    assert sink.staged_count() == 6
    # The sink is still usable afterwards.
    assert sink.commit(2, fencing_epoch=1) == 0  # nothing tagged <= 2 is staged
    assert sink.last_committed() == 2


def test_balances_follow_commits_across_checkpoints(
    sink: SQLiteTwoPhaseSink, db_path: Path
) -> None:
    ledger = Ledger()
    snapshots = []
    for checkpoint_id in range(1, 6):
        sink.precommit(checkpoint_id, ledger.rows(checkpoint_id * 3, accounts=("x", "y")))
        snapshots.append(dict(ledger.balances))
    sink.commit(2, fencing_epoch=1)
    assert balances(db_path) == snapshots[1]
    sink.commit(5, fencing_epoch=1)
    assert balances(db_path) == snapshots[4]


# -- recover ----------------------------------------------------------------------------------


def test_recover_commits_up_to_n_and_discards_the_rest(sink: SQLiteTwoPhaseSink) -> None:
    ledger = Ledger()
    one, two, three = ledger.rows(2), ledger.rows(2), ledger.rows(2)
    sink.precommit(1, one)
    sink.precommit(2, two)
    sink.precommit(3, three)
    sink.commit(1, fencing_epoch=1)
    # Restore from checkpoint 2, whose commit announcement was lost in the crash.
    assert sink.recover(2, fencing_epoch=2, watermark=4) == 2
    assert list(sink.rows()) == visible(one + two)
    assert sink.staged_count() == 0  # checkpoint 3's rows are replayed, not kept
    assert sink.last_committed() == 2
    assert sink.fencing_epoch() == 2
    assert sink.committed_watermark() == 4
    assert sink.replay_floor == 0


def test_recover_from_zero_discards_everything_staged(sink: SQLiteTwoPhaseSink) -> None:
    sink.precommit(1, Ledger().rows(3))
    assert sink.recover(0, fencing_epoch=1) == 0
    assert sink.staged_count() == 0
    assert list(sink.rows()) == []
    assert sink.last_committed() == 0


def test_abort_after_discards_only_later_checkpoints(sink: SQLiteTwoPhaseSink) -> None:
    ledger = Ledger()
    keep, drop = ledger.rows(2), ledger.rows(5)
    sink.precommit(1, keep)
    sink.precommit(2, drop)
    assert sink.abort_after(1) == 5
    assert sink.commit(2, fencing_epoch=1) == 2
    assert list(sink.rows()) == visible(keep)


# -- fencing --------------------------------------------------------------------------------


def test_commit_with_an_older_epoch_is_fenced_out_and_changes_nothing(
    sink: SQLiteTwoPhaseSink, db_path: Path
) -> None:
    ledger = Ledger()
    first = ledger.rows(3)
    sink.precommit(1, first)
    sink.commit(1, fencing_epoch=5, watermark=3)
    sink.precommit(2, ledger.rows(3))
    before = (list(sink.rows()), balances(db_path), sink.staged_count())
    with pytest.raises(FencedOut) as info:
        sink.commit(2, fencing_epoch=4, watermark=6)
    assert info.value.epoch == 4
    assert info.value.current == 5
    assert (list(sink.rows()), balances(db_path), sink.staged_count()) == before
    assert sink.last_committed() == 1
    assert sink.fencing_epoch() == 5
    assert sink.committed_watermark() == 3
    # Even re-committing an already committed id is refused to a deposed writer.
    with pytest.raises(FencedOut):
        sink.commit(1, fencing_epoch=4)
    # The current epoch (or a newer one) goes on.
    assert sink.commit(2, fencing_epoch=5) == 3
    restored_error = pickle.loads(pickle.dumps(info.value))
    assert isinstance(restored_error, FencedOut)
    assert (restored_error.epoch, restored_error.current) == (4, 5)


def test_a_newer_epoch_fences_older_writers_even_without_rows(sink: SQLiteTwoPhaseSink) -> None:
    sink.precommit(1, Ledger().rows(1))
    sink.commit(1, fencing_epoch=1)
    assert sink.commit(1, fencing_epoch=3) == 0  # nothing to do, but epoch 3 is now current
    assert sink.fencing_epoch() == 3
    with pytest.raises(FencedOut):
        sink.commit(2, fencing_epoch=2)


@pytest.mark.parametrize("checkpoint_id", [0, 1, 2])
def test_recover_with_an_older_epoch_is_fenced_out_and_discards_nothing(
    sink: SQLiteTwoPhaseSink, checkpoint_id: int
) -> None:
    """A deposed coordinator's restore must not throw away the new leader's staged rows."""
    ledger = Ledger()
    sink.precommit(1, ledger.rows(2))
    sink.commit(1, fencing_epoch=7)
    sink.precommit(2, ledger.rows(2))
    sink.precommit(3, ledger.rows(2))
    with pytest.raises(FencedOut):
        sink.recover(checkpoint_id, fencing_epoch=6)
    assert sink.staged_count() == 4
    assert sink.last_committed() == 1
    assert sink.commit(3, fencing_epoch=7) == 4


# -- replay floor -------------------------------------------------------------------------------


def test_fallback_to_an_older_checkpoint_drops_replayed_rows_below_the_watermark(
    sink: SQLiteTwoPhaseSink,
) -> None:
    ledger = Ledger()
    rows = ledger.rows(30)
    sink.precommit(1, rows[:10])
    sink.commit(1, fencing_epoch=1, watermark=10)
    sink.precommit(2, rows[10:20])
    sink.commit(2, fencing_epoch=1, watermark=20)
    sink.precommit(3, rows[20:25])  # never committed
    # Checkpoint 2 turned out corrupt: restore from 1, replay from ordinal 10.
    assert sink.recover(1, fencing_epoch=2, watermark=10) == 0
    assert sink.replay_floor == 20
    assert sink.staged_count() == 0
    assert sink.last_committed() == 2  # never goes back
    sink.precommit(4, rows[10:15])
    sink.precommit(4, rows[15:23])  # crosses the floor: 20, 21, 22 kept
    sink.precommit(5, rows[23:30])
    assert sink.dropped_replayed == 10
    assert sink.commit(5, fencing_epoch=2, watermark=30) == 10
    ordinals = [r[0] for r in sink.rows()]
    assert ordinals == list(range(30))
    assert sink.committed_watermark() == 30


def test_restore_from_a_checkpoint_taken_during_a_fallback_replay_keeps_the_floor(
    sink: SQLiteTwoPhaseSink,
) -> None:
    """Found by the protocol model: fallback, a checkpoint before the replay caught up, restore.

    Checkpoint 2 is the newest committed one, but its watermark (2) is below the
    output already visible (up to 3): restoring from it must still drop the rows
    of ordinals 2 the replay produces again.
    """
    ledger = Ledger()
    rows = ledger.rows(6)
    sink.precommit(1, rows[:3])
    sink.commit(1, fencing_epoch=1, watermark=3)
    sink.recover(0, fencing_epoch=2)  # checkpoint 1 is corrupt: replay from the start
    sink.precommit(2, rows[:2])  # dropped: visible already
    sink.commit(2, fencing_epoch=2, watermark=2)
    sink.recover(2, fencing_epoch=3, watermark=2)  # a crash; restore from checkpoint 2
    assert sink.replay_floor == 3
    sink.precommit(3, rows[2:6])
    sink.commit(3, fencing_epoch=3, watermark=6)
    assert [r[0] for r in sink.rows()] == list(range(6))


def test_watermark_never_goes_back(sink: SQLiteTwoPhaseSink) -> None:
    sink.precommit(1, Ledger().rows(1))
    sink.commit(1, fencing_epoch=1, watermark=50)
    sink.commit(2, fencing_epoch=1, watermark=10)
    assert sink.committed_watermark() == 50


def test_recover_at_the_last_committed_checkpoint_has_no_floor(sink: SQLiteTwoPhaseSink) -> None:
    ledger = Ledger()
    sink.precommit(1, ledger.rows(5))
    sink.commit(1, fencing_epoch=1, watermark=5)
    sink.recover(0, fencing_epoch=1)  # an older fallback first: floor 5
    assert sink.replay_floor == 5
    sink.recover(1, fencing_epoch=1, watermark=5)
    assert sink.replay_floor == 0
    sink.precommit(2, [(3, 3, "acc-a", 1, 1)])  # below the watermark, but no floor applies
    assert sink.staged_count() == 1


def test_sinks_with_different_ids_share_a_database_independently(make_sink: MakeSink) -> None:
    a = make_sink(sink_id="a", table="out_a")
    b = make_sink(sink_id="b", table="out_b")
    a.precommit(1, Ledger().rows(2))
    b.precommit(1, Ledger().rows(3))
    a.commit(1, fencing_epoch=4)
    assert (a.last_committed(), b.last_committed()) == (1, 0)
    assert b.commit(1, fencing_epoch=1) == 3  # a's epoch does not fence b
    assert len(list(a.rows())) == 2


def test_a_table_holding_another_jobs_output_is_refused(
    make_sink: MakeSink, db_path: Path
) -> None:
    # Two jobs appending to one ledger would post every transfer twice.
    first = make_sink(sink_id="payments")
    first.precommit(1, Ledger().rows(2))
    first.commit(1, fencing_epoch=1)
    with pytest.raises(SinkOwnedElsewhere, match=r"holds the output of job 'payments'; "
                                                  r"job 'other' will not write to it"):
        make_sink(sink_id="other")
    with closing(sqlite3.connect(db_path)) as db:  # nothing of "other" was recorded
        assert [r[0] for r in db.execute("SELECT sink_id FROM _resilience_sinks")] == [
            "payments"]
    again = make_sink(sink_id="payments")  # the owner resumes
    assert again.last_committed() == 1
    assert make_sink(sink_id="other", table="other_out").last_committed() == 0


def test_a_ledger_written_before_owners_were_recorded_keeps_its_owner(
    make_sink: MakeSink, db_path: Path
) -> None:
    first = make_sink(sink_id="payments")
    first.precommit(1, Ledger().rows(2))
    first.commit(1, fencing_epoch=1)
    first.close()
    with closing(sqlite3.connect(db_path)) as db, db:
        db.execute("DROP TABLE _resilience_owners")
    with pytest.raises(SinkOwnedElsewhere, match="job 'payments'"):
        make_sink(sink_id="other")


def test_identifiers_are_checked(db_path: Path) -> None:
    with pytest.raises(ValueError, match="plain SQL identifier"):
        SQLiteTwoPhaseSink(db_path, table="postings; DROP TABLE x", columns=COLUMNS)
    with pytest.raises(ValueError, match="plain SQL identifier"):
        SQLiteTwoPhaseSink(db_path, table="t", columns=[("1abc", "TEXT")])


@pytest.mark.parametrize("name", ["seq", "ckpt", "CKPT"])
def test_column_names_of_the_staging_table_are_refused(db_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="reserved"):
        SQLiteTwoPhaseSink(db_path, table="t", columns=[("a", "TEXT"), (name, "INTEGER")])


def test_reopening_sees_committed_state(make_sink: MakeSink) -> None:
    ledger = Ledger()
    first = make_sink()
    rows = ledger.rows(4)
    first.precommit(1, rows)
    first.commit(1, fencing_epoch=2, watermark=4)
    first.precommit(2, ledger.rows(2))
    first.close()
    again = make_sink()
    assert list(again.rows()) == visible(rows)
    assert again.staged_count() == 2
    assert (again.last_committed(), again.fencing_epoch(), again.committed_watermark()) == (
        1, 2, 4)


# -- crashes ---------------------------------------------------------------------------------

_CHILD_PRELUDE = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from checkpoint import SQLiteTwoPhaseSink

    COLUMNS = {columns!r}
    BALANCES_DDL = {ddl!r}
    BALANCES_UPSERT = {upsert!r}
    N = {n}
    sink = SQLiteTwoPhaseSink(Path(sys.argv[1]), table="postings", columns=COLUMNS,
                              on_commit=[BALANCES_UPSERT], extra_ddl=[BALANCES_DDL])
    sink.open()
    rows = [(i, i, "acc-%d" % (i % 50), 1, i // 50 + 1) for i in range(N)]
    """
)


def _run_child(db_path: Path, n: int, body: str) -> subprocess.CompletedProcess[str]:
    code = _CHILD_PRELUDE.format(
        columns=COLUMNS, ddl=BALANCES_DDL, upsert=BALANCES_UPSERT, n=n
    ) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code, str(db_path)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _expected_balances(n: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in range(n):
        out[f"acc-{i % 50}"] = i // 50 + 1
    return out


def test_precommit_survives_sigkill_right_after_it_returns(
    make_sink: MakeSink, db_path: Path
) -> None:
    n = 2000
    child = _run_child(db_path, n, """
        sink.precommit(1, rows)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert child.returncode == -signal.SIGKILL, child.stderr
    sink = make_sink(on_commit=[BALANCES_UPSERT], extra_ddl=[BALANCES_DDL])
    assert sink.staged_count() == n
    assert list(sink.rows()) == []
    assert sink.commit(1, fencing_epoch=1) == n
    assert [r[0] for r in sink.rows()] == list(range(n))
    assert balances(db_path) == _expected_balances(n)


def test_sigkill_inside_the_commit_transaction_leaves_nothing_visible(
    make_sink: MakeSink, db_path: Path
) -> None:
    """Killed while the rows are being moved (a progress handler fires mid-statement)."""
    n = 50_000
    child = _run_child(db_path, n, """
        sink.precommit(1, rows)
        calls = 0
        def die_mid_commit():
            global calls
            calls += 1
            if calls == 200:
                os.kill(os.getpid(), signal.SIGKILL)
            return 0
        sink._db.set_progress_handler(die_mid_commit, 1000)
        sink.commit(1, fencing_epoch=1, watermark=N)
        print("commit returned")
    """)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert "commit returned" not in child.stdout
    sink = make_sink(on_commit=[BALANCES_UPSERT], extra_ddl=[BALANCES_DDL])
    assert list(sink.rows()) == []
    assert balances(db_path) == {}
    assert sink.last_committed() == 0
    assert sink.committed_watermark() == 0
    assert sink.staged_count() == n
    # Recovery commits it exactly once.
    assert sink.recover(1, fencing_epoch=2, watermark=n) == n
    assert [r[0] for r in sink.rows()] == list(range(n))
    assert balances(db_path) == _expected_balances(n)


def test_sigkill_while_committing_a_large_batch_is_all_or_nothing(
    make_sink: MakeSink, db_path: Path
) -> None:
    """Killed by another process at whatever point the commit has reached."""
    n = 300_000
    code = _CHILD_PRELUDE.format(
        columns=COLUMNS, ddl=BALANCES_DDL, upsert=BALANCES_UPSERT, n=n
    ) + textwrap.dedent("""
        sink.precommit(1, rows)
        print("committing", flush=True)
        sink.commit(1, fencing_epoch=1, watermark=N)
        print("committed", flush=True)
        sys.stdin.read()  # wait to be killed
    """)
    with subprocess.Popen(
        [sys.executable, "-c", code, str(db_path)],
        cwd=PROJECT_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        assert child.stdout.readline() == "committing\n"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    sink = make_sink(on_commit=[BALANCES_UPSERT], extra_ddl=[BALANCES_DDL])
    committed = sink.last_committed()
    rows = list(sink.rows())
    if committed == 0:
        assert rows == []
        assert balances(db_path) == {}
        assert sink.staged_count() == n
    else:
        assert committed == 1
        assert [r[0] for r in rows] == list(range(n))
        assert balances(db_path) == _expected_balances(n)
        assert sink.staged_count() == 0
    sink.recover(1, fencing_epoch=2, watermark=n)
    assert [r[0] for r in sink.rows()] == list(range(n))
    assert balances(db_path) == _expected_balances(n)

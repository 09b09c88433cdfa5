"""Two-phase-commit sinks.

Protocol (as Flink's `TwoPhaseCommitSinkFunction`):

1. Between barriers the sink buffers its output.
2. *Pre-commit* at barrier N: the buffered rows are made durable but invisible,
   tagged with N. The task acknowledges checkpoint N only after this.
3. *Commit* when the coordinator announces that checkpoint N is complete: every
   staged row tagged <= N becomes visible, atomically. Commit is idempotent:
   committing N again, or an older id, changes nothing.
4. *Recover* after a restore from checkpoint N: commit what N covers (the
   announcement may have been lost in the crash), discard everything staged
   after N (those records are replayed from the rewound sources).

Falling back to an *older* checkpoint than the last committed one (the newest
was found corrupt) would replay records whose output is already visible. Rows
therefore carry an *ordinal* (the source position of the record that produced
them) and every commit records the source *watermark* its checkpoint covers
(every record below it is committed). After such a fallback the sink drops
replayed rows below the committed watermark, so the fallback stays exactly once.

Every commit carries the committer's fencing epoch; the sink remembers the
highest it has seen and refuses an older one with `FencedOut`, so a deposed
coordinator (or the losing side of a datacenter failover) cannot commit.

`SQLiteTwoPhaseSink` implements this for one SQLite table: rows are staged in a
hidden table, and the commit moves them and records the last committed
checkpoint id and epoch in the same SQLite transaction as the rows, and a line of
its commit log (`read_commits`: which checkpoint, under which epoch, how many rows,
when).

A standby site keeps a replica of the sink (`resilience.replication`): it stages the
rows the active site pre-committed (`stage_replica`, fenced like a commit), commits
and recovers as the active site does, or takes a whole copy (`export_copy` on the
active side, `import_copy` on the standby). `fingerprint` digests the visible rows up
to a checkpoint, so two sites can be compared at a cutover.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from checkpoint._errors import CheckpointError, FencedOut, SinkOwnedElsewhere

__all__ = ["SQLiteTwoPhaseSink", "SinkCommit", "SinkFingerprint", "SinkProgress",
           "TwoPhaseCommitSink"]

_IDENT_OK = frozenset("abcdefghijklmnopqrstuvwxyz_0123456789")
_COMMITS_DDL = (
    "CREATE TABLE IF NOT EXISTS _resilience_commits (sink_id TEXT NOT NULL, "
    "ckpt INTEGER NOT NULL, fencing_epoch INTEGER NOT NULL, watermark INTEGER NOT NULL, "
    "rows INTEGER NOT NULL, tbl TEXT NOT NULL, last_rowid INTEGER NOT NULL, "
    "committed_at REAL NOT NULL, PRIMARY KEY (sink_id, ckpt))"
)


@runtime_checkable
class TwoPhaseCommitSink(Protocol):
    """What the runtime needs from a transactional sink."""

    def precommit(self, checkpoint_id: int, rows: Sequence[Sequence[Any]]) -> None:
        """Make `rows` durable and invisible, tagged with `checkpoint_id`.

        Each row is ``(ordinal, *columns)``.
        """

    def commit(self, checkpoint_id: int, fencing_epoch: int, watermark: int = 0) -> int:
        """Make every row tagged <= `checkpoint_id` visible; return how many rows moved."""

    def recover(self, checkpoint_id: int, fencing_epoch: int, watermark: int = 0) -> int:
        """After a restore from `checkpoint_id`: commit up to it, discard what is after it."""

    def last_committed(self) -> int:
        """Id of the last committed checkpoint (0 when none)."""


@dataclass(frozen=True)
class SinkProgress:
    """What a sink's database says it has committed (zeros before the first commit)."""

    last_committed: int = 0
    fencing_epoch: int = 0
    watermark: int = 0


@dataclass(frozen=True)
class SinkCommit:
    """One line of a sink's commit log: checkpoint `checkpoint_id` became visible."""

    sink_id: str
    checkpoint_id: int
    fencing_epoch: int
    watermark: int
    rows: int
    committed_at: float  # wall-clock seconds (for reports, never for decisions)


@dataclass(frozen=True)
class SinkFingerprint:
    """A digest of a sink table's visible rows up to one checkpoint, in commit order."""

    table: str
    checkpoint_id: int  # the newest commit at or below the one asked for (0: none)
    rows: int
    digest: str  # sha256 hex of the rows (canonical JSON lines)


def _bytes_as_hex(value: Any) -> str:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot fingerprint a {type(value).__name__}")


def _ident(name: str) -> str:
    if not name or not set(name.lower()) <= _IDENT_OK or name[0].isdigit():
        raise ValueError(f"{name!r} is not a plain SQL identifier")
    return name


class SQLiteTwoPhaseSink:
    """Two-phase commit into one table of a SQLite database.

    `columns` are (name, SQL type) pairs of the visible table, created if absent.
    `on_commit` are extra SQL statements run inside each commit transaction, with
    the named parameters ``:lo`` and ``:hi`` (the range of checkpoint ids being
    committed, ``lo < id <= hi``) and the placeholder ``{staging}`` for the
    staging table: a sink can maintain derived tables (balances) atomically
    with the rows.

    Rows given to `precommit` are ``(ordinal, *columns)``; see the module
    docstring for the replay floor.

    Durability: WAL journal with ``synchronous=FULL``, so a returned pre-commit
    or commit survives a process kill and a power loss.

    One instance must be used from one thread at a time.
    """

    def __init__(
        self,
        path: Path,
        *,
        table: str,
        columns: Sequence[tuple[str, str]],
        sink_id: str = "default",
        on_commit: Sequence[str] = (),
        extra_ddl: Sequence[str] = (),
    ) -> None:
        self.path = Path(path)
        self.table = _ident(table)
        self.columns = [(_ident(n), t) for n, t in columns]
        reserved = {"seq", "ckpt"} & {n.lower() for n, _ in self.columns}
        if reserved:
            # The staging table has these columns of its own.
            raise ValueError(f"column names {sorted(reserved)} are reserved by the sink")
        self.sink_id = sink_id
        self.staging = _ident(f"_staging_{table}")
        self._on_commit = [s.replace("{staging}", self.staging) for s in on_commit]
        self._extra_ddl = list(extra_ddl)
        self._conn: sqlite3.Connection | None = None
        self._replay_floor = 0  # drop rows with a smaller ordinal (fallback replay)
        self.dropped_replayed = 0
        names = ", ".join(n for n, _ in self.columns)
        marks = ", ".join("?" for _ in self.columns)
        self._insert_staging = f"INSERT INTO {self.staging} (ckpt, {names}) VALUES (?, {marks})"
        self._move = (
            f"INSERT INTO {self.table} ({names}) SELECT {names} FROM {self.staging} "
            "WHERE ckpt > :lo AND ckpt <= :hi ORDER BY seq"
        )

    # -- lifecycle --------------------------------------------------------------------

    def open(self) -> None:
        """Open (creating tables if needed). Safe to call again."""
        if self._conn is not None:
            return
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise CheckpointError(f"cannot open sink database {self.path}: {e}") from e
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=10000")
        cols = ", ".join(f"{n} {t}" for n, t in self.columns)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(f"CREATE TABLE IF NOT EXISTS {self.table} ({cols})")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.staging} "
            f"(seq INTEGER PRIMARY KEY AUTOINCREMENT, ckpt INTEGER NOT NULL, {cols})"
        )
        # No index on ckpt: staging holds a checkpoint or two of rows, a scan is cheap,
        # and maintaining an index costs a third of every pre-commit.
        conn.execute(f"DROP INDEX IF EXISTS {self.staging}_ckpt")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS _resilience_sinks (sink_id TEXT PRIMARY KEY, "
            "last_committed INTEGER NOT NULL, fencing_epoch INTEGER NOT NULL, "
            "watermark INTEGER NOT NULL)"
        )
        owner = self._claim(conn)
        if owner != self.sink_id:
            conn.execute("ROLLBACK")
            conn.close()
            raise SinkOwnedElsewhere(f"table {self.table} of {self.path}", owner, self.sink_id)
        conn.execute(
            "INSERT OR IGNORE INTO _resilience_sinks VALUES (?, 0, 0, 0)", (self.sink_id,)
        )
        conn.execute(_COMMITS_DDL)
        for ddl in self._extra_ddl:
            conn.execute(ddl)
        conn.execute("COMMIT")
        self._conn = conn

    def _claim(self, conn: sqlite3.Connection) -> str:
        """The sink id that owns this table, claiming it for this sink if it is free."""
        conn.execute("CREATE TABLE IF NOT EXISTS _resilience_owners "
                     "(tbl TEXT PRIMARY KEY, sink_id TEXT NOT NULL)")
        row = conn.execute("SELECT sink_id FROM _resilience_owners WHERE tbl = ?",
                           (self.table,)).fetchone()
        if row is not None:
            return str(row[0])
        # A database written before owners were recorded: a table that already holds
        # rows belongs to the sink that committed them, when that is known.
        if conn.execute(f"SELECT 1 FROM {self.table} LIMIT 1").fetchone() is not None:
            committed = [str(r[0]) for r in conn.execute(
                "SELECT sink_id FROM _resilience_sinks WHERE last_committed > 0")]
            if len(committed) == 1 and committed[0] != self.sink_id:
                return committed[0]
        conn.execute("INSERT INTO _resilience_owners VALUES (?, ?)", (self.table, self.sink_id))
        return self.sink_id

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self.open()
        assert self._conn is not None
        return self._conn

    # -- protocol -----------------------------------------------------------------------

    @staticmethod
    def read_progress(path: Path) -> SinkProgress:
        """The progress recorded in the database at `path`, read-only, by an observer (a
        chaos invariant, a drill): the highest of every sink there; zeros if none yet."""
        try:
            with sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True,
                                 timeout=1) as db:
                row = db.execute("SELECT max(last_committed), max(fencing_epoch), "
                                 "max(watermark) FROM _resilience_sinks").fetchone()
        except sqlite3.Error:
            return SinkProgress()
        return SinkProgress(*(int(v or 0) for v in row))

    def above_replay_floor(self, rows: Sequence[Sequence[Any]]) -> Sequence[Sequence[Any]]:
        """The rows a pre-commit stages: those at or above the replay floor (all of them
        unless a fallback set one). A replica must stage exactly these."""
        floor = self._replay_floor
        if not floor:
            return rows
        kept = [r for r in rows if r[0] >= floor]
        self.dropped_replayed += len(rows) - len(kept)
        return kept

    def precommit(self, checkpoint_id: int, rows: Sequence[Sequence[Any]]) -> None:
        db = self._db
        rows = self.above_replay_floor(rows)
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(self._insert_staging, ((checkpoint_id, *r[1:]) for r in rows))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def stage_replica(self, checkpoint_id: int, columns: Sequence[Sequence[Any]],
                      fencing_epoch: int) -> int:
        """A standby's pre-commit: stage the rows (columns only, no ordinal) that the active
        site pre-committed for `checkpoint_id`; return how many were staged.

        Idempotent (rows staged earlier for that checkpoint are replaced) and fenced like a
        commit: `FencedOut` when a newer epoch has been seen here, so once this site took
        over, a late shipment from the deposed site changes nothing. A checkpoint this
        sink already committed stages nothing. Records `fencing_epoch` as seen.
        """
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            last, epoch, _ = self._meta()
            if fencing_epoch < epoch:
                raise FencedOut(f"sink {self.sink_id} at {self.path}", fencing_epoch, epoch)
            staged = 0
            if checkpoint_id > last:
                db.execute(f"DELETE FROM {self.staging} WHERE ckpt = ?", (checkpoint_id,))
                db.executemany(self._insert_staging, ((checkpoint_id, *c) for c in columns))
                staged = len(columns)
            if fencing_epoch > epoch:
                db.execute("UPDATE _resilience_sinks SET fencing_epoch = ? WHERE sink_id = ?",
                           (fencing_epoch, self.sink_id))
            db.execute("COMMIT")
            return staged
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _meta(self) -> tuple[int, int, int]:
        row = self._db.execute(
            "SELECT last_committed, fencing_epoch, watermark FROM _resilience_sinks "
            "WHERE sink_id = ?",
            (self.sink_id,),
        ).fetchone()
        return (int(row[0]), int(row[1]), int(row[2])) if row else (0, 0, 0)

    def committed_watermark(self) -> int:
        """Source watermark covered by the last commit (every ordinal below is visible)."""
        return self._meta()[2]

    def last_committed(self) -> int:
        return self._meta()[0]

    def fencing_epoch(self) -> int:
        """Highest fencing epoch that committed here."""
        return self._meta()[1]

    def commit(self, checkpoint_id: int, fencing_epoch: int, watermark: int = 0) -> int:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            moved = self._commit_in_transaction(checkpoint_id, fencing_epoch, watermark)
            db.execute("COMMIT")
            return moved
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _commit_in_transaction(self, checkpoint_id: int, fencing_epoch: int,
                               watermark: int) -> int:
        """Fencing check and commit, inside the caller's transaction; raises FencedOut."""
        db = self._db
        last, epoch, old_watermark = self._meta()
        if fencing_epoch < epoch:
            raise FencedOut(f"sink {self.sink_id} at {self.path}", fencing_epoch, epoch)
        if checkpoint_id <= last:
            db.execute(
                "UPDATE _resilience_sinks SET fencing_epoch = ? WHERE sink_id = ?",
                (fencing_epoch, self.sink_id),
            )
            return 0
        params = {"lo": last, "hi": checkpoint_id}
        moved = db.execute(self._move, params).rowcount
        for stmt in self._on_commit:
            db.execute(stmt, params)
        db.execute(f"DELETE FROM {self.staging} WHERE ckpt <= :hi", params)
        watermark = max(watermark, old_watermark)
        db.execute(
            "UPDATE _resilience_sinks SET last_committed = ?, fencing_epoch = ?, "
            "watermark = ? WHERE sink_id = ?",
            (checkpoint_id, fencing_epoch, watermark, self.sink_id),
        )
        last_rowid = db.execute(f"SELECT coalesce(max(rowid), 0) FROM {self.table}").fetchone()[0]
        db.execute("INSERT OR REPLACE INTO _resilience_commits VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (self.sink_id, checkpoint_id, fencing_epoch, watermark, int(moved),
                    self.table, int(last_rowid), time.time()))
        return int(moved)

    def abort_after(self, checkpoint_id: int) -> int:
        """Discard staged rows tagged after `checkpoint_id`; return how many."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            n = db.execute(
                f"DELETE FROM {self.staging} WHERE ckpt > ?", (checkpoint_id,)
            ).rowcount
            db.execute("COMMIT")
            return int(n)
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def recover(self, checkpoint_id: int, fencing_epoch: int, watermark: int = 0) -> int:
        """Commit what `checkpoint_id` covers, discard later staging, set the replay floor.

        `watermark` is the one recorded with `checkpoint_id`. When the sink has
        committed output beyond it (a fallback to an older checkpoint, or a restore
        from a checkpoint taken after such a fallback, before the replay caught up
        with the old output), replayed rows below the committed watermark are
        dropped from now on.

        Fenced like `commit`, also for `checkpoint_id` 0, and done in one
        transaction: a deposed coordinator's restore raises `FencedOut` and
        discards nothing the current leader staged.
        """
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            moved = self._commit_in_transaction(checkpoint_id, fencing_epoch, watermark)
            db.execute(f"DELETE FROM {self.staging} WHERE ckpt > ?", (checkpoint_id,))
            committed_watermark = self._meta()[2]
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        # Not `last > checkpoint_id`: a checkpoint committed after a fallback may itself
        # lie below the committed watermark, and restoring from it replays visible rows.
        self._replay_floor = committed_watermark if committed_watermark > watermark else 0
        return moved

    @property
    def replay_floor(self) -> int:
        return self._replay_floor

    # -- whole copies (a standby's bootstrap) ---------------------------------------------

    def export_copy(self, dest: Path) -> SinkProgress:
        """Write a consistent copy of the whole database to `dest` (SQLite's online backup,
        fsynced); return the progress it holds (its last commit).

        Call it from the thread that commits (the copy then lies between two commits).
        """
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)
        with sqlite3.connect(dest) as copy:
            self._db.backup(copy)
        copy.close()
        with open(dest, "rb") as f:
            os.fsync(f.fileno())
        return self.read_progress(dest)

    def import_copy(self, source: Path, fencing_epoch: int) -> SinkProgress:
        """Make this database a copy of `source` (written by `export_copy`), table by table
        in one transaction; return the progress it now holds.

        Fenced: `FencedOut` when this database has seen a newer epoch than `fencing_epoch`
        (a deposed site's copy never overwrites the new active site's sink).
        """
        db = self._db
        db.execute("ATTACH DATABASE ? AS src", (str(source),))
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                _, epoch, _ = self._meta()
                if fencing_epoch < epoch:
                    raise FencedOut(f"sink {self.sink_id} at {self.path}", fencing_epoch, epoch)
                tables = db.execute("SELECT name, sql FROM src.sqlite_master WHERE type = "
                                    "'table' AND name NOT LIKE 'sqlite_%'").fetchall()
                for name, sql in tables:
                    db.execute(sql.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1))
                    cols = ", ".join(f'"{r[1]}"' for r in db.execute(
                        f'PRAGMA src.table_info("{name}")'))
                    db.execute(f'DELETE FROM main."{name}"')
                    db.execute(f'INSERT INTO main."{name}" ({cols}) '
                               f'SELECT {cols} FROM src."{name}"')
                if db.execute("SELECT 1 FROM src.sqlite_master WHERE name = 'sqlite_sequence'"
                              ).fetchone() is not None:
                    db.execute("DELETE FROM main.sqlite_sequence")
                    db.execute("INSERT INTO main.sqlite_sequence SELECT * FROM src.sqlite_sequence")
                db.execute("UPDATE _resilience_sinks SET fencing_epoch = max(fencing_epoch, ?)",
                           (fencing_epoch,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            db.execute("DETACH DATABASE src")
        self._replay_floor = 0
        return self.read_progress(self.path)

    # -- observers (read-only, by path) ---------------------------------------------------

    @staticmethod
    def read_commits(path: Path) -> list[SinkCommit]:
        """The commit log of every sink in the database at `path`, oldest first (empty if
        there is none yet)."""
        try:
            with sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True,
                                 timeout=1) as db:
                rows = db.execute("SELECT sink_id, ckpt, fencing_epoch, watermark, rows, "
                                  "committed_at FROM _resilience_commits "
                                  "ORDER BY committed_at, ckpt").fetchall()
        except sqlite3.Error:
            return []
        return [SinkCommit(str(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]), float(r[5]))
                for r in rows]

    @staticmethod
    def fingerprint(path: Path, through_checkpoint: int | None = None) -> list[SinkFingerprint]:
        """Per sink table of the database at `path`: a digest of its visible rows in
        commit order, up to the commit of `through_checkpoint` (the newest one at or below
        it; every row when None). Two replicas that committed the same checkpoints hold
        the same fingerprints."""
        out = []
        try:
            with sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True,
                                 timeout=5) as db:
                tables = [_ident(str(r[0])) for r in db.execute(
                    "SELECT tbl FROM _resilience_owners ORDER BY tbl")]
                for table in tables:
                    if through_checkpoint is None:
                        found = db.execute("SELECT max(ckpt), max(last_rowid) FROM "
                                           "_resilience_commits WHERE tbl = ?", (table,)
                                           ).fetchone()
                    else:
                        found = db.execute(
                            "SELECT ckpt, last_rowid FROM _resilience_commits WHERE tbl = ? "
                            "AND ckpt <= ? ORDER BY ckpt DESC LIMIT 1",
                            (table, through_checkpoint)).fetchone()
                    checkpoint_id, last_rowid = (int(found[0]), int(found[1])) if (
                        found and found[0] is not None) else (0, 0)
                    digest = hashlib.sha256()
                    count = 0
                    for row in db.execute(f"SELECT * FROM {table} WHERE rowid <= ? "
                                          "ORDER BY rowid", (last_rowid,)):
                        digest.update(json.dumps(row, separators=(",", ":"),
                                                 default=_bytes_as_hex).encode())
                        digest.update(b"\n")
                        count += 1
                    out.append(SinkFingerprint(table, checkpoint_id, count, digest.hexdigest()))
        except sqlite3.Error:
            return out
        return out

    def staged_count(self) -> int:
        return int(self._db.execute(f"SELECT count(*) FROM {self.staging}").fetchone()[0])

    def rows(self) -> Iterable[tuple[Any, ...]]:
        """Committed rows in commit order (for tests and tools)."""
        names = ", ".join(n for n, _ in self.columns)
        return self._db.execute(f"SELECT {names} FROM {self.table} ORDER BY rowid").fetchall()

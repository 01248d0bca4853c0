"""The durable store-and-forward outbox: every result and error event lives here, on disk,
from the moment it is produced until the broker has acknowledged it (PUBACK).

SQLite in WAL mode with `synchronous=FULL`: the folder source moves an input to processed/
right after the result is committed, so a commit must survive a power cut (NORMAL could
lose the last transactions while the file is already gone - a silently lost result).

Two tables:
- `messages`: payloads in production order (`seq`), each with its MQTT topic and the
  payload's own message id, which never changes across re-deliveries.
- `inputs`: a ledger of inputs whose outcome is stored but which their source has not yet
  released (file not yet moved, scanner not yet answered). It is written in the same
  transaction as the input's messages, so after a crash a file found again in the watch
  folder is released with its stored outcome instead of being classified twice under a new id.

Bound (`max_messages`) policy, so nothing is lost silently: when full, the oldest *error*
events are dropped first (each drop is counted and reported in a warning event); results
are never dropped - `has_room()` turns False and the worker stops taking inputs, which then
wait at their source (files stay in the watch folder, scanners are answered later).
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS inputs (
    key TEXT PRIMARY KEY,
    ok INTEGER NOT NULL,
    error TEXT,
    result_ids TEXT NOT NULL,
    created REAL NOT NULL
);
"""
# Room kept above the bound for the warning events that report the bound itself.
WARNING_HEADROOM = 100


@dataclass
class Message:
    seq: int
    id: str
    kind: str  # "result" | "error"
    topic: str
    payload: bytes


@dataclass
class StoredOutcome:
    ok: bool
    error: str | None
    result_ids: list[str]


@dataclass
class Rebuild:
    """What `open_outbox` did with an outbox it found corrupt."""

    moved_to: Path
    recovered: int  # messages copied into the new outbox, ids and order kept
    recovered_results: int
    unreadable: int | None  # stored messages that could not be read back (None: not even counted)
    ledger_recovered: int
    reason: str

    def message(self) -> str:
        lost = ("an unknown number of stored messages could not be read" if self.unreadable is None
                else f"up to {self.unreadable} stored message(s) (results or events) could not be recovered")
        return (f"outbox was corrupt ({self.reason}): moved aside to {self.moved_to.name} and rebuilt; "
                f"{self.recovered} message(s) recovered ({self.recovered_results} result(s)), {lost}; "
                f"{self.ledger_recovered} input ledger entr(ies) kept")


MAX_PROBES = 1_000_000  # row lookups spent at most on salvaging a corrupt outbox


def open_outbox(path: str | Path, max_messages: int = 10000) -> tuple[Outbox, Rebuild | None]:
    """The outbox at `path`; a corrupt one (a damaged disk, a file overwritten mid-way) is moved
    aside, whatever can still be read from it is copied into a new one, and the Rebuild says
    how much could not be: the daemon starts and reports it instead of refusing to start."""
    path = Path(path)
    try:
        outbox = Outbox(path, max_messages)
        problem = outbox.integrity_problem()
        if problem is None:
            return outbox, None
        outbox.close(checkpoint=False)
    except sqlite3.DatabaseError as error:
        if isinstance(error, sqlite3.OperationalError) and "malformed" not in str(error) \
                and "not a database" not in str(error):
            raise  # e.g. the disk is full or the folder unwritable: not corruption, do not move it
        problem = str(error)
    moved = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
    for suffix in ("", "-wal"):
        if Path(str(path) + suffix).exists():
            os.replace(str(path) + suffix, str(moved) + suffix)
    Path(str(path) + "-shm").unlink(missing_ok=True)
    outbox = Outbox(path, max_messages)
    rebuild = outbox._salvage(moved, problem)
    return outbox, rebuild


def connect_durable(path: Path, schema: str) -> sqlite3.Connection:
    """A connection for a store whose commits must survive power loss before the input is
    released (this outbox, the PACS delivery queue): WAL, synchronous=FULL, autocommit mode so
    callers open their own BEGIN IMMEDIATE transactions, shareable across threads under a lock."""
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(schema)
    return db


class Outbox:
    def __init__(self, path: str | Path, max_messages: int = 10000):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_messages = max_messages
        self._lock = threading.Lock()
        # One connection shared by the worker and the publisher thread, serialised by the lock:
        # SQLite serialises writers anyway, and one connection keeps the WAL checkpointing simple.
        self._db = connect_durable(self.path, SCHEMA)
        self.dropped = 0  # error events dropped to make room, since start

    # ------------------------------------------------------------------ writing
    def add(self, messages: list[tuple[str, str, str, bytes]], input_key: str | None = None,
            outcome: StoredOutcome | None = None, force: bool = False) -> list[int]:
        """Store (id, kind, topic, payload) messages - and the input's outcome - in one transaction.

        Returns the messages' sequence numbers. Unless `force`, error events are dropped (oldest
        first) to stay within the bound; the caller checks `has_room()` before taking inputs.
        """
        return self.add_many([(messages, input_key, outcome)], force=force)

    def add_many(self, entries: list[tuple[list, str | None, StoredOutcome | None]], force: bool = False) -> list[int]:
        """Several inputs' (messages, input_key, outcome) in one durable transaction (one fsync)."""
        now = time.time()
        seqs = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if not force:
                    self._make_room_locked(sum(len(messages) for messages, _, _ in entries))
                for messages, input_key, outcome in entries:
                    for message_id, kind, topic, payload in messages:
                        cursor = self._db.execute(
                            "INSERT INTO messages (id, kind, topic, payload, created) VALUES (?, ?, ?, ?, ?)",
                            (message_id, kind, topic, payload, now))
                        seqs.append(cursor.lastrowid)
                    if input_key is not None and outcome is not None:
                        self._db.execute(
                            "INSERT OR REPLACE INTO inputs (key, ok, error, result_ids, created) VALUES (?, ?, ?, ?, ?)",
                            (input_key, int(outcome.ok), outcome.error, json.dumps(outcome.result_ids), now))
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback_locked()
                raise
        return seqs

    def _rollback_locked(self) -> None:
        # A failed COMMIT may already have rolled back: a second ROLLBACK would hide the cause.
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _make_room_locked(self, incoming: int) -> None:
        excess = self._count_locked() + incoming - self.max_messages
        if excess <= 0:
            return
        cursor = self._db.execute(
            "DELETE FROM messages WHERE seq IN (SELECT seq FROM messages WHERE kind = 'error' ORDER BY seq LIMIT ?)",
            (excess,))
        self.dropped += cursor.rowcount

    def has_room(self, incoming: int = 1) -> bool:
        """True when `incoming` more results fit, counting error events as reclaimable space."""
        with self._lock:
            results = self._db.execute("SELECT COUNT(*) FROM messages WHERE kind = 'result'").fetchone()[0]
        return results + incoming <= self.max_messages

    def remove(self, seqs: list[int]) -> None:
        """Forget acknowledged messages (one transaction for a batch of PUBACKs)."""
        if seqs:
            self._relaxed_write("DELETE FROM messages WHERE seq = ?", [(seq,) for seq in seqs])

    def _relaxed_write(self, statement: str, rows: list[tuple]) -> None:
        """A write whose loss in a power cut is harmless, committed without its own fsync: a
        forgotten PUBACK means one duplicate delivery (same id), a forgotten release one stale
        ledger row. The next durable commit syncs it anyway."""
        with self._lock:
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany(statement, rows)
                    self._db.execute("COMMIT")
                except BaseException:
                    # Left open, the transaction would make every later write fail.
                    self._rollback_locked()
                    raise
            finally:
                self._db.execute("PRAGMA synchronous=FULL")

    # ------------------------------------------------------------------ the input ledger
    def stored_outcome(self, input_key: str) -> StoredOutcome | None:
        with self._lock:
            row = self._db.execute("SELECT ok, error, result_ids FROM inputs WHERE key = ?", (input_key,)).fetchone()
        if row is None:
            return None
        return StoredOutcome(ok=bool(row[0]), error=row[1], result_ids=json.loads(row[2]))

    def release_inputs(self, input_keys: list[str]) -> None:
        """The sources have released these inputs (files moved, scanner answered): forget them."""
        if input_keys:
            self._relaxed_write("DELETE FROM inputs WHERE key = ?", [(key,) for key in input_keys])

    # ------------------------------------------------------------------ reading
    def after(self, seq: int, limit: int = 100) -> list[Message]:
        """Stored messages with a sequence number above `seq`, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, id, kind, topic, payload FROM messages WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit)).fetchall()
        return [Message(seq=row[0], id=row[1], kind=row[2], topic=row[3], payload=bytes(row[4])) for row in rows]

    def _count_locked(self, kind: str | None = None) -> int:
        if kind is None:
            return self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM messages WHERE kind = ?", (kind,)).fetchone()[0]

    def count(self, kind: str | None = None) -> int:
        with self._lock:
            return self._count_locked(kind)

    def close(self, checkpoint: bool = True) -> None:
        with self._lock:
            try:
                if checkpoint:
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._db.close()

    # ------------------------------------------------------------------ corruption
    def integrity_problem(self) -> str | None:
        """None when SQLite's quick_check finds the file sound, else its first complaint."""
        with self._lock:
            rows = self._db.execute("PRAGMA quick_check").fetchall()
        if rows == [("ok",)]:
            return None
        return str(rows[0][0]) if rows else "quick_check returned nothing"

    def _salvage(self, old_path: Path, reason: str) -> Rebuild:
        """Copy every message and ledger row still readable in the corrupt `old_path`, keeping
        ids and order (re-deliveries stay recognisable as duplicates)."""
        recovered = results = ledger = 0
        unreadable: int | None = None
        try:
            old = sqlite3.connect(str(old_path))
        except sqlite3.Error:
            return Rebuild(old_path, 0, 0, None, 0, reason)
        try:
            bounds = _try(lambda: old.execute("SELECT MIN(seq), MAX(seq) FROM messages").fetchone())
            if bounds is None:
                bounds = _try(lambda: (1, old.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'")
                                       .fetchone()[0]))
            rows = _probe(old, "messages", "seq", "seq, id, kind, topic, payload, created", bounds)
            if bounds is not None and bounds[0] is not None and bounds[1] - bounds[0] < MAX_PROBES:
                # Acknowledged rows leave the oldest end, so the live rows are (nearly) the range
                # MIN..MAX: what is missing from it is what the damage took. An upper bound.
                unreadable = max(0, int(bounds[1]) - int(bounds[0]) + 1 - len(rows))
            ledger_bounds = _try(lambda: old.execute("SELECT MIN(rowid), MAX(rowid) FROM inputs").fetchone())
            inputs = _probe(old, "inputs", "rowid", "key, ok, error, result_ids, created", ledger_bounds)
        finally:
            old.close()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for row in rows:
                    try:
                        self._db.execute("INSERT INTO messages (seq, id, kind, topic, payload, created) "
                                         "VALUES (?, ?, ?, ?, ?, ?)", row)
                    except sqlite3.IntegrityError:  # a damaged row repeating an id: keep the first
                        continue
                    recovered += 1
                    results += row[2] == "result"
                for row in inputs:
                    self._db.execute("INSERT OR REPLACE INTO inputs (key, ok, error, result_ids, created) "
                                     "VALUES (?, ?, ?, ?, ?)", row)
                    ledger += 1
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback_locked()
                raise
        return Rebuild(old_path, recovered, results, unreadable, ledger, reason)


def _probe(db, table: str, key: str, columns: str, bounds) -> list[tuple]:
    """Every row of `table` readable by a lookup of its integer key within `bounds`: a damaged
    page loses its own rows, not the scan of the whole table."""
    if bounds is None or bounds[0] is None:
        return []
    rows = []
    low, high = int(bounds[0]), int(bounds[1])
    for value in range(low, min(high, low + MAX_PROBES - 1) + 1):
        try:
            row = db.execute(f"SELECT {columns} FROM {table} WHERE {key} = ?", (value,)).fetchone()
        except sqlite3.DatabaseError:
            continue
        if row is not None:
            rows.append(row)
    return rows


def _try(read):
    try:
        return read()
    except (sqlite3.DatabaseError, TypeError):
        return None

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


class Outbox:
    def __init__(self, path: str | Path, max_messages: int = 10000):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_messages = max_messages
        self._lock = threading.Lock()
        # One connection shared by the worker and the publisher thread, serialised by the lock:
        # SQLite serialises writers anyway, and one connection keeps the WAL checkpointing simple.
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
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

    def close(self) -> None:
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._db.close()

"""The durable delivery queue: every SR and SC lives here, on disk, from the moment it is written
until its PACS has confirmed it (C-STORE Success, STOW-RS 200), one row per object and target.
Before that, each input's *write job* (its header, display frame and result payloads) lives in
`jobs`: storing it is all the scanner waits for; a background writer turns it into the objects
(one transaction: objects in, job out), so writing SR and SC costs the scanner nothing.

Same discipline as edge/outbox.py: SQLite in WAL mode with synchronous=FULL, because the scanner
is answered right after the objects are stored here (the worker calls the daemon's hook before
its outcome is committed), so a stored object must survive a power cut. The key is the object's
deterministic SOP Instance UID: storing the same object again (the scanner resending after a
crash) is a no-op, and a PACS that gets it twice stores one instance.

An object the PACS refuses for good (e.g. "SOP class not supported") is kept as `refused`, not
deleted, and counted: nothing is lost silently. The file holds patient identity (the objects
carry it by necessity), so it is created readable by the daemon's user only.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..outbox import connect_durable

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_uid TEXT NOT NULL,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    dicom BLOB NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created REAL NOT NULL,
    UNIQUE (sop_uid, target)
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    header BLOB NOT NULL,
    pixels BLOB NOT NULL,
    payloads TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT,
    created REAL NOT NULL
);
"""


@dataclass
class Delivery:
    seq: int
    sop_uid: str
    target: str
    kind: str  # "sr" | "sc"
    dicom: bytes  # the Part 10 file
    attempts: int


@dataclass
class WriteJob:
    """What the writers need for one input, stored before the scanner is answered: the source's
    header without pixels, the display frame for the SC (PNG) and the result payloads (JSON)."""

    seq: int
    key: str
    header: bytes
    pixels: bytes
    payloads: str


class DeliveryQueue:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            # Created 0600 before SQLite opens it: the objects name the patient.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._lock = threading.Lock()
        self._db = connect_durable(self.path, SCHEMA)

    def add(self, objects: list[tuple[str, str, bytes]], targets: list[str]) -> int:
        """Store (sop_uid, kind, dicom) for every target in one durable transaction; returns how
        many rows are new (objects already queued or refused are left as they are)."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                before = self._db.total_changes
                self._db.executemany(
                    "INSERT OR IGNORE INTO deliveries (sop_uid, target, kind, dicom, created) VALUES (?, ?, ?, ?, ?)",
                    [(uid, target, kind, dicom, now) for uid, kind, dicom in objects for target in targets])
                added = self._db.total_changes - before
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return added

    # ------------------------------------------------------------------ write jobs
    def add_job(self, key: str, header: bytes, pixels: bytes, payloads: str) -> bool:
        """Durably store one input's write job; False when it is already stored (a resend)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO jobs (key, header, pixels, payloads, created) VALUES (?, ?, ?, ?, ?)",
                    (key, header, pixels, payloads, time.time()))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return cursor.rowcount > 0

    def jobs(self, limit: int = 4) -> list[WriteJob]:
        with self._lock:
            rows = self._db.execute("SELECT seq, key, header, pixels, payloads FROM jobs WHERE state = 'pending' "
                                    "ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [WriteJob(row[0], row[1], bytes(row[2]), bytes(row[3]), row[4]) for row in rows]

    def job_done(self, seq: int, objects: list[tuple[str, str, bytes]], targets: list[str]) -> None:
        """The job's objects replace the job, in one durable transaction."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR IGNORE INTO deliveries (sop_uid, target, kind, dicom, created) VALUES (?, ?, ?, ?, ?)",
                    [(uid, target, kind, dicom, now) for uid, kind, dicom in objects for target in targets])
                self._db.execute("DELETE FROM jobs WHERE seq = ?", (seq,))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def job_failed(self, seq: int, error: str) -> None:
        """Kept as `unwritable` (not retried, not deleted): counted and reported."""
        self._write("UPDATE jobs SET state = 'unwritable', last_error = ? WHERE seq = ?", [(error, seq)])

    def job_count(self, state: str = "pending") -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (state,)).fetchone()[0]

    # ------------------------------------------------------------------ deliveries
    def pending(self, target: str, limit: int = 20) -> list[Delivery]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, sop_uid, target, kind, dicom, attempts FROM deliveries "
                "WHERE target = ? AND state = 'pending' ORDER BY seq LIMIT ?", (target, limit)).fetchall()
        return [Delivery(row[0], row[1], row[2], row[3], bytes(row[4]), row[5]) for row in rows]

    def delivered(self, seqs: list[int]) -> None:
        """The PACS confirmed these: forget them. Losing this write in a power cut only means one
        repeated delivery of the same UID, which the PACS stores once."""
        self._write("DELETE FROM deliveries WHERE seq = ?", [(seq,) for seq in seqs])

    def failed(self, seqs: list[int], error: str) -> None:
        self._write("UPDATE deliveries SET attempts = attempts + 1, last_error = ? WHERE seq = ?",
                    [(error, seq) for seq in seqs])

    def refused(self, seq: int, error: str) -> None:
        self._write("UPDATE deliveries SET state = 'refused', attempts = attempts + 1, last_error = ? WHERE seq = ?",
                    [(error, seq)])

    def _write(self, statement: str, rows: list[tuple]) -> None:
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(statement, rows)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def count(self, state: str = "pending", target: str | None = None) -> int:
        query, args = "SELECT COUNT(*) FROM deliveries WHERE state = ?", [state]
        if target is not None:
            query, args = query + " AND target = ?", args + [target]
        with self._lock:
            return self._db.execute(query, args).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._db.close()

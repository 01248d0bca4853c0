"""Recent history in one SQLite file, so a restarted dashboard shows what came before.

Each stored row is one `Event` (invalid ones included: the error list survives a restart
too). The message id is the primary key, which also drops QoS 1 duplicates on disk.
Kinds whose role is "latest" (heartbeats) are only kept as the latest per device: the history
is about results and events. A row that cannot be read back (e.g. a NaN stored by an older
version) is skipped and counted on replay, never allowed to stop the dashboard.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from medge.dashboard.events import Event
from medge.edge.comms.topics import KINDS, LATEST
from medge.edge.errors import ConfigError
from medge.edge.payloads import decode

log = logging.getLogger("medge.dashboard")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    received REAL NOT NULL,
    event TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_received ON events (received);
"""


class HistoryStore:
    def __init__(self, path: str | Path, retention_days: float = 7.0, max_events: int = 50_000):
        self.path = Path(path).expanduser()
        self.retention_s = retention_days * 86400
        self.max_events = max_events
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: no fsync per message (3x the ingest rate); a power cut may lose the
            # last moments of history but never corrupts the file.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as error:
            raise ConfigError(f"--db {self.path}: cannot open the history database ({error})") from None
        self._lock = threading.Lock()
        self._added = 0
        self.unreadable = 0  # rows skipped by the last replay

    def add(self, event: Event) -> bool:
        """Store `event`; False when its id was stored before (a duplicate delivery)."""
        try:
            row = json.dumps(event.to_dict(), allow_nan=False)
        except (TypeError, ValueError) as error:  # parse_message never lets one through; be sure
            log.error("not storing event %s: %s", event.id, error)
            return False
        with self._lock:
            if event.kind in KINDS and KINDS[event.kind].role == LATEST:
                self._db.execute("DELETE FROM events WHERE kind = ? AND site = ? AND device = ?",
                                 (event.kind, event.site, event.device))
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO events (id, kind, site, device, received, event) VALUES (?, ?, ?, ?, ?, ?)",
                (event.id, event.kind, event.site, event.device, event.received, row))
            self._added += 1
            if self._added % 500 == 0:
                self._prune()
            return cursor.rowcount == 1

    def _prune(self) -> None:
        self._db.execute("DELETE FROM events WHERE received < ?", (time.time() - self.retention_s,))
        self._db.execute("DELETE FROM events WHERE rowid NOT IN "
                         "(SELECT rowid FROM events ORDER BY received DESC LIMIT ?)", (self.max_events,))

    def replay(self) -> Iterator[Event]:
        """Every readable stored event, oldest first (arrival order); `unreadable` counts the rest."""
        with self._lock:
            self._prune()
            rows = self._db.execute("SELECT event FROM events ORDER BY received, rowid").fetchall()
        self.unreadable = 0
        for (data,) in rows:
            try:
                event = Event.from_dict(decode(data))  # strict: a stored NaN is refused here
            except (TypeError, ValueError, RecursionError):
                self.unreadable += 1
                continue
            yield event

    def count(self, kind: str | None = None) -> int:
        with self._lock:
            if kind:
                return self._db.execute("SELECT COUNT(*) FROM events WHERE kind = ?", (kind,)).fetchone()[0]
            return self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

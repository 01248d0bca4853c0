"""Poison-input quarantine: which input was being decoded or classified when the process died.

An input that kills the daemon (a decoder that exhausts memory and is OOM-killed, a native
crash) would otherwise kill it again on every restart, and take every neighbour still waiting
for the same commit with it. So before each input is decoded, its keyed hash is written to a
small record in the state folder, and cleared once it has been classified. A record still set
at start names the input that was in progress when the process died; an input found there
after `STRIKES` consecutive deaths is rejected (kept aside with its reason) without being
decoded again. One death alone is not enough: a SIGKILL or a power cut lands on whatever
input happens to be in progress, and that input deserves one more, isolated, try.

With several inputs decoded at once (`runtime.workers`), the record holds every input in
progress: a death counts against each of them, and each then runs alone once (the worker runs
a suspect with nothing beside it), so only the input that really kills the process reaches
`STRIKES`.

The record is rewritten in place without fsync: it has to survive the process, not the
machine (the page cache outlives a killed process; a power cut is not the input's fault),
so it costs two small writes per input. It holds a keyed hash, never a file name.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger("medge.edge.quarantine")

STRIKES = 2  # deaths with the same input in progress before it is quarantined
RECORD_BYTES = 4096  # fixed size: rewriting it in place needs no new disk space (a full disk)
ENTRY_BYTES = 36  # "HASH DEATHS\n": 32 hex digits, a space, a small number


class CrashGuard:
    def __init__(self, path: str | Path, key: bytes, strikes: int = STRIKES):
        self.path = Path(path)
        self.strikes = strikes
        self._key = key
        self._suspects: dict[str, int] = {}  # input hash -> deaths it was in progress for
        self._running: dict[str, int] = {}  # input hash -> deaths, for every input in progress now
        self._lock = threading.Lock()
        self._fd: int | None = None
        try:
            previous = self.path.read_bytes().decode("ascii", "replace").split()
        except FileNotFoundError:
            previous = []
        # "HASH DEATHS" pairs, one per input in progress (a record of before has one pair)
        for digest, deaths in zip(previous[0::2], previous[1::2]):
            if deaths.isdigit():
                self._suspects[digest] = int(deaths) + 1
                log.warning("the daemon stopped abnormally while processing an input (%d time(s) in a row); "
                            "it is quarantined after %d", int(deaths) + 1, strikes)
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
            self._write(b"")
        except OSError as error:  # best effort: without the record the daemon still runs
            log.warning("cannot keep the in-progress record %s (%s): a crashing input is not quarantined",
                        self.path, error)
            self._fd = None

    def _hash(self, input_key: str) -> str:
        return hmac.new(self._key, b"in-progress:" + input_key.encode("utf-8"), hashlib.sha256).hexdigest()[:32]

    def deaths(self, input_key: str) -> int:
        """How many consecutive deaths this input was in progress for (0: none)."""
        return self._suspects.get(self._hash(input_key), 0)

    def quarantined(self, input_key: str) -> bool:
        return self.deaths(input_key) >= self.strikes

    def begin(self, input_key: str) -> None:
        """`input_key` is about to be decoded and classified (beside the others in progress)."""
        digest = self._hash(input_key)
        with self._lock:
            self._running[digest] = self._suspects.get(digest, 0)
            self._write_running_locked()

    def end(self, input_key: str) -> None:
        """`input_key` no longer runs (classified, rejected or quarantined)."""
        digest = self._hash(input_key)
        with self._lock:
            self._suspects.pop(digest, None)
            self._running.pop(digest, None)
            self._write_running_locked()

    def _write_running_locked(self) -> None:
        entries = list(self._running.items())[: (RECORD_BYTES - 1) // ENTRY_BYTES]
        self._write("".join(f"{digest} {deaths}\n" for digest, deaths in entries).encode("ascii"))

    def _write(self, record: bytes) -> None:
        if self._fd is None:
            return
        try:
            os.pwrite(self._fd, record.ljust(RECORD_BYTES - 1) + b"\n", 0)
        except OSError as error:
            log.debug("in-progress record not written: %s", error)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

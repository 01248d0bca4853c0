"""Poison-input quarantine: which input was being decoded or classified when the process died.

An input that kills the daemon (a decoder that exhausts memory and is OOM-killed, a native
crash) would otherwise kill it again on every restart, and take every neighbour still waiting
for the same commit with it. So before each input is decoded, its keyed hash is written to a
small record in the state folder, and cleared once it has been classified. A record still set
at start names the input that was in progress when the process died; an input found there
after `STRIKES` consecutive deaths is rejected (kept aside with its reason) without being
decoded again. One death alone is not enough: a SIGKILL or a power cut lands on whatever
input happens to be in progress, and that input deserves one more, isolated, try.

The record is rewritten in place without fsync: it has to survive the process, not the
machine (the page cache outlives a killed process; a power cut is not the input's fault),
so it costs two small writes per input. It holds a keyed hash, never a file name.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
from pathlib import Path

log = logging.getLogger("medge.edge.quarantine")

STRIKES = 2  # deaths with the same input in progress before it is quarantined
RECORD_BYTES = 128  # fixed size: rewriting it in place needs no new disk space (a full disk)


class CrashGuard:
    def __init__(self, path: str | Path, key: bytes, strikes: int = STRIKES):
        self.path = Path(path)
        self.strikes = strikes
        self._key = key
        self._suspects: dict[str, int] = {}  # input hash -> deaths it was in progress for
        self._fd: int | None = None
        try:
            previous = self.path.read_bytes().decode("ascii", "replace").split()
        except FileNotFoundError:
            previous = []
        if len(previous) == 2 and previous[1].isdigit():
            self._suspects[previous[0]] = int(previous[1]) + 1
            log.warning("the daemon stopped abnormally while processing an input (%d time(s) in a row); "
                        "it is quarantined after %d", int(previous[1]) + 1, strikes)
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
        """`input_key` is about to be decoded and classified."""
        digest = self._hash(input_key)
        self._write(f"{digest} {self._suspects.get(digest, 0)}".encode("ascii"))

    def end(self, input_key: str) -> None:
        """`input_key` no longer runs (classified, rejected or quarantined)."""
        self._suspects.pop(self._hash(input_key), None)
        self._write(b"")

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

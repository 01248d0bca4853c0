"""Pseudonymous input references: HMAC-SHA256 of a file name or SOP Instance UID under a
per-device secret key.

A plain hash of a file name or UID could be reversed by hashing candidate names; a keyed hash
cannot without the key, which never leaves the device (or the hospital that provisions it),
so only the site can link a published result back to its study.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_BYTES = 32
REF_HEX_CHARS = 32  # 128 bits: collision-free for any realistic number of inputs


def load_or_create_key(path: str | Path) -> bytes:
    """Read the device key, creating a random one (mode 0600) on first run."""
    path = Path(path)
    if path.exists():
        key = path.read_bytes()
        if len(key) < 16:
            from .errors import ConfigError

            raise ConfigError(f"state.pseudonym_key_file: {path} holds only {len(key)} bytes (need >= 16)")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(KEY_BYTES)
    # O_EXCL: two processes starting at once must not end up with different keys.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
        handle.flush()
        os.fsync(handle.fileno())
    return key


class Pseudonymizer:
    def __init__(self, key: bytes):
        self._key = key

    def ref(self, value: str) -> str:
        return hmac.new(self._key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:REF_HEX_CHARS]

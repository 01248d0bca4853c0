"""Who may load the dashboard page: a Host allow-list (against DNS rebinding) and optional
login, by password (scrypt hashes in a file) or by a trusted reverse proxy's user header.

Standard library only. Password hashes are `scrypt$N$r$p$SALT$HASH` (base64), made by
`medge dashboard hash-password`; a login file holds one `USER:HASH` per line, like htpasswd.
Sessions live in memory: a restarted dashboard asks for the password again.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from medge.edge.errors import ConfigError

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # ~16 MiB and ~50 ms per check on a small CPU
LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "localhost.localdomain"})
SESSION_COOKIE = "medge_session"
SESSION_TTL_S = 12 * 3600
MAX_SESSIONS = 1000


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    encode = lambda data: base64.b64encode(data).decode()  # noqa: E731
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${encode(salt)}${encode(digest)}"


def check_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    """The parts of a hash made by hash_password; ValueError when it is not one."""
    parts = encoded.strip().split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not a scrypt$N$r$p$SALT$HASH value (make one with `medge dashboard hash-password`)")
    n, r, p = (int(part) for part in parts[1:4])
    if n < 2**10 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16:
        raise ValueError("scrypt parameters out of range")
    return n, r, p, base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)


@cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_hex(8))


def verify_password(password: str, encoded: str) -> bool:
    try:
        n, r, p, salt, expected = check_hash(encoded)
    except ValueError:
        return False
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(expected),
                            maxmem=256 * 1024 * 1024)
    return hmac.compare_digest(digest, expected)


def load_login_file(path: Path) -> dict[str, str]:
    """USER:HASH lines (blank lines and # comments ignored) -> {user: hash}; ConfigError naming the line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"--login-file {path}: cannot read it ({getattr(error, 'strerror', None) or error})") from None
    users = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, _, encoded = line.partition(":")
        try:
            if not user:
                raise ValueError("expected USER:HASH")
            check_hash(encoded)
        except ValueError as error:
            raise ConfigError(f"--login-file {path}: line {number}: {error}") from None
        users[user] = encoded
    if not users:
        raise ConfigError(f"--login-file {path}: no USER:HASH line (make one with `medge dashboard hash-password`)")
    return users


def host_name(header: str | None) -> str | None:
    """The host part of a Host header, lower case, without port or trailing dot."""
    if not header:
        return None
    header = header.strip()
    if header.startswith("["):
        end = header.find("]")
        return header[1:end].lower() if end > 0 else None
    host = header.rsplit(":", 1)[0] if header.count(":") == 1 else header
    return host.lower().rstrip(".") or None


def is_local_bind(bind: str) -> bool:
    return bind in LOCAL_NAMES or bind.startswith("127.")


class Sessions:
    """Random tokens -> user, expiring; bounded so that logins cannot fill memory."""

    def __init__(self, ttl_s: float = SESSION_TTL_S):
        self.ttl_s = ttl_s
        self._tokens: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def create(self, user: str) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = (user, time.monotonic() + self.ttl_s)
            while len(self._tokens) > MAX_SESSIONS:
                self._tokens.popitem(last=False)
        return token

    def user(self, token: str | None) -> str | None:
        if not token:
            return None
        with self._lock:
            entry = self._tokens.get(token)
            if entry is None:
                return None
            if entry[1] < time.monotonic():
                del self._tokens[token]
                return None
            return entry[0]

    def end(self, token: str | None) -> None:
        with self._lock:
            self._tokens.pop(token or "", None)


@dataclass
class Access:
    """The HTTP server's access rules (see `medge dashboard --help`)."""

    bind: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ()  # names users type in the address bar, beyond the defaults
    users: dict[str, str] = field(default_factory=dict)  # user -> scrypt hash; empty: no password login
    proxy_header: str | None = None  # e.g. X-Forwarded-User, set by a reverse proxy that authenticated
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    sessions: Sessions = field(default_factory=Sessions)

    def __post_init__(self):
        names = set(LOCAL_NAMES) | {name.lower().rstrip(".") for name in self.allowed_hosts}
        if self.bind not in ("", "0.0.0.0", "::"):
            names.add(self.bind.lower())
        # The machine's own name: a DNS-rebinding page can never be served under it. (Not
        # getfqdn(): a DNS lookup at start that hangs where the site's DNS is down.)
        if socket.gethostname():
            names.add(socket.gethostname().lower())
        self._names = frozenset(names)

    @property
    def login_required(self) -> bool:
        return bool(self.users or self.proxy_header)

    def host_allowed(self, header: str | None) -> bool:
        """DNS rebinding serves an attacker's page under the attacker's name: accept only names
        this dashboard is known by, and IP literals (an origin no other site can have)."""
        if "*" in self.allowed_hosts:
            return True
        host = host_name(header)
        if host is None:
            return False
        if host in self._names:
            return True
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False
        return True

    def proxy_user(self, client_address: str, headers) -> str | None:
        if not self.proxy_header or client_address not in self.trusted_proxies:
            return None
        return (headers.get(self.proxy_header) or "").strip() or None

    def login(self, user: str, password: str) -> str | None:
        """A session token for a correct USER and password, else None."""
        encoded = self.users.get(user)
        if encoded is None:
            verify_password(password, _dummy_hash())  # the same cost whether the user exists or not
            return None
        return self.sessions.create(user) if verify_password(password, encoded) else None

"""systemd service notifications (READY=1, WATCHDOG=1, STATUS=...) without a dependency.

The protocol is one datagram per notification to the AF_UNIX socket named in $NOTIFY_SOCKET
(a path, or an abstract name written with a leading "@"). Outside systemd the variable is
unset and every call is a no-op that returns False, so the daemon calls these unconditionally.

    from medge.edge import sd_notify
    sd_notify.ready("watching /var/spool/medge/incoming")
    interval = sd_notify.watchdog_interval()   # None when the unit has no WatchdogSec=
    ... every `interval` seconds from the main loop: sd_notify.watchdog()
    sd_notify.stopping()

Containers have no systemd: there MEDGE_HEALTH_FILE names a file whose mtime watchdog() and
ready() refresh, and the image's HEALTHCHECK runs `python -m medge.edge.sd_notify check`,
which fails once the main loop has been silent for longer than MEDGE_HEALTH_MAX_AGE_S (60).
"""
from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

HEALTH_FILE_ENV = "MEDGE_HEALTH_FILE"
HEALTH_MAX_AGE_ENV = "MEDGE_HEALTH_MAX_AGE_S"
DEFAULT_HEALTH_MAX_AGE_S = 60.0


def _socket_address() -> str | bytes | None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return None
    if address.startswith("@"):
        # Abstract namespace: a leading NUL byte instead of "@".
        return "\0" + address[1:]
    return address


def notify(state: str) -> bool:
    """Sends `state` (newline-separated KEY=VALUE lines); True when systemd was told."""
    address = _socket_address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
        return True
    except OSError:
        # A vanished notify socket must never take the daemon down; systemd's watchdog will
        # notice the silence if this persists.
        return False


def ready(status: str | None = None) -> bool:
    """The service is up (Type=notify units stay 'activating' until this arrives)."""
    _touch_health_file()
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def watchdog() -> bool:
    """The main loop is alive; must arrive at least every WatchdogSec or systemd restarts us."""
    _touch_health_file()
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    """Free-text status shown by `systemctl status medge-edge`."""
    return notify(f"STATUS={text}")


def stopping() -> bool:
    return notify("STOPPING=1")


def watchdog_interval() -> float | None:
    """Seconds between watchdog() calls (half of WatchdogSec, as systemd recommends), or None
    when no watchdog is configured for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        seconds = int(usec) / 1_000_000
    except ValueError:
        return None
    return seconds / 2 if seconds > 0 else None


def _touch_health_file() -> None:
    path = os.environ.get(HEALTH_FILE_ENV)
    if not path:
        return
    try:
        Path(path).touch()
    except OSError:
        pass  # the health check reports the stale file; the daemon itself carries on


def health_problem(path: str | Path | None = None, max_age_s: float | None = None) -> str | None:
    """None when the health file was refreshed within `max_age_s`, else why not."""
    path = path or os.environ.get(HEALTH_FILE_ENV)
    if not path:
        return f"{HEALTH_FILE_ENV} is not set"
    if max_age_s is None:
        max_age_s = float(os.environ.get(HEALTH_MAX_AGE_ENV) or DEFAULT_HEALTH_MAX_AGE_S)
    try:
        age = time.time() - Path(path).stat().st_mtime
    except FileNotFoundError:
        return f"{path} does not exist: the daemon has not started its main loop"
    if age > max_age_s:
        return f"the daemon's main loop has been silent for {age:.0f} s (limit {max_age_s:.0f} s)"
    return None


def main(argv: list[str]) -> int:
    if argv[1:] != ["check"]:
        print("usage: python -m medge.edge.sd_notify check", file=sys.stderr)
        return 2
    problem = health_problem()
    print(f"unhealthy: {problem}" if problem else "healthy")
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

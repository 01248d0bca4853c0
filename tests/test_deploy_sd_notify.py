"""medge.edge.sd_notify speaks systemd's notify protocol to a real AF_UNIX datagram socket
(what systemd listens on for Type=notify units), and its health file backs the containers'
HEALTHCHECK."""
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from medge.edge import sd_notify


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_ready_watchdog_status_and_stopping_reach_the_socket(notify_socket):
    assert sd_notify.ready("watching /var/spool/medge/incoming")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=watching /var/spool/medge/incoming"
    assert sd_notify.watchdog()
    assert notify_socket.recv(4096) == b"WATCHDOG=1"
    assert sd_notify.status("3 queued")
    assert notify_socket.recv(4096) == b"STATUS=3 queued"
    assert sd_notify.stopping()
    assert notify_socket.recv(4096) == b"STOPPING=1"


def test_abstract_namespace_socket(monkeypatch):
    name = f"medge-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify.ready()
        assert sock.recv(4096) == b"READY=1"


def test_outside_systemd_every_call_is_a_harmless_no_op(monkeypatch, tmp_path):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify.ready() is False and sd_notify.watchdog() is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))  # systemd went away
    assert sd_notify.watchdog() is False


def test_watchdog_interval_is_half_of_watchdog_sec(monkeypatch):
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert sd_notify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")  # WatchdogSec=60
    assert sd_notify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert sd_notify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sd_notify.watchdog_interval() == 30.0


def health_check(env: dict) -> subprocess.CompletedProcess:
    """The image's HEALTHCHECK command."""
    return subprocess.run([sys.executable, "-m", "medge.edge.sd_notify", "check"], env=dict(os.environ, **env),
                          capture_output=True, text=True, timeout=60)


def test_container_health_check_follows_the_watchdog(monkeypatch, tmp_path):
    health_file = tmp_path / "alive"
    env = {"MEDGE_HEALTH_FILE": str(health_file), "MEDGE_HEALTH_MAX_AGE_S": "30"}

    done = health_check(env)
    assert done.returncode == 1 and "has not started" in done.stdout

    monkeypatch.setenv("MEDGE_HEALTH_FILE", str(health_file))
    sd_notify.watchdog()
    done = health_check(env)
    assert done.returncode == 0 and done.stdout.strip() == "healthy"

    an_hour_ago = time.time() - 3600
    os.utime(health_file, (an_hour_ago, an_hour_ago))  # the main loop hung an hour ago
    done = health_check(env)
    assert done.returncode == 1, done.stdout
    silent = re.search(r"silent for (\d+) s \(limit 30 s\)", done.stdout)
    assert silent and 3600 <= int(silent.group(1)) < 3700, done.stdout

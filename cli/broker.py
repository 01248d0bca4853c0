"""Start a local MQTT broker: Mosquitto when installed, else amqtt (pure Python).

Used by `medge demo` and by the tests, which need a broker of their own on a free port that
they can kill and restart (a restart keeps the port, and with `persistence` the stored
messages, as a real site broker would).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class LocalBroker:
    """A broker process on 127.0.0.1:`port`. `kind` is "mosquitto", "amqtt" or "auto"."""

    def __init__(self, port: int | None = None, kind: str = "auto", workdir: str | Path | None = None,
                 extra_config: str = "", persistence: bool = True):
        self.port = port or free_port()
        if kind == "auto":
            kind = "mosquitto" if mosquitto_binary() else "amqtt"
        self.kind = kind
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="medge-broker-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.extra_config = extra_config
        self.persistence = persistence
        self.process: subprocess.Popen | None = None

    @property
    def mqtt_version(self) -> str:
        """The newest MQTT version the broker speaks: amqtt knows only 3.1.1."""
        return "5" if self.kind == "mosquitto" else "3.1.1"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        if self.kind == "mosquitto":
            config = self.workdir / "mosquitto.conf"
            lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true"]
            if os.geteuid() == 0:
                # Started as root, Mosquitto drops to the `mosquitto` user, which can neither read
                # files in a private folder (certificates, password file) nor save its database there.
                lines.append("user root")
            if self.persistence:
                lines += ["persistence true", f"persistence_location {self.workdir}/", "autosave_interval 1"]
            config.write_text("\n".join(lines) + "\n" + self.extra_config)
            return [mosquitto_binary(), "-c", str(config)]
        config = self.workdir / "amqtt.yaml"
        config.write_text(
            "listeners:\n  default:\n    type: tcp\n"
            f"    bind: 127.0.0.1:{self.port}\n"
            "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
            "  amqtt.plugins.sys.broker.BrokerSysPlugin:\n    sys_interval: 0\n")
        return [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(config)]

    def start(self, timeout: float = 10.0) -> LocalBroker:
        log = open(self.workdir / f"{self.kind}.log", "ab")
        self.process = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        log.close()
        if not wait_for_port(self.port, timeout=timeout):
            self.stop()
            raise RuntimeError(f"{self.kind} did not start on port {self.port}: see {self.workdir}")
        return self

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def kill(self) -> None:
        """Abrupt death (SIGKILL): what a power cut or crash does to a broker."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> LocalBroker:
        self.stop()
        return self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def stop_process(process: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM (a clean shutdown: medge's daemons publish 'offline'), SIGKILL if it lingers."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None

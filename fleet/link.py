"""The operator's MQTT connection to one site: what each device last said (retained status and
fleet reports, heartbeats), the site's target record, and publishing commands and the target
with their PUBACK checked, so a broker that refuses the account (ACL: only the fleet account
may write commands/#) fails the command in one line instead of silently.
"""
from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

from medge.edge.comms.mqtt import connect_async, make_client
from medge.edge.comms.topics import FLEET_DEVICE, parse_topic
from medge.edge.config import MqttSettings
from medge.edge.errors import MedgeError
from medge.edge.fleet.commands import command_topic, encode_command

NOT_AUTHORIZED = 135


class FleetError(MedgeError):
    """A rollout step that failed: one line for the operator."""


@dataclass
class DeviceView:
    """Everything the operator knows about one device, from its own messages."""

    device: str
    status: dict | None = None  # the retained status (online / degraded / offline, model)
    heartbeat: dict | None = None
    fleet: dict | None = None  # the latest (retained) medge.fleet/1 report
    shadow: list = field(default_factory=list)  # shadow messages seen while connected
    seen_at: float = 0.0

    @property
    def online(self) -> bool:
        return (self.status or {}).get("state") in ("online", "degraded") or (
            self.status is None and self.heartbeat is not None)

    @property
    def model(self) -> dict | None:
        """The active model: the fleet report's, else the heartbeat's, else the status's."""
        for source in (self.fleet, self.heartbeat, self.status):
            if source:
                model = source.get("active") if source is self.fleet else source.get("model")
                if model:
                    return model
        return None


class SiteLink:
    def __init__(self, settings: MqttSettings, site: str, name: str = "fleet"):
        self.settings = settings
        self.site = site
        self.prefix = settings.topic_prefix
        self.devices: dict[str, DeviceView] = {}
        self.target: dict | None = None
        self._changed = threading.Condition()
        self._connected = threading.Event()
        self._refused: str | None = None
        self._acks: dict[int, int] = {}
        client_id = settings.client_id or f"medge-{name}-{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
        self.client = make_client(settings, client_id)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish

    # ------------------------------------------------------------------ connection

    def start(self, timeout: float = 15.0, settle_s: float = 1.0) -> SiteLink:
        """Connect, subscribe to the site, and give retained messages `settle_s` to arrive."""
        connect_async(self.client, self.settings, keepalive=30)
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while not self._connected.wait(0.1):
            if self._refused:
                self.stop()
                raise FleetError(f"broker {self.settings.broker} refused the connection: {self._refused}")
            if time.monotonic() > deadline:
                self.stop()
                raise FleetError(f"cannot reach the broker at {self.settings.broker} within {timeout:.0f} s")
        time.sleep(settle_s)
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> SiteLink:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def local_address(self) -> str:
        """The address this machine reaches the broker from: the devices, on the broker's network,
        most likely reach this machine there too (the default host of a served archive's URL)."""
        sock = self.client.socket()
        try:
            return sock.getsockname()[0] if sock is not None else "127.0.0.1"
        except (OSError, AttributeError):
            return "127.0.0.1"

    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if reason_code.is_failure:
            self._refused = str(reason_code)
            return
        client.subscribe(f"{self.prefix}/{self.site}/#", qos=1)
        # wait a moment for the SUBACK before saying we are connected
        self._connected.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties=None):
        with self._changed:
            self._acks[mid] = int(getattr(reason_code, "value", reason_code) or 0)
            self._changed.notify_all()

    def _on_message(self, client, userdata, message):
        parsed = parse_topic(message.topic, self.prefix)
        if parsed.command or parsed.kind is None or parsed.site != self.site:
            return
        try:
            payload = json.loads(message.payload) if message.payload else None
        except ValueError:
            return
        if payload is not None and not isinstance(payload, dict):
            return
        with self._changed:
            if parsed.device == FLEET_DEVICE:
                if parsed.kind == "target":
                    self.target = payload
            else:
                view = self.devices.setdefault(parsed.device, DeviceView(parsed.device))
                view.seen_at = time.time()
                if parsed.kind in ("status", "heartbeat", "fleet"):
                    setattr(view, parsed.kind, payload)
                elif parsed.kind == "shadow" and payload:
                    view.shadow.append(payload)
                    del view.shadow[:-1000]
            self._changed.notify_all()

    # ------------------------------------------------------------------ waiting

    def wait(self, predicate, timeout: float) -> bool:
        """Wait until `predicate()` is true (checked on every message); False after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.5))
        return True

    def snapshot(self) -> dict[str, DeviceView]:
        with self._changed:
            return {name: DeviceView(v.device, v.status, v.heartbeat, v.fleet, list(v.shadow), v.seen_at)
                    for name, v in self.devices.items()}

    # ------------------------------------------------------------------ publishing

    def _publish(self, topic: str, body: bytes, what: str, timeout: float = 10.0) -> None:
        info = self.client.publish(topic, body, qos=1, retain=True)
        with self._changed:
            acked = self._changed.wait_for(lambda: info.mid in self._acks, timeout)
            code = self._acks.pop(info.mid, None)
        if not acked:
            raise FleetError(f"{what}: the broker did not acknowledge it within {timeout:.0f} s")
        if code == NOT_AUTHORIZED:
            raise FleetError(f"{what}: the broker refused it (not authorized): only the fleet account may publish "
                             f"commands and targets (--username fleet; deploy/mosquitto/acl)")
        if code is not None and code >= 0x80:
            raise FleetError(f"{what}: the broker refused it (reason code {code})")

    def send_command(self, command: dict) -> None:
        topic = command_topic(self.prefix, command["site"], command["device"])
        self._publish(topic, encode_command(command), f"{command['action']} command to {command['device']}")

    def clear_command(self, device: str) -> None:
        """Remove a handled command from the broker (an empty retained message), so a device that
        starts afresh later, with no memory of it, does not receive it (expired by then)."""
        self._publish(command_topic(self.prefix, self.site, device), b"", f"clearing the command to {device}")

    def publish_target(self, target: dict) -> None:
        from medge.fleet.target import target_topic

        self._publish(target_topic(self.prefix, self.site), json.dumps(target, separators=(",", ":")).encode(),
                      f"target record of site {self.site}")

"""The MQTT side of the dashboard and the monitor: connect (TLS, credentials), subscribe to
`{prefix}/#`, turn each message into an `Event`.

Credentials and TLS files stay here, in the server process: only `public_url` (scheme, host,
port) is ever shown to a browser.
"""
from __future__ import annotations

import json
import logging
import socket
import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from medge.dashboard.events import Event, parse_message
from medge.edge.errors import ConfigError

log = logging.getLogger("medge.dashboard")

DEFAULT_PORTS = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883}


@dataclass
class BrokerSettings:
    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    topic_prefix: str = "medge"
    mqtt_version: str = "5"
    client_id: str | None = None
    # A persistent session makes the broker queue QoS 1 results while the dashboard is down.
    session_expiry_s: int = 0

    def __post_init__(self):
        parts = urlsplit(self.url)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ConfigError(f"--broker {self.url!r}: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        try:
            self.port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError:
            raise ConfigError(f"--broker {self.url!r}: the port is not a number") from None
        self.host = parts.hostname
        self.tls = parts.scheme in ("mqtts", "ssl") or bool(self.ca_file)
        self.username = self.username or parts.username
        self.password = self.password or parts.password
        if self.password and not self.username:
            raise ConfigError("mqtt password given without a username (--username)")

    @property
    def public_url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


class MqttFeed:
    """Calls `on_event(event)` for every message under the prefix, from paho's network thread."""

    def __init__(self, settings: BrokerSettings, on_event: Callable[[Event], None],
                 on_connection: Callable[[bool, str], None] | None = None, name: str = "dashboard"):
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.settings = settings
        self.on_event = on_event
        self.on_connection = on_connection or (lambda connected, message: None)
        client_id = settings.client_id or f"medge-{name}-{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
        self.mqtt5 = settings.mqtt_version == "5"
        if self.mqtt5:
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        else:  # 3.1.1 has no session expiry: a persistent session is clean_session=False
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                      protocol=mqtt.MQTTv311, clean_session=not settings.session_expiry_s)
        if settings.username:
            self.client.username_pw_set(settings.username, settings.password)
        if settings.tls:
            try:
                self.client.tls_set(ca_certs=settings.ca_file, certfile=settings.cert_file,
                                    keyfile=settings.key_file, cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError, ValueError) as error:
                raise ConfigError(f"mqtt TLS files: {error}") from None
            self.client.tls_insecure_set(settings.tls_insecure)
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self._connect_properties = None
        self._stopping = False
        self._refused: str | None = None
        if settings.session_expiry_s and self.mqtt5:
            self._connect_properties = Properties(PacketTypes.CONNECT)
            self._connect_properties.SessionExpiryInterval = settings.session_expiry_s

    def start(self) -> MqttFeed:
        # connect_async + loop_start: the page comes up (and says "broker disconnected") even
        # when the broker is not reachable yet; paho keeps retrying.
        if self.mqtt5:
            self.client.connect_async(self.settings.host, self.settings.port, keepalive=30,
                                      clean_start=not self.settings.session_expiry_s,
                                      properties=self._connect_properties)
        else:
            self.client.connect_async(self.settings.host, self.settings.port, keepalive=30)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self._stopping = True
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: dict, retain: bool = True, qos: int = 1) -> None:
        self.client.publish(topic, json.dumps(payload), qos=qos, retain=retain)

    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if reason_code.is_failure:
            message = f"broker {self.settings.public_url} refused the connection: {reason_code}"
            if message != self._refused:
                log.error(message)
            self._refused = message
            self.on_connection(False, message)
            return
        self._refused = None
        client.subscribe(f"{self.settings.topic_prefix}/#", qos=1)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties=None):
        # Only now is nothing missed: "connected" means the broker has the subscription.
        refused = [code for code in reason_codes if code.is_failure]
        if refused:
            message = (f"broker {self.settings.public_url} refused the subscription to "
                       f"{self.settings.topic_prefix}/#: {refused[0]} (check its ACL)")
            log.error(message)
            self.on_connection(False, message)
            return
        log.info("connected to %s, subscribed to %s/#", self.settings.public_url, self.settings.topic_prefix)
        self.on_connection(True, f"connected to {self.settings.public_url}")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None):
        if self._stopping:
            return
        if self._refused:  # paho reports the refusal again as a disconnect: keep the real reason
            self.on_connection(False, self._refused + "; retrying")
            return
        message = f"disconnected from {self.settings.public_url} ({reason_code}); retrying"
        log.warning(message)
        self.on_connection(False, message)

    def _on_message(self, client, userdata, message):
        try:
            event = parse_message(message.topic, message.payload, self.settings.topic_prefix,
                                  retained=bool(message.retain))
            if event is not None:
                self.on_event(event)
        except Exception:  # a bug in one message's handling must not stop the feed
            log.exception("could not handle a message on %s", message.topic)

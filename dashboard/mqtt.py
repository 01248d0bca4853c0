"""The MQTT side of the dashboard and the monitor: connect with the shared broker settings
(medge.edge.config.MqttSettings, the daemon's own type and URL parser) and client factory
(medge.edge.comms.mqtt.make_client), subscribe to `{prefix}/#`, turn each message into an
`Event`.

Credentials and TLS files stay here, in the server process: only `public_url` (scheme, host,
port) is ever shown to a browser.
"""
from __future__ import annotations

import json
import logging
import socket
import uuid
from collections.abc import Callable

from medge.dashboard.events import MAX_MESSAGE_BYTES, Event, parse_message
from medge.edge.comms.mqtt import connect_async, connect_failure, make_client
from medge.edge.comms.topics import subscription
from medge.edge.config import MqttSettings

log = logging.getLogger("medge.dashboard")


class MqttFeed:
    """Calls `on_event(event)` for every message under the prefix, from paho's network thread,
    and `on_connection(connected, message)` whenever the connection changes, with the reason."""

    def __init__(self, settings: MqttSettings, on_event: Callable[[Event], None],
                 on_connection: Callable[[bool, str], None] | None = None, name: str = "dashboard",
                 session_expiry_s: int = 0, max_message_bytes: int = MAX_MESSAGE_BYTES):
        self.settings = settings
        self.on_event = on_event
        self.on_connection = on_connection or (lambda connected, message: None)
        self.session_expiry_s = session_expiry_s
        self.max_message_bytes = max_message_bytes
        client_id = settings.client_id or f"medge-{name}-{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
        # A persistent session makes the broker queue QoS 1 results while the dashboard is down.
        self.client = make_client(settings, client_id, persistent=bool(session_expiry_s))
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self._stopping = False
        self._refused: str | None = None
        self._unreachable: str | None = None

    def start(self) -> MqttFeed:
        # connect_async + loop_start: the page comes up (and says "broker disconnected") even
        # when the broker is not reachable yet; paho keeps retrying.
        connect_async(self.client, self.settings, keepalive=30, session_expiry_s=self.session_expiry_s)
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
        self._refused = self._unreachable = None
        client.subscribe(subscription(self.settings.topic_prefix), qos=1)

    def _on_connect_fail(self, client, userdata):
        message = f"cannot reach broker {self.settings.public_url}: {connect_failure()}; retrying"
        if message != self._unreachable:  # once per outage, not once per retry
            log.warning(message)
        self._unreachable = message
        self.on_connection(False, message)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties=None):
        # Only now is nothing missed: "connected" means the broker has the subscription.
        refused = [code for code in reason_codes if code.is_failure]
        if refused:
            message = (f"broker {self.settings.public_url} refused the subscription to "
                       f"{subscription(self.settings.topic_prefix)}: {refused[0]} (check its ACL)")
            log.error(message)
            self.on_connection(False, message)
            return
        log.info("connected to %s, subscribed to %s", self.settings.public_url,
                 subscription(self.settings.topic_prefix))
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
                                  retained=bool(message.retain), max_bytes=self.max_message_bytes)
            if event is not None:
                self.on_event(event)
        except Exception:  # a bug in one message's handling must not stop the feed
            log.exception("could not handle a message on %s", message.topic)

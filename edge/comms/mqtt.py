"""Publishing the outbox over MQTT (paho-mqtt 2, callback API version 2).

The outbox on disk is the queue; paho's own queue is memory-only, so it is only ever handed
a window of the oldest unacknowledged rows. A row is deleted from the outbox when the
broker's PUBACK for its MQTT message id arrives in `on_publish`. While a connection drops and
comes back, paho re-sends the rows it was holding (same MQTT mid, same payload); after the
process itself dies, the next start hands every stored row to paho again, in order. The
payload's own `id` never changes, so subscribers drop the duplicates QoS 1 allows.

Status: `online` (retained) is published on every connect; `offline` (retained) is the last
will, which the broker sends when the connection is lost abruptly (it carries `last_will` and
`will_set_at` instead of a `ts`, see payloads.last_will_payload), and is published explicitly
on a clean shutdown.

`make_client` is the one paho client set-up (protocol, credentials, TLS, session) for the
daemon, `edge check`, the dashboard, the monitor and the demo.
"""
from __future__ import annotations

import logging
import ssl
import sys
import threading
import time

import paho.mqtt.client as mqtt

from ..config import EdgeConfig, MqttSettings
from ..errors import ConfigError
from ..outbox import Outbox
from ..payloads import encode, last_will_payload

log = logging.getLogger("medge.edge.mqtt")

WINDOW = 100  # rows handed to paho at once; the rest wait on disk
ACK_FLUSH_S = 0.05  # PUBACKs are deleted from the outbox in batches (one transaction each)


def make_client(settings: MqttSettings, client_id: str, persistent: bool = False) -> mqtt.Client:
    """A paho client with the settings' protocol version, credentials and TLS files.

    `persistent`: the broker keeps the session (and queues QoS 1 messages) while the client is
    away; on MQTT 3.1.1 that is clean_session=False, on MQTT 5 the session expiry given to
    `connect_async`."""
    protocol = mqtt.MQTTv5 if settings.mqtt_version == "5" else mqtt.MQTTv311
    extra = {} if protocol == mqtt.MQTTv5 else {"clean_session": not persistent}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **extra)
    if settings.username:
        client.username_pw_set(settings.username, settings.resolved_password())
    if settings.tls:
        try:
            client.tls_set(ca_certs=str(settings.ca_file) if settings.ca_file else None,
                           certfile=str(settings.cert_file) if settings.cert_file else None,
                           keyfile=str(settings.key_file) if settings.key_file else None,
                           cert_reqs=ssl.CERT_REQUIRED)
        except (ssl.SSLError, OSError, ValueError) as error:
            raise ConfigError(f"mqtt.ca_file: cannot load the TLS files ({error})") from None
        if settings.tls_insecure:
            log.warning("mqtt.tls_insecure is set: the broker's certificate host name is not checked")
            client.tls_insecure_set(True)
    return client


def connect_async(client: mqtt.Client, settings: MqttSettings, keepalive: int = 30,
                  session_expiry_s: int = 0) -> None:
    """Start connecting in the background (paho retries until it works); `session_expiry_s` > 0
    asks an MQTT 5 broker to keep the session that long."""
    if settings.mqtt_version != "5":
        client.connect_async(settings.host, settings.port, keepalive=keepalive)
        return
    properties = None
    if session_expiry_s:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = session_expiry_s
    client.connect_async(settings.host, settings.port, keepalive=keepalive, clean_start=not session_expiry_s,
                         properties=properties)


def connect_failure() -> str:
    """Inside paho's on_connect_fail: why the connection attempt failed. paho calls it from the
    `except OSError` around its connect, so the exception is the one being handled."""
    error = sys.exc_info()[1]
    if error is None:
        return "no answer"
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


class Publisher:
    def __init__(self, config: EdgeConfig, outbox: Outbox, status_payload):
        """`status_payload(state, reason)` builds the medge.status/1 payload for online/offline."""
        self.config = config
        self.outbox = outbox
        self.status_payload = status_payload
        self.published = 0  # rows acknowledged by the broker since start
        self._lock = threading.Lock()
        self._inflight: dict[int, int] = {}  # MQTT mid -> outbox seq (None: not an outbox row)
        self._early_acks: dict[int, bool] = {}  # PUBACKs that beat publish() returning: mid -> ok
        self._acked: list[int] = []
        self._last_seq = 0  # highest outbox seq handed to paho in this process
        self._connected = threading.Event()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_problem: str | None = None
        # Messages *to* the device (edge/fleet: its commands/fleet topic): topic -> callback(payload
        # bytes) on paho's network thread; subscribed again on every connect (retained ones re-arrive).
        self.subscriptions: dict = {}
        self.on_connected: list = []  # callbacks after each connect (the fleet re-sends its retained report)
        self.client = self._make_client()

    # ------------------------------------------------------------------ set-up
    def _make_client(self) -> mqtt.Client:
        client = make_client(self.config.mqtt, self.config.client_id)
        self._set_will(client)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def subscribe(self, topic: str, callback) -> None:
        """Hand every message on `topic` (exact name, QoS 1) to `callback(payload)`; call before start()."""
        self.subscriptions[topic] = callback

    def _on_message(self, client, userdata, message):
        callback = self.subscriptions.get(message.topic)
        if callback is None:
            return
        try:
            callback(bytes(message.payload))
        except Exception:  # a bad command must not stop paho's network thread
            log.exception("handling a message on %s failed", message.topic)

    def _set_will(self, client: mqtt.Client) -> None:
        # Registered again before every (re)connect, so its will_set_at is that connection's.
        will = last_will_payload(self.status_payload("offline", "connection lost"))
        client.will_set(self.config.topic("status"), encode(will), qos=1, retain=True)

    def start(self) -> None:
        settings = self.config.mqtt
        log.info("connecting to %s (MQTT %s) as %s", settings.public_url, settings.mqtt_version,
                 self.config.client_id)
        connect_async(self.client, settings, keepalive=30)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._run, name="medge-publisher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ paho callbacks (network thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if reason_code.is_failure:
            self._problem(f"broker {self.config.mqtt.broker} refused the connection: {reason_code}")
            return
        self._last_problem = None
        log.info("connected to %s", self.config.mqtt.broker)
        self._connected.set()
        self._publish(self.config.topic("status"), encode(self.status_payload("online", None)), qos=1, retain=True)
        for topic in self.subscriptions:
            client.subscribe(topic, qos=1)
        for callback in list(self.on_connected):
            try:
                callback()
            except Exception:
                log.exception("after connecting")
        self._wake.set()

    def _on_connect_fail(self, client, userdata):
        self._problem(f"cannot reach broker {self.config.mqtt.public_url} ({connect_failure()}); "
                      "results wait in the outbox")
        self._set_will(client)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None):
        if self._connected.is_set() and not self._stopping.is_set():
            log.warning("disconnected from %s (%s); results wait in the outbox", self.config.mqtt.public_url,
                        reason_code)
        self._connected.clear()
        if not self._stopping.is_set():
            self._set_will(client)

    def _on_publish(self, client, userdata, mid, reason_code, properties=None):
        ok = not reason_code.is_failure
        with self._lock:
            if mid not in self._inflight:
                self._early_acks[mid] = ok
                return
            seq = self._inflight.pop(mid)
            self._settle_locked(seq, ok, reason_code)
        self._wake.set()

    def _settle_locked(self, seq, ok, reason_code=None):
        if seq is None:
            return
        if ok:
            self._acked.append(seq)
        else:
            # Stays in the outbox and is offered again after the next start.
            log.error("broker rejected outbox message %d: %s", seq, reason_code)

    def _problem(self, message: str) -> None:
        if message != self._last_problem:  # once per outage, not once per retry
            log.warning(message)
            self._last_problem = message

    # ------------------------------------------------------------------ publishing
    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool = False, seq: int | None = None):
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos == 0 and info.rc != mqtt.MQTT_ERR_SUCCESS:
            return info  # dropped by paho (offline): no on_publish will come for it
        # QoS 0 mids are tracked too (seq None): paho calls on_publish for them, and an untracked
        # mid left in _early_acks would, once mids wrap, delete a later outbox row un-acknowledged.
        with self._lock:
            early = self._early_acks.pop(info.mid, None)
            if early is None:
                self._inflight[info.mid] = seq
            else:
                self._settle_locked(seq, early)
        return info

    def publish_now(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bool:
        """Publish something that needs no durability (heartbeat); False when offline."""
        if not self._connected.is_set():
            return False
        self._publish(topic, payload, qos=qos, retain=retain)
        return True

    def notify(self) -> None:
        """New rows are in the outbox."""
        self._wake.set()

    def _run(self) -> None:
        failure = None
        while not self._stopping.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._flush_acks()
                if self._connected.is_set():
                    self._fill_window()
                failure = None
            except Exception as error:  # e.g. disk full: keep publishing once it clears
                if str(error) != failure:
                    log.error("publishing from the outbox failed: %s; retrying", error)
                    failure = str(error)
                self._stopping.wait(1.0)
            time.sleep(ACK_FLUSH_S if self._acked else 0)
        try:
            self._flush_acks()
        except Exception as error:
            log.warning("could not record the last acknowledgements (%s); those messages are sent again "
                        "(same ids) after the next start", error)

    def _flush_acks(self) -> None:
        with self._lock:
            acked, self._acked = self._acked, []
        if acked:
            try:
                self.outbox.remove(acked)
            except BaseException:
                with self._lock:  # kept for the next try
                    self._acked[:0] = acked
                raise
            self.published += len(acked)

    def _fill_window(self) -> None:
        with self._lock:
            room = WINDOW - sum(1 for seq in self._inflight.values() if seq is not None)
        if room <= 0:
            return
        for message in self.outbox.after(self._last_seq, limit=room):
            self._publish(message.topic, message.payload, qos=1, seq=message.seq)
            self._last_seq = message.seq

    # ------------------------------------------------------------------ state and shutdown
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def pending(self) -> int:
        with self._lock:
            return sum(1 for seq in self._inflight.values() if seq is not None) + len(self._acked)

    def drain(self, timeout: float) -> bool:
        """Wait (while connected) until everything stored has been acknowledged."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._connected.is_set():
            self._wake.set()
            if self.outbox.count() == 0 and self.pending() == 0:
                return True
            time.sleep(0.05)
        return self.outbox.count() == 0

    def stop(self, timeout: float = 3.0) -> None:
        """Publish `offline` (retained) if connected, then disconnect."""
        if self._connected.is_set():
            info = self._publish(self.config.topic("status"), encode(self.status_payload("offline", "shutdown")),
                                 qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                log.warning("could not publish offline status before shutdown")
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.client.disconnect()
        self.client.loop_stop()


def probe_broker(config: EdgeConfig, timeout: float = 5.0) -> str | None:
    """Connect once with the daemon's credentials and TLS settings: None if accepted, else why not."""
    settings = config.mqtt
    client = make_client(settings, f"{config.client_id}-check")
    answer: dict = {}
    done = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties=None):
        answer["reason"] = reason_code
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(settings.host, settings.port, keepalive=10)
    except (OSError, ssl.SSLError) as error:
        return f"cannot reach {settings.broker}: {error}"
    client.loop_start()
    try:
        if not done.wait(timeout):
            return f"{settings.broker} accepted TCP but sent no MQTT CONNACK within {timeout:.0f}s"
        if answer["reason"].is_failure:
            return f"{settings.broker} refused the connection: {answer['reason']}"
        return None
    finally:
        client.disconnect()
        client.loop_stop()

"""The dashboard's core: MQTT feed -> de-duplication -> SQLite history -> state -> live clients.

The HTTP server (`server.py`) only reads `state` and listens on `hub`.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
from pathlib import Path

from medge.dashboard.alerts import AlertRules
from medge.dashboard.events import MAX_MESSAGE_BYTES, Event
from medge.dashboard.homeassistant import DISCOVERY_PREFIX, HomeAssistantDiscovery
from medge.dashboard.mqtt import MqttFeed
from medge.dashboard.state import DashboardState
from medge.dashboard.store import HistoryStore
from medge.edge.comms.topics import FLEET_DEVICE, KINDS
from medge.edge.config import MqttSettings

log = logging.getLogger("medge.dashboard")

CLOSE = object()


class Hub:
    """Fans named JSON messages out to every connected browser (one queue each)."""

    def __init__(self, backlog: int = 2000):
        self.backlog = backlog
        self._clients: set[queue.Queue] = set()
        self._lock = threading.Lock()

    def subscribe(self) -> queue.Queue:
        client = queue.Queue(maxsize=self.backlog)
        with self._lock:
            self._clients.add(client)
        return client

    def unsubscribe(self, client: queue.Queue) -> None:
        with self._lock:
            self._clients.discard(client)

    def connected(self, client: queue.Queue) -> bool:
        with self._lock:
            return client in self._clients

    def publish(self, name: str, data) -> None:
        message = (name, json.dumps(data))
        with self._lock:
            for client in list(self._clients):
                try:
                    client.put_nowait(message)
                except queue.Full:
                    # A browser that cannot keep up is dropped; it reconnects and gets a snapshot.
                    self._clients.discard(client)

    def close(self) -> None:
        with self._lock:
            for client in self._clients:
                try:
                    client.put_nowait(CLOSE)
                except queue.Full:
                    pass
            self._clients.clear()


class DashboardService:
    def __init__(self, broker: MqttSettings, db_path: str | Path, rules: AlertRules | None = None,
                 stale_after_s: float = 90.0, retention_days: float = 7.0, ha_discovery: bool = False,
                 ha_prefix: str = DISCOVERY_PREFIX, summary_interval_s: float = 0.5, session_expiry_s: int = 0,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, max_devices: int = 500, target_keys: dict | None = None):
        self.broker = broker
        self.state = DashboardState(rules or AlertRules(), stale_after_s=stale_after_s, max_devices=max_devices)
        self.state.target_keys = target_keys or {}  # before the replay: stored targets are verified too
        self.store = HistoryStore(db_path, retention_days=retention_days)
        self.hub = Hub()
        self._replay()
        self.state.set_broker(False, broker.public_url, "connecting")
        self.feed = MqttFeed(broker, self.handle, self._on_connection, session_expiry_s=session_expiry_s,
                             max_message_bytes=max_message_bytes)
        self.discovery = (HomeAssistantDiscovery(self.feed.publish, broker.topic_prefix, ha_prefix)
                          if ha_discovery else None)
        self.summary_interval_s = summary_interval_s
        self._dirty = threading.Event()
        self._stopping = threading.Event()
        self._ticker = threading.Thread(target=self._push_summaries, name="summary", daemon=True)

    def _replay(self) -> None:
        # Whatever the database holds, the dashboard starts: an event the state cannot fold
        # (stored by an older version, or a bug) is skipped and counted, never fatal.
        replayed = failed = 0
        for event in self.store.replay():
            try:
                self.state.apply(event)
                replayed += 1
            except Exception as error:
                failed += 1
                log.debug("history: cannot replay event %s: %s", getattr(event, "id", "?"), error)
        skipped = failed + self.store.unreadable
        log.info("history: %d events from %s%s", replayed, self.store.path,
                 f"; {skipped} unreadable events skipped" if skipped else "")

    def start(self) -> DashboardService:
        self.feed.start()
        self._ticker.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.feed.stop()
        self.hub.close()
        self.store.close()

    def handle(self, event: Event) -> None:
        """One message from the broker (paho's thread)."""
        if self.state.is_duplicate(event):
            return
        self.store.add(event)
        for name, row in self.state.apply(event) or []:
            self.hub.publish(name, row)
        # A device that only sends garbage gets no entities; a site's fleet target is no device.
        if self.discovery and event.kind in KINDS and event.device != FLEET_DEVICE:
            self.discovery.observe(self.state.device(event.site, event.device))
        self._dirty.set()

    def _on_connection(self, connected: bool, message: str) -> None:
        self.state.set_broker(connected, message=message)
        if connected and self.discovery:
            self.discovery.forget()
            for device in list(self.state.devices.values()):
                self.discovery.observe(device)
        self._dirty.set()

    def _push_summaries(self) -> None:
        # Coalesced: a burst of results costs one summary per interval, not one per message.
        while not self._stopping.is_set():
            if self._dirty.wait(timeout=5.0):
                self._dirty.clear()
            self.hub.publish("summary", self.state.summary())
            self._stopping.wait(self.summary_interval_s)

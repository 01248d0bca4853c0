"""Home Assistant MQTT discovery: each medge device appears in Home Assistant as a device
with three entities (online status, last class with its `decision` attribute: positive,
negative or refer, last score), read straight from the
medge topics, so nothing is republished or duplicated.

Dashboard-side (`medge dashboard --ha-discovery`): the dashboard already sees every device,
and the devices stay free of Home Assistant specifics. Configs are retained, so Home
Assistant picks them up whenever it (re)starts.

Every template reads optional fields with `value_json.get(...)`: an `online` status has no
`reason` and a not_applicable result no `class` or `score`, and a missing attribute inside
`tojson` is a template error in Home Assistant on every such message. Home Assistant keeps
the state of the last message that arrived, which is the right order for status (the last
will has no `ts`; see edge/schemas/status.schema.json).
"""
from __future__ import annotations

import re
from collections.abc import Callable

from medge import __version__
from medge.edge.comms.topics import DEFAULT_PREFIX
from medge.edge.comms.topics import topic as build_topic

DISCOVERY_PREFIX = "homeassistant"
# Connectivity, not health: a `degraded` device is still connected.
CONNECTIVITY = "{{ 'offline' if value_json.get('state') == 'offline' else 'online' }}"


def _object_id(*parts: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]", "_", "_".join(parts))


def _entity_id(component: str, *parts: str) -> str:
    """Home Assistant >= 2025.10 `default_entity_id`: DOMAIN.lowercase_slug (replaces object_id)."""
    slug = re.sub(r"_+", "_", re.sub(r"[^a-z0-9_]", "_", "_".join(parts).lower())).strip("_")
    return f"{component}.{slug}"


def discovery_configs(site: str, device: str, model: dict | None = None, medge_version: str | None = None,
                      prefix: str = DEFAULT_PREFIX, discovery_prefix: str = DISCOVERY_PREFIX) -> list[tuple[str, dict]]:
    """[(config topic, config payload)] for one device."""
    node = _object_id("medge", site, device)
    status_topic, result_topic = (build_topic(prefix, site, device, kind) for kind in ("status", "result"))
    ha_device = {
        "identifiers": [node],
        "name": f"medge {site}/{device}",
        "manufacturer": "medge",
        "model": f"{model.get('name', '?')} {model.get('version', '?')}" if model else "medge edge device",
        "sw_version": medge_version or __version__,
    }
    availability = {"topic": status_topic, "value_template": CONNECTIVITY,
                    "payload_available": "online", "payload_not_available": "offline"}
    origin = {"name": "medge", "sw_version": __version__}
    entities = [
        ("binary_sensor", "status", {
            "name": "Status", "device_class": "connectivity", "state_topic": status_topic,
            "value_template": CONNECTIVITY, "payload_on": "online", "payload_off": "offline",
            "json_attributes_topic": status_topic,
            "json_attributes_template": "{{ {'reason': value_json.get('reason'), 'model': value_json.get('model'), "
                                        "'last_will': value_json.get('last_will', false)} | tojson }}",
        }),
        ("sensor", "last_class", {
            "name": "Last class", "icon": "mdi:label", "state_topic": result_topic,
            "value_template": "{{ value_json.get('class', 'not applicable') if value_json.get('status') == "
                              "'classified' else 'not applicable' }}",
            "json_attributes_topic": result_topic,
            "json_attributes_template": "{{ {'positive': value_json.get('positive', false), "
                                        "'decision': value_json.get('decision'), "
                                        "'reason': value_json.get('reason'), 'ts': value_json.get('ts'), "
                                        "'disclaimer': value_json.get('disclaimer')} | tojson }}",
            "availability": [availability],
        }),
        ("sensor", "last_score", {
            "name": "Last score", "icon": "mdi:gauge", "state_topic": result_topic,
            "value_template": "{{ value_json.get('score') | round(3) if value_json.get('score') is number "
                              "else none }}",
            "availability": [availability],
        }),
    ]
    configs = []
    for component, key, config in entities:
        config.update(unique_id=_object_id(node, key), default_entity_id=_entity_id(component, node, key),
                      device=ha_device, origin=origin)
        configs.append((f"{discovery_prefix}/{component}/{node}/{key}/config", config))
    return configs


class HomeAssistantDiscovery:
    """Publishes the configs of each device once, and again when its model changes."""

    def __init__(self, publish: Callable[[str, dict], None], prefix: str = DEFAULT_PREFIX,
                 discovery_prefix: str = DISCOVERY_PREFIX):
        self.publish = publish
        self.prefix = prefix
        self.discovery_prefix = discovery_prefix
        self._published: dict[str, tuple] = {}

    def observe(self, device_state) -> None:
        """Call with the DeviceState of every device a message arrived from."""
        signature = (device_state.model_label, device_state.medge_version)
        if self._published.get(device_state.key) == signature:
            return
        self._published[device_state.key] = signature
        for topic, config in discovery_configs(device_state.site, device_state.device, device_state.model,
                                               device_state.medge_version, self.prefix, self.discovery_prefix):
            self.publish(topic, config)

    def forget(self) -> None:
        """After a reconnect: publish again (the broker may have lost retained configs)."""
        self._published.clear()

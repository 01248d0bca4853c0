"""The MQTT contract's one home: which message kinds exist, their topics, QoS, retention and
schema ids. The device, the dashboard, the monitor, Home Assistant discovery and the demo all
build and parse topics here, so a new message kind is one `MessageKind` row below plus its
`edge/schemas/<name>.schema.json` (whose `schema` const is the payload's version id).

Topics are `{prefix}/{site}/{device}/{kind}`; `{prefix}/{site}/{device}/commands/...` is
reserved for messages *to* a device (the site ACL grants it) and is never a device event.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..schemas import load_schema

DEFAULT_PREFIX = "medge"
COMMANDS = "commands"
# The reserved device level of operator records about a whole site: {prefix}/{site}/_fleet/target.
# No device can take this name (device names start with a letter or digit: make-credentials.sh).
FLEET_DEVICE = "_fleet"

# How a monitor folds a kind into what it shows (dashboard/state.py, dashboard/store.py):
RESULT = "result"  # a feed row per message; alerts on positives
STATUS = "status"  # the device's state (retained; the last will)
LATEST = "latest"  # only the latest message per device matters (history keeps one)
EVENT = "event"  # an entry in the device's event list (errors, warnings)
ROLES = (RESULT, STATUS, LATEST, EVENT)


@dataclass(frozen=True)
class MessageKind:
    name: str  # the last topic level and the schema file's name
    qos: int
    retain: bool
    role: str  # one of ROLES
    has_id: bool  # the payload's `id` stays the same across re-deliveries: drop duplicates by it
    description: str

    @property
    def schema(self) -> dict:
        return load_schema(self.name)

    @property
    def schema_id(self) -> str:
        """e.g. "medge.result/1", read from the schema file so the id has one home."""
        return self.schema["properties"]["schema"]["const"]


KINDS: dict[str, MessageKind] = {kind.name: kind for kind in (
    MessageKind("result", qos=1, retain=False, role=RESULT, has_id=True,
                description="one classification (or not_applicable)"),
    MessageKind("status", qos=1, retain=True, role=STATUS, has_id=False,
                description="online / degraded / offline (last will, clean shutdown)"),
    MessageKind("heartbeat", qos=0, retain=False, role=LATEST, has_id=False,
                description="every heartbeat interval: counters, latency, stage and source health"),
    MessageKind("error", qos=1, retain=False, role=EVENT, has_id=True,
                description="rejected input, source down/up, outbox full"),
    MessageKind("fleet", qos=1, retain=True, role=LATEST, has_id=False,
                description="model rollout state: active/candidate/previous model, shadow agreement (edge/fleet)"),
    MessageKind("shadow", qos=0, retain=False, role=LATEST, has_id=False,
                description="a shadow run's candidate answer beside the active model's; never a clinical result"),
    # Published by the fleet operator (medge fleet), not a device: on {prefix}/{site}/_fleet/target.
    MessageKind("target", qos=1, retain=True, role=LATEST, has_id=False,
                description="the site's target model, signed by the fleet operator (medge fleet deploy/rollback)"),
)}


def kind(name: str) -> MessageKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown message kind {name!r} (known: {', '.join(KINDS)})") from None


def topic(prefix: str, site: str, device: str, kind_name: str) -> str:
    """`topic("medge", "icu", "xr-1", "result")` -> "medge/icu/xr-1/result"."""
    kind(kind_name)
    return f"{prefix}/{site}/{device}/{kind_name}"


def subscription(prefix: str = DEFAULT_PREFIX, site: str = "+", device: str = "+") -> str:
    """The filter for everything under the prefix (one site / device when given)."""
    if site == "+" and device == "+":
        return f"{prefix}/#"
    return f"{prefix}/{site}/{device}/#"


@dataclass(frozen=True)
class ParsedTopic:
    site: str | None  # None: the topic is not {prefix}/SITE/DEVICE/KIND
    device: str | None
    kind: str | None  # a name in KINDS, or None for an unknown last level
    command: bool = False  # {prefix}/{site}/{device}/commands/...: a message to a device


def parse_topic(topic_name: str, prefix: str = DEFAULT_PREFIX) -> ParsedTopic:
    """Split a topic under `prefix`; unknown shapes keep site/device None, unknown kinds kind None."""
    parts = topic_name.split("/")
    prefix_parts = prefix.split("/")
    if parts[:len(prefix_parts)] != prefix_parts:
        return ParsedTopic(None, None, None)
    rest = parts[len(prefix_parts):]
    if len(rest) >= 4 and rest[2] == COMMANDS:
        return ParsedTopic(rest[0], rest[1], None, command=True)
    if len(rest) != 3:
        return ParsedTopic(None, None, None)
    site, device, last = rest
    return ParsedTopic(site, device, last if last in KINDS else None)


def expected_shape(prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}/SITE/DEVICE/{'|'.join(KINDS)}"

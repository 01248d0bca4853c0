"""One MQTT message -> one checked `Event`.

Every message under the prefix becomes an event: a valid payload keeps its kind; anything
else (not JSON, wrong topic shape, unknown schema version, schema violation) becomes an
`invalid` event that the views list as an error entry, so bad input is seen, never dropped.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field

from medge.edge.schemas import load_schema

KINDS = ("result", "status", "heartbeat", "error")
INVALID = "invalid"
COMMANDS = "commands"
# The payload versions this dashboard understands; a device sending a newer version shows up
# as an error entry instead of being half-understood.
SCHEMA_IDS = {kind: f"medge.{kind}/1" for kind in KINDS}


@dataclass
class Event:
    kind: str  # one of KINDS, or INVALID
    topic: str
    site: str
    device: str
    id: str  # the payload's message id where it has one, else a digest of topic + bytes
    received: float  # server time (epoch seconds): device clocks may be wrong
    payload: dict | None = None
    problem: str | None = None  # why an INVALID event is invalid
    raw: str | None = None  # a short excerpt of an invalid payload, for the error entry
    retained: bool = False
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Event:
        return cls(**data)


def _validator(kind: str):
    from jsonschema import Draft202012Validator  # lazily: only needed once a message arrives

    return Draft202012Validator(load_schema(kind))


_VALIDATORS: dict = {}


def _schema_problem(kind: str, payload: dict) -> str | None:
    validator = _VALIDATORS.get(kind)
    if validator is None:
        validator = _VALIDATORS[kind] = _validator(kind)
    error = next(iter(sorted(validator.iter_errors(payload), key=lambda e: list(e.path))), None)
    if error is None:
        return None
    where = "/".join(str(part) for part in error.path) or "payload"
    return f"{kind} payload does not match {SCHEMA_IDS[kind]}: {where}: {error.message}"[:300]


def digest(*parts: bytes | str) -> str:
    sha = hashlib.sha256()
    for part in parts:
        sha.update(part.encode() if isinstance(part, str) else part)
        sha.update(b"\0")
    return sha.hexdigest()[:32]


def parse_message(topic: str, payload: bytes, prefix: str = "medge", retained: bool = False,
                  received: float | None = None) -> Event | None:
    """Check `payload` on `topic` against the topic tree and the JSON Schemas. None for a
    message *to* a device (`{prefix}/{site}/{device}/commands/...`, reserved by the site
    broker's ACL): not a device event."""
    received = time.time() if received is None else received
    parts = topic.split("/")
    prefix_parts = prefix.split("/")
    rest = parts[len(prefix_parts):] if parts[:len(prefix_parts)] == prefix_parts else None
    if rest and len(rest) >= 4 and rest[2] == COMMANDS:
        return None
    site, device, kind = (rest if rest and len(rest) == 3 else ["?", "?", None])
    fallback_id = digest(topic, payload)

    def invalid(problem: str) -> Event:
        excerpt = payload[:200].decode("utf-8", errors="replace")
        return Event(INVALID, topic, site, device, fallback_id, received, problem=problem, raw=excerpt,
                     retained=retained)

    if kind not in KINDS:
        return invalid(f"unexpected topic {topic!r}: expected {prefix}/SITE/DEVICE/{'|'.join(KINDS)}")
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return invalid(f"malformed {kind} payload: not JSON")
    if not isinstance(data, dict):
        return invalid(f"malformed {kind} payload: a JSON object was expected")
    schema_id = data.get("schema")
    if schema_id != SCHEMA_IDS[kind]:
        return invalid(f"unknown schema version {schema_id!r} on {kind} topic: this dashboard reads "
                       f"{SCHEMA_IDS[kind]}")
    problem = _schema_problem(kind, data)
    if problem:
        return invalid(problem)
    message_id = data.get("id") if kind in ("result", "error") else fallback_id
    return Event(kind, topic, site, device, message_id, received, payload=data, retained=retained)

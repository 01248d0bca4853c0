"""One MQTT message -> one checked `Event`.

Every message under the prefix becomes an event: a valid payload keeps its kind; anything
else (too large, not JSON, NaN/Infinity, wrong topic shape, unknown schema version, schema
violation) becomes an `invalid` event that the views list as an error entry, so bad input is
seen, never dropped. The topic tree, the kinds and the schema ids come from
medge.edge.comms.topics, the strict JSON parser and the schema check from the device's own
contract code, so the dashboard judges a payload exactly as the contract says.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field

from medge.edge.comms.topics import DEFAULT_PREFIX, KINDS, expected_shape, parse_topic
from medge.edge.payloads import decode
from medge.edge.schemas import payload_problem

INVALID = "invalid"
# Real payloads are around 1 kB; a cap keeps one publisher from filling memory, the history
# and every browser's download (an outside review sent twenty 10 MB events).
MAX_MESSAGE_BYTES = 64 * 1024
MAX_NAME = 128  # site / device names longer than this (topic levels can be 64 kB) are cut
EXCERPT_BYTES = 200


@dataclass
class Event:
    kind: str  # a name in KINDS, or INVALID
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


def digest(*parts: bytes | str) -> str:
    sha = hashlib.sha256()
    for part in parts:
        sha.update(part.encode() if isinstance(part, str) else part)
        sha.update(b"\0")
    return sha.hexdigest()[:32]


def _name(value: str | None) -> str:
    if not value:
        return "?"
    return value if len(value) <= MAX_NAME else value[:MAX_NAME] + "…"


def parse_message(topic: str, payload: bytes, prefix: str = DEFAULT_PREFIX, retained: bool = False,
                  received: float | None = None, max_bytes: int = MAX_MESSAGE_BYTES) -> Event | None:
    """Check `payload` on `topic` against the topic tree and the JSON Schemas. None for a
    message *to* a device (`{prefix}/{site}/{device}/commands/...`, reserved by the site
    broker's ACL): not a device event."""
    received = time.time() if received is None else received
    parsed = parse_topic(topic, prefix)
    if parsed.command:
        return None
    site, device, kind = _name(parsed.site), _name(parsed.device), parsed.kind
    fallback_id = digest(topic, payload)

    def invalid(problem: str) -> Event:
        excerpt = payload[:EXCERPT_BYTES].decode("utf-8", errors="replace")
        return Event(INVALID, topic[:300], site, device, fallback_id, received, problem=problem, raw=excerpt,
                     retained=retained)

    if len(payload) > max_bytes:
        return invalid(f"message of {len(payload)} bytes dropped: larger than the {max_bytes}-byte limit")
    if kind is None:
        return invalid(f"unexpected topic {topic[:200]!r}: expected {expected_shape(prefix)}")
    try:
        data = decode(payload)
    except RecursionError:
        return invalid(f"malformed {kind} payload: nested too deeply")
    except (ValueError, UnicodeDecodeError) as error:
        detail = f" ({error})" if "JSON number" in str(error) or "finite float" in str(error) else ""
        return invalid(f"malformed {kind} payload: not JSON{detail}")
    if not isinstance(data, dict):
        return invalid(f"malformed {kind} payload: a JSON object was expected")
    expected = KINDS[kind].schema_id
    schema_id = data.get("schema")
    if schema_id != expected:
        shown = repr(schema_id)[:60] if isinstance(schema_id, str | None) else f"of type {type(schema_id).__name__}"
        return invalid(f"unknown schema version {shown} on {kind} topic: this dashboard reads {expected}")
    problem = payload_problem(kind, data)
    if problem:
        return invalid(problem)
    message_id = data["id"] if KINDS[kind].has_id else fallback_id
    return Event(kind, topic, site, device, message_id, received, payload=data, retained=retained)

"""The fleet wire contract, shared by the operator (`medge fleet`) and the device.

Commands (operator -> device): one JSON message per device on
`{prefix}/{site}/{device}/commands/fleet`, published RETAINED with QoS 1, so a device that was
offline gets the latest one when it reconnects. The device remembers the ids it handled and
ignores replays and expired commands. Shape: edge/schemas/command.schema.json:

    {"schema": "medge.command/1", "id": uuid4 hex, "issued_at": ISO-8601 UTC, "expires_at": ...,
     "site": S, "device": D, "action": "deploy" | "promote" | "rollback", "rollout": ROLLOUT_ID,
     "bundle": {"name", "version", "sha256" (of the tar archive), "size", "url"},   # deploy only
     "shadow": N (0: no shadow run), "min_agreement": 0.95,
     "signature": {"alg": "ed25519", "key_id": ..., "value": base64}}

The signature is Ed25519 over `canonical_bytes(payload)`: the payload without "signature" as
JSON with sorted keys and separators (",", ":"). The bundle itself travels over HTTP(S) from
`bundle.url` as an uncompressed tar archive (edge/fleet/archive.py) checked by its sha256, and
keeps its own bundle signature (medge.sig), which the device checks with its bundle keys.

Reports (device -> operator): kind `fleet` (retained, QoS 1, the device's rollout state) and
kind `shadow` (QoS 0, one per shadow input, never a clinical result); builders below, shapes in
edge/schemas/fleet.schema.json and shadow.schema.json, topics from edge/comms/topics.py.
"""
from __future__ import annotations

import base64
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..errors import MedgeError

COMMAND_SCHEMA = "medge.command/1"
FLEET_SCHEMA = "medge.fleet/1"
SHADOW_SCHEMA = "medge.shadow/1"
COMMAND_TOPIC_LEVEL = "fleet"  # {prefix}/{site}/{device}/commands/fleet
ACTIONS = ("deploy", "promote", "rollback")
STATES = ("downloading", "verifying", "self_test", "shadow", "promoted", "refused", "rolled_back", "idle")
DEFAULT_MIN_AGREEMENT = 0.95
DEFAULT_TTL_S = 24 * 3600.0
MAX_COMMAND_BYTES = 16 * 1024
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class CommandError(MedgeError):
    """A fleet command the device must refuse: malformed, unsigned, badly signed, signed by an
    unknown key, for another device, or expired. The message is one line, safe to publish."""


# --------------------------------------------------------------------------- topics


def command_topic(prefix: str, site: str, device: str) -> str:
    """`command_topic("medge", "icu", "xr-1")` -> "medge/icu/xr-1/commands/fleet"."""
    from ..comms.topics import COMMANDS

    return f"{prefix}/{site}/{device}/{COMMANDS}/{COMMAND_TOPIC_LEVEL}"


# --------------------------------------------------------------------------- time


def utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_utc(text, field: str) -> datetime:
    """An ISO-8601 time with a zone (Z or +hh:mm) -> aware datetime; CommandError otherwise."""
    if not isinstance(text, str):
        raise CommandError(f"command: {field} must be an ISO-8601 UTC time, not {type(text).__name__}")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(f"command: {field} {text[:40]!r} is not an ISO-8601 time") from None
    if moment.tzinfo is None:
        raise CommandError(f"command: {field} {text[:40]!r} has no time zone (use ...Z)")
    return moment.astimezone(UTC)


# --------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class BundleRef:
    """Where a deploy command's bundle archive is and what it must hash to."""

    name: str
    version: str
    sha256: str  # of the tar archive
    size: int  # bytes of the tar archive
    url: str

    def to_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "sha256": self.sha256, "size": self.size, "url": self.url}


@dataclass(frozen=True)
class Command:
    """A verified command: only `verify_command` builds one."""

    id: str
    issued_at: datetime
    expires_at: datetime
    site: str
    device: str
    action: str
    rollout: str
    bundle: BundleRef | None
    shadow: int
    min_agreement: float
    key_id: str  # the trusted operator key that signed it
    payload: dict  # the signed payload as received (kept to persist and re-verify)


def new_command(*, action: str, site: str, device: str, rollout: str, bundle: BundleRef | dict | None = None,
                shadow: int = 0, min_agreement: float = DEFAULT_MIN_AGREEMENT, ttl_s: float = DEFAULT_TTL_S,
                now: datetime | None = None, command_id: str | None = None) -> dict:
    """An unsigned command payload (pass it to `sign_command`)."""
    now = now or datetime.now(UTC)
    payload = {"schema": COMMAND_SCHEMA, "id": command_id or uuid.uuid4().hex, "issued_at": utc_text(now),
               "expires_at": utc_text(now + timedelta(seconds=ttl_s)), "site": site, "device": device,
               "action": action, "rollout": rollout, "shadow": int(shadow), "min_agreement": float(min_agreement)}
    if bundle is not None:
        payload["bundle"] = bundle.to_dict() if isinstance(bundle, BundleRef) else dict(bundle)
    return payload


def canonical_bytes(payload: dict) -> bytes:
    """What the signature covers: the payload without "signature", sorted keys, no spaces."""
    unsigned = {key: value for key, value in payload.items() if key != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def sign_command(payload: dict, private_key) -> dict:
    """A copy of `payload` with its Ed25519 "signature" (private_key: PEM path/bytes or key)."""
    from ..bundle import key_id, load_private_key

    key = load_private_key(private_key)
    signed = {key: value for key, value in payload.items() if key != "signature"}
    signed["signature"] = {"alg": "ed25519", "key_id": key_id(key.public_key()),
                           "value": base64.b64encode(key.sign(canonical_bytes(signed))).decode()}
    return signed


def encode_command(payload: dict) -> bytes:
    """The MQTT message body of a (signed) command."""
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")


def decode_command(raw: bytes | str | dict) -> dict:
    if isinstance(raw, dict):
        return raw
    if len(raw) > MAX_COMMAND_BYTES:
        raise CommandError(f"command: {len(raw)} bytes is larger than the {MAX_COMMAND_BYTES} a command may be")
    from ..payloads import decode

    try:
        payload = decode(raw)
    except (UnicodeDecodeError, ValueError) as error:
        raise CommandError(f"command: not valid JSON ({str(error)[:80]})") from None
    if not isinstance(payload, dict):
        raise CommandError("command: must be a JSON object")
    return payload


def _check_shape(payload: dict) -> None:
    from ..schemas import payload_problem

    if payload.get("schema") != COMMAND_SCHEMA:
        raise CommandError(f"command: unsupported schema {str(payload.get('schema'))[:40]!r} "
                           f"(this device reads {COMMAND_SCHEMA})")
    problem = payload_problem("command", payload)
    if problem:
        raise CommandError(f"command: malformed ({problem.split(': ', 1)[-1]})")
    if payload["action"] == "deploy" and "bundle" not in payload:
        raise CommandError("command: a deploy command needs a bundle")


def trusted_operator_keys(trusted_keys) -> dict:
    """Key id -> public key, from PEM paths/bytes/keys (a bad file: a one-line BundleError)."""
    from ..bundle import key_id, load_public_key

    keys = trusted_keys if isinstance(trusted_keys, (list, tuple, set)) else [trusted_keys]
    loaded = [load_public_key(key) for key in keys]
    return {key_id(key): key for key in loaded}


def check_signature(payload: dict, trusted: dict, what: str) -> str:
    """The id of the trusted operator key (`trusted`: key id -> public key) whose Ed25519
    signature `payload` carries, else a one-line `CommandError` naming `what`. Commands and the
    site's target record (fleet/target.py) are signed the same way. The key id in the signature
    only picks which trusted key to try; the Ed25519 check decides."""
    signature = payload.get("signature")
    if not isinstance(signature, dict) or not isinstance(signature.get("key_id"), str):
        raise CommandError(f"{what}: not signed")
    claimed = signature["key_id"]
    if claimed not in trusted:
        raise CommandError(f"{what}: signed by key {claimed[:32]}, which is not a trusted "
                           f"operator key ({', '.join(trusted)})")
    try:
        value = base64.b64decode(str(signature.get("value", "")), validate=True)
    except ValueError:
        raise CommandError(f"{what}: signature is not base64") from None
    from cryptography.exceptions import InvalidSignature

    try:
        trusted[claimed].verify(value, canonical_bytes(payload))
    except (InvalidSignature, TypeError, ValueError):  # ValueError: NaN etc. cannot be canonical JSON
        raise CommandError(f"{what}: bad signature (modified after signing, or not signed "
                           f"by key {claimed})") from None
    return claimed


def verify_command(payload, trusted_keys, site: str, device: str, now: datetime | None = None) -> Command:
    """Check a received command (dict, or the raw message) and return it as a `Command`.

    Refuses, with a one-line `CommandError`: malformed, unknown key, bad signature, another
    site/device, not yet valid or expired.
    """
    payload = decode_command(payload)
    _check_shape(payload)
    trusted = trusted_operator_keys(trusted_keys)
    if not trusted:
        raise CommandError("command: no trusted operator key is configured (fleet.trusted_operator_keys)")
    claimed = check_signature(payload, trusted, f"command {payload['id'][:32]}")
    if payload["site"] != site or payload["device"] != device:
        raise CommandError(f"command {payload['id'][:32]}: addressed to {payload['site']}/{payload['device']}, "
                           f"this device is {site}/{device}")
    issued, expires = parse_utc(payload["issued_at"], "issued_at"), parse_utc(payload["expires_at"], "expires_at")
    now = now or datetime.now(UTC)
    if expires <= now:
        raise CommandError(f"command {payload['id'][:32]}: expired at {payload['expires_at']}")
    if issued > now + timedelta(minutes=5):  # a little clock skew is tolerated, a future command is not
        raise CommandError(f"command {payload['id'][:32]}: issued in the future ({payload['issued_at']}); "
                           "check the clocks")
    bundle = None
    if payload.get("bundle") is not None:
        data = payload["bundle"]
        bundle = BundleRef(name=data["name"], version=data["version"], sha256=data["sha256"].lower(),
                           size=int(data["size"]), url=data["url"])
    return Command(id=payload["id"], issued_at=issued, expires_at=expires, site=payload["site"],
                   device=payload["device"], action=payload["action"], rollout=payload["rollout"], bundle=bundle,
                   shadow=int(payload.get("shadow", 0)),
                   min_agreement=float(payload.get("min_agreement", DEFAULT_MIN_AGREEMENT)), key_id=claimed,
                   payload=payload)


# --------------------------------------------------------------------------- device reports


def model_ref(info: dict | None) -> dict | None:
    """{name, version, sha256} of a model (a result's `model`, or a store entry)."""
    if not info:
        return None
    return {"name": str(info.get("name", "")), "version": str(info.get("version", "")),
            "sha256": str(info.get("sha256", ""))}


def fleet_payload(*, site: str, device: str, state: str, active: dict, rollout: str | None = None,
                  command_id: str | None = None, candidate: dict | None = None, previous: dict | None = None,
                  shadow: dict | None = None, reason: str | None = None) -> dict:
    """A medge.fleet/1 report: the device's rollout state (retained: the latest one counts).
    `shadow`: {"seen", "target", "agreement"} while or after a shadow run."""
    from ..payloads import utc_now

    if state not in STATES:
        raise ValueError(f"unknown fleet state {state!r} (known: {', '.join(STATES)})")
    return {"schema": FLEET_SCHEMA, "site": site, "device": device, "time": utc_now(), "rollout": rollout,
            "command_id": command_id, "state": state, "active": model_ref(active),
            "candidate": model_ref(candidate), "previous": model_ref(previous),
            "shadow": dict(shadow) if shadow is not None else None, "reason": reason}


def shadow_payload(*, site: str, device: str, input_ref: str, rollout: str | None, active: dict,
                   candidate: dict, agree: bool) -> dict:
    """A medge.shadow/1 message: the candidate's answer beside the active model's on one input.
    `active`/`candidate`: {"label", "score"}. Never a clinical result."""
    from ..payloads import utc_now

    return {"schema": SHADOW_SCHEMA, "site": site, "device": device, "time": utc_now(), "input_ref": input_ref,
            "rollout": rollout, "active": {"label": str(active["label"]), "score": round(float(active["score"]), 6)},
            "candidate": {"label": str(candidate["label"]), "score": round(float(candidate["score"]), 6)},
            "agree": bool(agree)}

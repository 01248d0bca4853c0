"""The site's target record: which model every device of a site should run.

Published by the fleet operator, retained, on `{prefix}/{site}/_fleet/target` (kind `target`
under the reserved device level FLEET_DEVICE, edge/comms/topics.py), signed like a command, so
dashboards and `medge fleet status` know what each device *should* run and can flag one that
runs something else. Devices do not act on it: only commands move models. Given the
operator's public key (`medge fleet status --fleet-key`, `medge dashboard --fleet-key`) they
verify its signature; a record that fails is not used to judge any device.
"""
from __future__ import annotations

from datetime import UTC, datetime

from medge.edge.comms.topics import FLEET_DEVICE, topic
from medge.edge.fleet.commands import CommandError, check_signature, sign_command, utc_text

TARGET_SCHEMA = "medge.target/1"
VERIFIED, UNVERIFIED = "verified", "unverified"


def target_topic(prefix: str, site: str) -> str:
    return topic(prefix, site, FLEET_DEVICE, "target")


def new_target(site: str, model: dict, artifacts: list[str], rollout: str | None, private_key) -> dict:
    """A signed medge.target/1 record. `model`: {name, version, sha256 of the archive};
    `artifacts`: the sha256 of each model file (what a device's status/heartbeat `model` names)."""
    payload = {"schema": TARGET_SCHEMA, "site": site, "issued_at": utc_text(datetime.now(UTC)), "rollout": rollout,
               "model": {"name": str(model["name"]), "version": str(model["version"]),
                         "sha256": str(model.get("sha256") or "")},
               "artifacts": [str(sha) for sha in artifacts][:16]}
    return sign_command(payload, private_key)


def target_trust(target: dict | None, trusted_keys: dict, site: str | None = None) -> str | None:
    """VERIFIED, UNVERIFIED (no operator key given: the record is shown, but anyone able to
    publish on the topic could have written it) or "invalid: why" (bad or unknown signature,
    another site's record). `trusted_keys`: commands.trusted_operator_keys(). None: no record."""
    if not target:
        return None
    if not trusted_keys:
        return UNVERIFIED
    try:
        check_signature(target, trusted_keys, "target record")
    except CommandError as error:
        return f"invalid: {error}"
    if site is not None and target.get("site") != site:
        return f"invalid: the record names site {str(target.get('site'))[:64]!r}, published for site {site!r}"
    return VERIFIED


def runs_target(model: dict | None, target: dict | None) -> bool | None:
    """Whether a device's model ({name, version, sha256}: from its status, heartbeat or fleet
    report) is the site's target. None when either is unknown. Name and version must match;
    a sha256, when the device gives one, must be the target archive's or one of its model files'."""
    if not model or not target:
        return None
    wanted = target.get("model") or {}
    if str(model.get("name")) != str(wanted.get("name")) or str(model.get("version")) != str(wanted.get("version")):
        return False
    sha = model.get("sha256")
    if not sha:
        return True
    return sha == wanted.get("sha256") or sha in (target.get("artifacts") or [])

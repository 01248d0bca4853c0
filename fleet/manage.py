"""`medge fleet rollback` and `medge fleet promote`: one signed command per device, followed to
its final state; afterwards the site's target record names what the devices run again."""
from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime

from medge.fleet.deploy import choose_devices, failure_line
from medge.fleet.link import FleetError, SiteLink
from medge.fleet.rollout import Step, run_step
from medge.fleet.target import new_target


def command_devices(link: SiteLink, action: str, devices: tuple[str, ...], key, timeout_s: float,
                    say: Callable[[str], None] = print) -> dict:
    chosen = choose_devices(link, devices, say)
    rollout = f"{action}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(2)}"
    outcomes = run_step(link, Step(action, rollout), chosen, key, timeout_s, say)
    failed = [outcome for outcome in outcomes if not outcome.ok]
    done = [outcome for outcome in outcomes if outcome.ok]
    # What the devices that followed the command run now becomes the site's target, when they agree.
    models = {(m.get("name"), m.get("version"), m.get("sha256")): m
              for m in ((o.report or {}).get("active") for o in done) if m}
    if len(models) == 1 and (not devices or len(done) == len(link.devices)):
        [model] = models.values()
        archive = model.get("archive_sha256") or model.get("sha256") or ""
        link.publish_target(new_target(link.site, {**model, "sha256": archive}, [str(model.get("sha256") or "")],
                                       rollout, key))
        say(f"site {link.site} target: {model.get('name')} {model.get('version')}")
    if failed:
        raise FleetError(failure_line(f"{action}: {len(done)} of {len(outcomes)} device(s) done", failed))
    say(f"{action}: all {len(done)} device(s) done")
    return {"action": action, "devices": [o.device for o in done]}

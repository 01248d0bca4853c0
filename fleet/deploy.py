"""`medge fleet deploy`: a bundle to a site's devices, canary first.

1. The bundle is checked with the device's own loader and packed (edge/fleet/archive.py); the
   archive is served from this machine (fleet/serve.py) unless --url says where it is hosted.
2. Devices: the --device names, or every device of the site with a retained status that is not
   offline (offline ones are listed and skipped: their retained command would wait for them,
   but a served archive would be gone by then).
3. The canary devices (the first --canary N, by name) get the signed deploy command; the rollout
   goes on only when every one reports `promoted`. A refusal, a rollback or a timeout stops it
   there, with the device's reason, before any other device is touched.
4. The site's target record (fleet/target.py) then names the new model (without a canary: once
   a device has promoted it), and the other devices get their commands at once; the command
   exits non-zero if any of them fails.
"""
from __future__ import annotations

import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from medge.edge.fleet.commands import DEFAULT_MIN_AGREEMENT, DEFAULT_TTL_S
from medge.fleet.bundle import PackedBundle, prepare
from medge.fleet.link import FleetError, SiteLink
from medge.fleet.rollout import Outcome, Step, run_step
from medge.fleet.serve import ArchiveServer
from medge.fleet.target import new_target, runs_target


@dataclass
class DeployPlan:
    bundle: Path
    key: object  # the operator's Ed25519 private key (PEM path)
    devices: tuple[str, ...] = ()  # empty: discover the site's devices
    canary: int = 1
    shadow: int = 0
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    url: str | None = None  # where the archive is hosted; None: serve it from here
    serve: str | None = None  # HOST:PORT to serve on (default: all interfaces, a free port)
    timeout_s: float = 300.0  # per phase (canary, rest)
    ttl_s: float = DEFAULT_TTL_S


def rollout_id(bundle: PackedBundle) -> str:
    return f"{bundle.name}-{bundle.version}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(2)}"


def choose_devices(link: SiteLink, wanted: tuple[str, ...], say: Callable[[str], None]) -> list[str]:
    if wanted:
        unknown = [name for name in wanted if name not in link.devices]
        if unknown:
            say(f"note: no retained status from {', '.join(unknown)} yet: their command waits for them on the broker")
        return list(dict.fromkeys(wanted))
    views = link.snapshot()
    online = sorted(name for name, view in views.items() if view.online)
    offline = sorted(name for name, view in views.items() if not view.online)
    if offline:
        say(f"skipping {len(offline)} offline device(s): {', '.join(offline)} (name them with --device to include them)")
    if not online:
        raise FleetError(f"no online device found on site {link.site} (no retained status under "
                         f"{link.prefix}/{link.site}/+/status): is the site name right? name devices with --device")
    return online


def parse_host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise FleetError(f"--serve {text!r}: expected HOST:PORT, e.g. 0.0.0.0:8765 (port 0: a free one)")
    return host.strip("[]"), int(port)


def hosted_copy_problem(url: str, bundle: PackedBundle, timeout_s: float = 5.0) -> str | None:
    """Why the archive at `url` is not the one packed here, as far as a HEAD request can tell
    (its size), or None. Only a warning: the devices' sha256 check is what decides."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s) as response:
            length = response.headers.get("Content-Length")
    except (urllib.error.URLError, OSError, ValueError) as error:
        return f"cannot check {url} from here ({getattr(error, 'reason', error)}); the devices may not reach it either"
    if length is not None and length.isdigit() and int(length) != bundle.size:
        return (f"{url} serves {length} bytes, the archive packed from the bundle has {bundle.size}: every device "
                f"will refuse it (upload the output of `medge fleet pack`)")
    return None


def failure_line(what: str, failed: list[Outcome]) -> str:
    return f"{what}: " + "; ".join(outcome.line() for outcome in failed)


def deploy(link: SiteLink, plan: DeployPlan, say: Callable[[str], None] = print) -> dict:
    """Run the rollout; returns a summary dict. Raises FleetError (one line) when it fails."""
    with tempfile.TemporaryDirectory(prefix="medge-fleet-") as workdir:
        bundle = prepare(plan.bundle, Path(workdir))
        say(f"bundle {bundle.name} {bundle.version}: archive {bundle.size} bytes, sha256 {bundle.sha256[:16]}…"
            + ("" if bundle.signed else " (not signed: devices that require bundle signatures will refuse it)"))
        devices = choose_devices(link, plan.devices, say)
        wanted = {"model": bundle.model, "artifacts": bundle.artifacts}
        views = link.snapshot()
        already = [name for name in devices if name in views and runs_target(views[name].model, wanted)]
        if already:
            say(f"already running {bundle.name} {bundle.version}: {', '.join(already)}")
        devices = [name for name in devices if name not in already]
        if not devices:
            say(f"nothing to do: every chosen device already runs {bundle.name} {bundle.version}")
            return {"rollout": None, "bundle": bundle.model, "promoted": [], "seconds": {}}
        server = None
        try:
            if plan.url:
                url = plan.url
                problem = hosted_copy_problem(url, bundle)
                if problem:
                    say(f"warning: {problem}")
            else:
                host, port = parse_host_port(plan.serve) if plan.serve else ("0.0.0.0", 0)
                try:
                    server = ArchiveServer(bundle.archive, host, port).start()
                except OSError as error:  # a busy port or an address not on this machine: one line
                    raise FleetError(f"cannot serve the archive on {host}:{port} "
                                     f"({error.strerror or error}); choose another --serve HOST:PORT") from None
                url = server.url(link.local_address() if host in ("0.0.0.0", "::", "") else host)
                say(f"serving the archive at {url} while the rollout runs")
            return _roll_out(link, plan, bundle, url, devices, say)
        finally:
            if server is not None:
                server.stop()


def _roll_out(link: SiteLink, plan: DeployPlan, bundle: PackedBundle, url: str, devices: list[str],
              say: Callable[[str], None]) -> dict:
    rollout = rollout_id(bundle)
    step = Step("deploy", rollout, {"bundle": bundle.ref(url), "shadow": plan.shadow,
                                    "min_agreement": plan.min_agreement, "ttl_s": plan.ttl_s})
    canary = devices[:plan.canary] if plan.canary and plan.canary < len(devices) else []
    rest = devices[len(canary):]
    say(f"rollout {rollout}: {len(devices)} device(s)" + (f", canary {', '.join(canary)}" if canary else ""))
    outcomes: list[Outcome] = []
    if canary:
        outcomes += run_step(link, step, canary, plan.key, plan.timeout_s, say)
        failed = [outcome for outcome in outcomes if not outcome.ok]
        if failed:
            raise FleetError(failure_line(f"rollout {rollout} stopped at the canary, no other device was touched",
                                          failed))
        say(f"canary promoted: rolling out to the other {len(rest)} device(s)")
    target = new_target(link.site, bundle.model, list(bundle.artifacts), rollout, plan.key)
    if canary:  # proven on the canary: the site's target from now on, while the others follow
        link.publish_target(target)
    if rest:
        outcomes += run_step(link, step, rest, plan.key, plan.timeout_s, say)
    if not canary and any(outcome.ok for outcome in outcomes):
        link.publish_target(target)
    failed = [outcome for outcome in outcomes if not outcome.ok]
    promoted = [outcome.device for outcome in outcomes if outcome.ok]
    if failed:
        raise FleetError(failure_line(f"rollout {rollout}: {len(promoted)} of {len(outcomes)} device(s) promoted",
                                      failed))
    say(f"rollout {rollout}: all {len(outcomes)} device(s) run {bundle.name} {bundle.version}")
    return {"rollout": rollout, "bundle": bundle.model, "promoted": promoted,
            "seconds": {o.device: round(o.seconds, 3) for o in outcomes}}

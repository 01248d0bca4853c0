"""Sending one fleet command to a group of devices and following their reports to the end.

Each device answers a command on its retained `fleet` topic, naming the command's id; a device
is done when it reports the action's final state (deploy, promote: `promoted`; rollback:
`rolled_back`) and has failed when it reports `refused`/`rolled_back` instead, or says nothing
final before the timeout. Progress is printed as each device moves from state to state.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from medge.edge.fleet.commands import new_command, sign_command
from medge.fleet.link import SiteLink

SUCCESS = {"deploy": "promoted", "promote": "promoted", "rollback": "rolled_back"}
FAILURE = {"deploy": ("refused", "rolled_back"), "promote": ("refused", "rolled_back"), "rollback": ("refused",)}


@dataclass
class Outcome:
    device: str
    ok: bool
    state: str | None  # the last state the device reported for this command (None: no answer)
    reason: str | None
    seconds: float
    report: dict | None = None

    def line(self) -> str:
        if self.ok:
            return f"{self.device}: {self.state} after {self.seconds:.1f} s"
        if self.state is None:
            return f"{self.device}: no answer to the command within {self.seconds:.0f} s (offline?)"
        if self.state in ("refused", "rolled_back"):
            return f"{self.device}: {self.state}: {self.reason or 'no reason given'}"
        return f"{self.device}: timed out after {self.seconds:.0f} s in state {self.state}"


@dataclass
class Step:
    """One command to several devices: action, shared rollout id and fields."""

    action: str
    rollout: str
    fields: dict = field(default_factory=dict)  # bundle, shadow, min_agreement, ttl_s

    def commands(self, site: str, devices: list[str], key) -> dict[str, dict]:
        return {device: sign_command(new_command(action=self.action, site=site, device=device, rollout=self.rollout,
                                                 **self.fields), key)
                for device in devices}


def _progress(report: dict) -> str:
    state = report.get("state")
    shadow = report.get("shadow") or {}
    if state == "shadow" and shadow:
        agreement = shadow.get("agreement")
        return (f"shadow {shadow.get('seen', 0)}/{shadow.get('target', '?')}"
                + (f", agreement {agreement:.3f}" if isinstance(agreement, int | float) else ""))
    return str(state)


def run_step(link: SiteLink, step: Step, devices: list[str], key, timeout_s: float,
             say: Callable[[str], None]) -> list[Outcome]:
    """Publish `step` to `devices` (signed, retained, QoS 1) and wait for each to finish."""
    commands = step.commands(link.site, devices, key)
    started = time.monotonic()
    for command in commands.values():
        link.send_command(command)
    say(f"{step.action} sent to {len(devices)} device(s): {', '.join(devices)}")
    ids = {device: command["id"] for device, command in commands.items()}
    shown: dict[str, str] = {}
    outcomes: dict[str, Outcome] = {}
    success, failure = SUCCESS[step.action], FAILURE[step.action]

    def report_of(device: str) -> dict | None:
        view = link.devices.get(device)
        report = view.fleet if view else None
        return report if report and report.get("command_id") == ids[device] else None

    def check() -> bool:
        for device in devices:
            if device in outcomes:
                continue
            report = report_of(device)
            if report is None:
                continue
            progress = _progress(report)
            if shown.get(device) != progress:
                shown[device] = progress
                say(f"  {device}: {progress} ({time.monotonic() - started:.1f} s)")
            state = report.get("state")
            if state == success or state in failure:
                outcomes[device] = Outcome(device, state == success, state, report.get("reason"),
                                           time.monotonic() - started, report)
        return len(outcomes) == len(devices)

    link.wait(check, timeout_s)
    for device in list(outcomes):
        # Answered: the device remembers the command; a device that has not answered (offline)
        # keeps finding it on the broker when it comes back.
        link.clear_command(device)
    for device in devices:
        if device not in outcomes:
            report = report_of(device)
            outcomes[device] = Outcome(device, False, report.get("state") if report else None,
                                       report.get("reason") if report else None, time.monotonic() - started, report)
    return [outcomes[device] for device in devices]

"""The fleet view of the dashboard and `medge monitor`: per device the active and candidate
model, the rollout state and shadow agreement from its retained `fleet` report, and whether it
runs its site's target model (the operator's retained record on `{prefix}/{site}/_fleet/target`,
fleet/target.py). Two alerts: a failed rollout on a device (refused, rolled back), and a device
that runs a model other than its site's target once the rollout has had `grace_s` to reach it.

Like the other alerts, these derive from events only (times are the events' arrival times), so
replaying the stored history brings back the same alerts with the same ids.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from medge.dashboard.alerts import _alert
from medge.fleet.target import runs_target, target_trust  # noqa: F401 (state.py's)

IN_PROGRESS = ("downloading", "verifying", "self_test", "shadow")
FAILED = ("refused", "rolled_back")


def active_model(dev) -> dict | None:
    """What the device runs now: its fleet report's `active` (the newest word after a switch),
    else its status's model."""
    active = (dev.latest.get("fleet") or {}).get("active")
    return active if isinstance(active, dict) and active else dev.model


def fleet_view(dev, target: dict | None) -> dict | None:
    """The fleet part of a device row; None for a device without a fleet report and no target."""
    report = dev.latest.get("fleet")
    if not report and not target:
        return None
    report = report or {}
    model = active_model(dev)
    state = report.get("state") or "idle"
    return {"active": model, "candidate": report.get("candidate"), "previous": report.get("previous"),
            "state": state, "rollout": report.get("rollout"), "shadow": report.get("shadow"),
            "reason": report.get("reason"), "failed": state in FAILED, "in_progress": state in IN_PROGRESS,
            "on_target": runs_target(model, target), "target": (target or {}).get("model")}


def model_text(model: dict | None) -> str:
    return f"{model.get('name', '?')} {model.get('version', '?')}" if model else "?"


@dataclass
class FleetAlerts:
    grace_s: float = 120.0  # how long after a new target a device may still run the old model
    _off_target: dict = field(default_factory=dict)  # device key -> target rollout/model it was alerted about
    _failed: set = field(default_factory=set)  # (device key, command id) already alerted

    def check(self, event, dev, target: dict | None, target_at: float | None) -> list[dict]:
        if dev is None or event.kind not in ("fleet", "heartbeat", "status", "result"):
            return []
        alerts = []
        report = dev.latest.get("fleet") or {}
        if event.kind == "fleet" and report.get("state") in FAILED:
            key = (dev.key, report.get("command_id"), report.get("state"))
            if key not in self._failed:
                self._failed.add(key)
                verb = "refused" if report["state"] == "refused" else "rolled back"
                alerts.append(_alert(event, "rollout_failed", "critical",
                                     f"Rollout failed on {dev.key}: {verb} {model_text(report.get('candidate'))} "
                                     f"({report.get('reason') or 'no reason given'}); it keeps "
                                     f"{model_text(report.get('active'))}"))
        on_target = runs_target(active_model(dev), target)
        if on_target is False:
            this_rollout = report.get("rollout") == target.get("rollout")
            in_progress = report.get("state") in IN_PROGRESS and this_rollout
            # The target's own rollout failed here: off target at once. Otherwise (e.g. a rollback
            # under way, whose new target follows) only after the grace time.
            settled = (report.get("state") in FAILED and this_rollout) or (
                target_at is not None and event.received - target_at >= self.grace_s)
            wanted = (target.get("rollout"), model_text(target.get("model")))
            if settled and not in_progress and self._off_target.get(dev.key) != wanted:
                self._off_target[dev.key] = wanted
                alerts.append(_alert(event, "off_target", "warning",
                                     f"{dev.key} runs {model_text(active_model(dev))}, not its site's target "
                                     f"{model_text(target.get('model'))}"))
        elif on_target:
            self._off_target.pop(dev.key, None)
        return alerts

"""Alert rules: which events deserve a banner on the page (and a browser notification).

A positive finding, a device going offline, and an error burst (many errors from one device
in a short window) raise alerts. A `refer` result (edge/decision.py: the model is not sure)
is never a positive alert; it raises an `info` one so that someone reads the image. A device
whose heartbeat reports input drift (edge/drift.py: PSI past its threshold over enough inputs)
raises a `drift` warning once, and again only after it has recovered. Alerts are derived from events only, so replaying the stored
history after a restart brings back the same alerts with the same ids.
"""
from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass


@dataclass
class AlertRules:
    error_burst_count: int = 5
    error_burst_window_s: float = 60.0

    def __post_init__(self):
        self._errors: dict[tuple, deque] = defaultdict(deque)
        self._last_burst: dict[tuple, float] = {}
        self._drifting: set[tuple] = set()

    def check(self, event, previous_state: str | None) -> list[dict]:
        """Alerts raised by `event`; `previous_state` is the device's state before it."""
        key = (event.site, event.device)
        payload = event.payload or {}
        if event.kind == "result" and payload.get("decision") == "refer":
            return [_alert(event, "refer", "info", refer_message(event, payload))]
        if event.kind == "heartbeat":
            return self._drift(event, key, payload.get("drift"))
        if event.kind == "result" and payload.get("positive"):
            score = payload.get("score")
            detail = ""
            if score is not None:
                detail = f" (score {score:.2f}"
                detail += f" >= threshold {payload['threshold']:.2f})" if "threshold" in payload else ")"
            return [_alert(event, "positive", "warning",
                           f"Positive finding: {payload.get('class', '?')}{detail} on {event.site}/{event.device}")]
        if event.kind == "status" and payload.get("state") == "offline" and previous_state != "offline":
            reason = payload.get("reason") or "no reason given"
            return [_alert(event, "offline", "critical", f"Device {event.site}/{event.device} went offline ({reason})")]
        if event.kind == "invalid" or (event.kind == "error" and payload.get("level") == "error"):
            return self._burst(event, key)
        return []

    def _drift(self, event, key, drift) -> list[dict]:
        if not isinstance(drift, dict) or not drift.get("alert"):
            self._drifting.discard(key)
            return []
        if key in self._drifting:
            return []
        self._drifting.add(key)
        return [_alert(event, "drift", "warning", drift_message(event, drift))]

    def _burst(self, event, key) -> list[dict]:
        times = self._errors[key]
        times.append(event.received)
        while times and times[0] < event.received - self.error_burst_window_s:
            times.popleft()
        last = self._last_burst.get(key)
        recently_alerted = last is not None and event.received - last < self.error_burst_window_s
        if len(times) < self.error_burst_count or recently_alerted:
            return []
        self._last_burst[key] = event.received
        return [_alert(event, "error_burst", "critical",
                       f"Error burst: {len(times)} errors in {self.error_burst_window_s:.0f} s from "
                       f"{event.site}/{event.device}")]


def refer_message(event, payload: dict) -> str:
    score = payload.get("score")
    detail = f" (score {score:.2f} inside the refer band)" if isinstance(score, int | float) else ""
    return (f"Refer: uncertain result{detail} on {event.site}/{event.device}: not decided by the model, "
            "a clinician should read the image")


def drift_message(event, drift: dict) -> str:
    def share(value):
        return "-" if not isinstance(value, int | float) else f"{value:.0%}"

    psi = drift.get("psi")
    return (f"Input drift on {event.site}/{event.device}: PSI {psi:.2f} > {drift.get('psi_alert', 0):.2f} over the "
            f"last {drift.get('window_n')} inputs (out of distribution {share(drift.get('ood_rate'))}, refer "
            f"{share(drift.get('refer_rate'))}): recent images differ from the validation data"
            if isinstance(psi, int | float) else f"Input drift on {event.site}/{event.device}")


def _alert(event, kind: str, level: str, message: str) -> dict:
    return {"id": f"{kind}-{event.id}", "kind": kind, "level": level, "site": event.site,
            "device": event.device, "received": event.received,
            "ts": (event.payload or {}).get("ts"), "message": message}

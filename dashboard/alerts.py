"""Alert rules: which events deserve a banner on the page (and a browser notification).

A positive finding, a device going offline, and an error burst (many errors from one device
in a short window) raise alerts. Alerts are derived from events only, so replaying the stored
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

    def check(self, event, previous_state: str | None) -> list[dict]:
        """Alerts raised by `event`; `previous_state` is the device's state before it."""
        key = (event.site, event.device)
        payload = event.payload or {}
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


def _alert(event, kind: str, level: str, message: str) -> dict:
    return {"id": f"{kind}-{event.id}", "kind": kind, "level": level, "site": event.site,
            "device": event.device, "received": event.received,
            "ts": (event.payload or {}).get("ts"), "message": message}

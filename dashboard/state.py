"""What the views show, folded from events: devices, the result feed, errors, alerts, charts.

`DashboardState.apply(event)` is the only way in; it drops duplicates (QoS 1 re-deliveries
keep their message id) and returns the rows that changed so a live view can push them.
How a kind is folded follows its role in medge.edge.comms.topics (result feed, device status,
latest-per-device, event list), so a new message kind needs no code here. Status follows
arrival order, never the payloads' time stamps (the last will is composed before the
`online` that it outlives).

Everything kept is bounded: the feeds are capped, text from a device is clipped, and so is
the number of devices, so that what a browser downloads stays small whatever is published.
Thread-safe: the MQTT thread applies events while HTTP threads read snapshots.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field

from medge.dashboard.alerts import AlertRules
from medge.dashboard.events import INVALID, Event
from medge.dashboard.fleet import FleetAlerts, fleet_view, target_trust
from medge.edge.comms.topics import EVENT, FLEET_DEVICE, KINDS, LATEST, RESULT, STATUS

SCORE_BINS = 10
CHART_MINUTES = 30
RECENT = 200  # results kept per device for throughput and latency
MAX_TEXT = 300  # characters of any one text a device sent that the page receives
MAX_ITEMS = 20  # entries of any one list or object a device sent that the page receives
PACS_COUNTERS = ("pacs_delivered", "pacs_queued", "pacs_refused", "pacs_unwritable", "pacs_writing", "pacs_retries")


def bounded(value, depth: int = 4):
    """`value` with long texts clipped and big lists/objects cut, so a device cannot make the
    page's download large with one valid but bloated payload."""
    if isinstance(value, str):
        return value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + "…"
    if isinstance(value, dict):
        if depth <= 0:
            return "…"
        return {bounded(str(key)): bounded(inner, depth - 1) for key, inner in list(value.items())[:MAX_ITEMS]}
    if isinstance(value, list):
        if depth <= 0:
            return ["…"]
        return [bounded(inner, depth - 1) for inner in value[:MAX_ITEMS]]
    return value


@dataclass
class DeviceState:
    site: str
    device: str
    state: str = "unknown"  # online | offline | unknown (no status seen yet)
    state_since: float | None = None
    reason: str | None = None
    model: dict | None = None
    sources: list = field(default_factory=list)
    medge_version: str | None = None
    latest: dict = field(default_factory=dict)  # kind -> its latest (bounded) payload, for LATEST kinds
    latest_at: dict = field(default_factory=dict)  # kind -> server time it arrived
    results: int = 0
    positives: int = 0
    refers: int = 0  # results whose decision is "refer" (edge/decision.py): uncertain, not a finding
    errors: int = 0
    last_result: dict | None = None
    threshold: float | None = None
    score_bins: list = field(default_factory=lambda: [0] * SCORE_BINS)
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT))  # (received, total_ms)
    pacs_event: str | None = None  # kind of the last error event with source "pacs" (edge/pacs)

    @property
    def key(self) -> str:
        return f"{self.site}/{self.device}"

    @property
    def heartbeat(self) -> dict | None:
        return self.latest.get("heartbeat")

    @property
    def last_heartbeat(self) -> float | None:
        """Server time the last heartbeat arrived."""
        return self.latest_at.get("heartbeat")

    @property
    def model_label(self) -> str | None:
        return f"{self.model.get('name', '?')} {self.model.get('version', '?')}" if self.model else None

    def latency(self) -> dict:
        """p50/p95 from the device's own heartbeat; from recent results until one arrives."""
        reported = (self.heartbeat or {}).get("latency_ms") or {}
        if reported.get("p50") is not None:
            return {"p50": reported.get("p50"), "p95": reported.get("p95"), "from": "heartbeat"}
        totals = sorted(total for _, total in self.recent if total is not None)
        if not totals:
            return {"p50": None, "p95": None, "from": None}
        pick = lambda q: totals[min(len(totals) - 1, int(round(q * (len(totals) - 1))))]  # noqa: E731
        return {"p50": pick(0.5), "p95": pick(0.95), "from": "results"}

    def pacs(self) -> dict | None:
        """PACS delivery from the heartbeat's pacs_* counters (docs/pacs.md); None without them.
        `warning`: results are piling up while the PACS is down (its last event was pacs_down),
        or some were refused for good or could not be written."""
        counters = (self.heartbeat or {}).get("counters") or {}
        if not any(name in counters for name in PACS_COUNTERS):
            return None
        pacs = {name.removeprefix("pacs_"): counters.get(name, 0) for name in PACS_COUNTERS}
        pacs["last_event"] = self.pacs_event
        pacs["warning"] = bool((pacs["queued"] > 0 and self.pacs_event == "pacs_down")
                               or pacs["refused"] > 0 or pacs["unwritable"] > 0)
        return pacs

    def drift(self) -> dict | None:
        """The heartbeat's `drift` figures (edge/drift.py); None from a device that sends none."""
        drift = (self.heartbeat or {}).get("drift")
        return drift if isinstance(drift, dict) else None

    def to_dict(self, now: float, stale_after_s: float) -> dict:
        last_minute = sum(1 for received, _ in self.recent if received >= now - 60)
        stale = (self.state == "online" and self.last_heartbeat is not None
                 and now - self.last_heartbeat > stale_after_s)
        heartbeat = self.heartbeat or {}
        return {
            "key": self.key, "site": self.site, "device": self.device, "state": self.state,
            "stale": stale, "state_since": self.state_since, "reason": self.reason,
            "model": self.model, "model_label": self.model_label, "sources": self.sources,
            "medge_version": self.medge_version, "last_heartbeat": self.last_heartbeat,
            "heartbeat_age_s": None if self.last_heartbeat is None else max(0.0, now - self.last_heartbeat),
            "uptime_s": heartbeat.get("uptime_s"), "counters": heartbeat.get("counters"),
            "results": self.results, "positives": self.positives, "errors": self.errors,
            "per_minute": last_minute, "latency_ms": self.latency(), "last_result": self.last_result,
            "threshold": self.threshold, "score_bins": list(self.score_bins), "pacs": self.pacs(),
            "refers": self.refers, "drift": self.drift(),
        }


def result_row(event: Event) -> dict:
    p = event.payload
    model = p.get("model") or {}
    return bounded({
        "id": event.id, "received": event.received, "ts": p.get("ts"), "site": event.site,
        "device": event.device, "source": p.get("source"), "status": p.get("status"),
        "class": p.get("class"), "score": p.get("score"), "threshold": p.get("threshold"),
        "positive": bool(p.get("positive")), "reason": p.get("reason"), "decision": p.get("decision"),
        "model": f"{model.get('name', '?')} {model.get('version', '?')}", "input_ref": p.get("input_ref"),
        "total_ms": (p.get("timing_ms") or {}).get("total"),
    })


def error_row(event: Event) -> dict:
    p = event.payload or {}
    return bounded({
        "id": event.id, "received": event.received, "ts": p.get("ts"), "site": event.site,
        "device": event.device, "level": p.get("level", "error"),
        "kind": p.get("kind", "invalid_payload" if event.kind == INVALID else "?"),
        "message": p.get("message") or event.problem, "source": p.get("source"),
        "input_ref": p.get("input_ref"), "invalid": event.kind == INVALID, "topic": event.topic,
        "raw": event.raw,
    })


class DashboardState:
    def __init__(self, rules: AlertRules | None = None, max_results: int = 500, max_errors: int = 200,
                 max_alerts: int = 100, stale_after_s: float = 90.0, remembered_ids: int = 100_000,
                 max_devices: int = 500):
        self.rules = rules or AlertRules()
        self.max_devices = max_devices
        self.stale_after_s = stale_after_s
        self.devices: dict[str, DeviceState] = {}
        self.results: deque = deque(maxlen=max_results)
        self.errors: deque = deque(maxlen=max_errors)
        self.alerts: deque = deque(maxlen=max_alerts)
        self.per_minute: Counter = Counter()  # minute -> results; positives under (minute, "+")
        self.totals = Counter()
        self.broker = {"connected": False, "url": None, "since": None, "message": None}
        self._seen: OrderedDict = OrderedDict()
        self._remembered_ids = remembered_ids
        self._lock = threading.RLock()
        # Fleet rollout (dashboard/fleet.py): each site's target record, not a device.
        self.targets: dict[str, dict] = {}
        self.target_at: dict[str, float] = {}
        self.target_keys: dict = {}  # operator public keys by id (--fleet-key): verify the targets
        self.target_trust: dict[str, str] = {}  # site -> fleet/target.py's target_trust
        self.fleet_alerts = FleetAlerts()

    def trusted_target(self, site: str) -> dict | None:
        """The site's target record unless its signature failed --fleet-key: a forged one judges nobody."""
        target = self.targets.get(site)
        return None if str(self.target_trust.get(site, "")).startswith("invalid") else target

    def device(self, site: str, device: str) -> DeviceState:
        key = f"{site}/{device}"
        if key not in self.devices:
            self.devices[key] = DeviceState(site, device)
        return self.devices[key]

    def is_duplicate(self, event: Event) -> bool:
        with self._lock:
            return event.id in self._seen

    def apply(self, event: Event) -> list[tuple[str, dict]] | None:
        """Fold `event` in. Returns [(kind, row)] for live views, or None for a duplicate."""
        with self._lock:
            if event.id in self._seen:
                return None
            self._seen[event.id] = None
            if len(self._seen) > self._remembered_ids:
                self._seen.popitem(last=False)
            if event.device == FLEET_DEVICE and event.kind == "target":
                if event.site not in self.targets and len(self.targets) >= self.max_devices:
                    return []  # bounded like the devices (only the fleet account may publish these)
                self.target_trust[event.site] = target_trust(event.payload, self.target_keys, event.site)
                self.targets[event.site] = bounded(event.payload)
                self.target_at[event.site] = event.received
                return []
            new_device = event.site != "?" and f"{event.site}/{event.device}" not in self.devices
            over_limit = new_device and len(self.devices) >= self.max_devices
            if over_limit:
                event = Event(INVALID, event.topic, event.site, event.device, event.id, event.received,
                              problem=f"message from a new device dropped: the dashboard shows at most "
                                      f"{self.max_devices} devices (--max-devices)", retained=event.retained)
            dev = None if event.site == "?" or over_limit else self.device(event.site, event.device)
            previous_state = dev.state if dev else None
            role = KINDS[event.kind].role if event.kind in KINDS else EVENT
            changes: list[tuple[str, dict]] = []
            if role == RESULT:
                changes.append(("result", self._apply_result(dev, event)))
            elif role == STATUS:
                self._apply_status(dev, event)
            elif role == LATEST:
                dev.latest[event.kind] = bounded(event.payload)
                dev.latest_at[event.kind] = event.received
                # The model a device runs changes with a fleet rollout (no restart, no new status).
                current = (event.payload or {}).get("active") if event.kind == "fleet" else None
                if isinstance(current, dict) and current.get("name"):
                    dev.model = bounded(current)
                if dev.state == "unknown":  # periodic messages only come from a running device
                    dev.state, dev.state_since = "online", event.received
            else:  # error events and invalid payloads
                row = error_row(event)
                self.errors.append(row)
                self.totals["invalid" if event.kind == INVALID else "errors"] += 1
                if dev:
                    dev.errors += 1
                    if (event.payload or {}).get("source") == "pacs":
                        dev.pacs_event = bounded(event.payload.get("kind"))
                changes.append(("error_entry", row))
            for alert in self.rules.check(event, previous_state):
                self.alerts.append(alert)
                changes.append(("alert", alert))
            for alert in self.fleet_alerts.check(event, dev, self.trusted_target(event.site),
                                                 self.target_at.get(event.site)):
                self.alerts.append(alert)
                changes.append(("alert", alert))
            return changes

    def _apply_result(self, dev: DeviceState, event: Event) -> dict:
        row = result_row(event)
        p = event.payload
        self.results.append(row)
        dev.results += 1
        dev.last_result = row
        dev.recent.append((event.received, row["total_ms"]))
        if p.get("model") and not dev.model:
            dev.model = bounded(p["model"])
        if "threshold" in p:
            dev.threshold = p["threshold"]
        if row["score"] is not None:
            dev.score_bins[min(SCORE_BINS - 1, int(row["score"] * SCORE_BINS))] += 1
        minute = int(event.received // 60)
        self.per_minute[minute] += 1
        self.totals["results"] += 1
        if row["decision"] == "refer":  # uncertain: counted as referred, never as a positive finding
            dev.refers += 1
            self.totals["refers"] += 1
        elif row["positive"]:
            dev.positives += 1
            self.per_minute[(minute, "+")] += 1
            self.totals["positives"] += 1
        if dev.state == "unknown":
            dev.state, dev.state_since = "online", event.received
        return row

    def _apply_status(self, dev: DeviceState, event: Event) -> None:
        p = event.payload
        if p["state"] != dev.state:
            dev.state_since = event.received
        dev.state = p["state"]
        dev.reason = bounded(p.get("reason"))
        dev.model = bounded(p.get("model")) or dev.model
        dev.sources = bounded(p.get("sources")) or dev.sources
        dev.medge_version = bounded(p.get("medge_version")) or dev.medge_version

    def set_broker(self, connected: bool, url: str | None = None, message: str | None = None) -> None:
        with self._lock:
            self.broker = {"connected": connected, "url": url or self.broker["url"], "since": time.time(),
                           "message": message}

    def versions(self) -> dict:
        """Which model versions run where; `mismatch` when devices disagree."""
        by_label: dict[str, list[str]] = {}
        for dev in self.devices.values():
            if dev.model_label:
                by_label.setdefault(dev.model_label, []).append(dev.key)
        majority = max(by_label, key=lambda label: len(by_label[label]), default=None)
        return {"by_version": by_label, "mismatch": len(by_label) > 1, "majority": majority}

    def summary(self, now: float | None = None) -> dict:
        """Everything but the feeds: devices, versions, counters, charts, broker."""
        now = time.time() if now is None else now
        with self._lock:
            versions = self.versions()
            devices = []
            for dev in sorted(self.devices.values(), key=lambda d: d.key):
                row = dev.to_dict(now, self.stale_after_s)
                row["version_mismatch"] = bool(versions["mismatch"] and dev.model_label
                                               and dev.model_label != versions["majority"])
                row["fleet"] = fleet_view(dev, self.trusted_target(dev.site))
                if row["fleet"] and row["fleet"]["on_target"] is not None:  # the site's target, not the majority
                    row["version_mismatch"] = not row["fleet"]["on_target"]
                devices.append(row)
            current = int(now // 60)
            for key in [k for k in self.per_minute if (k[0] if isinstance(k, tuple) else k) <= current - CHART_MINUTES]:
                del self.per_minute[key]
            minutes = [{"minute": m * 60, "results": self.per_minute.get(m, 0),
                        "positives": self.per_minute.get((m, "+"), 0)}
                       for m in range(current - CHART_MINUTES + 1, current + 1)]
            totals = dict(self.totals)
            totals["devices"] = len(devices)
            totals["online"] = sum(1 for d in devices if d["state"] == "online")
            return {"now": now, "devices": devices, "versions": versions, "totals": totals,
                    "per_minute": minutes, "broker": dict(self.broker), "stale_after_s": self.stale_after_s,
                    "targets": {site: target.get("model") for site, target in self.targets.items()},
                    "target_trust": dict(self.target_trust)}

    def snapshot(self, now: float | None = None) -> dict:
        with self._lock:
            data = self.summary(now)
            data.update(results=list(self.results), errors=list(self.errors), alerts=list(self.alerts))
            return data

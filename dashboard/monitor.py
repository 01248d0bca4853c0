"""`medge monitor`: the dashboard's state in a terminal (rich), or its events as JSON lines."""
from __future__ import annotations

import json
import sys
import threading
import time
from datetime import datetime

from medge import DISCLAIMER
from medge.dashboard.events import Event
from medge.dashboard.mqtt import MqttFeed
from medge.dashboard.state import DashboardState
from medge.edge.config import MqttSettings
from medge.edge.errors import MedgeError


def _clock(epoch: float | None) -> str:
    return datetime.fromtimestamp(epoch).strftime("%H:%M:%S") if epoch else "-"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _ms(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def _drift_text(drift: dict | None):
    """A device's drift column (edge/drift.py): PSI over its window, red with DRIFT when alerting."""
    from rich.text import Text

    if not drift:
        return Text("-")
    if drift.get("psi") is None:
        return Text(f"- ({drift.get('window_n', 0)})", style="dim")
    return Text(f"{drift['psi']:.2f} ({drift.get('window_n', 0)})" + (" DRIFT" if drift.get("alert") else ""),
                style="bold red" if drift.get("alert") else "")


def render(state: DashboardState, results: int = 10, alerts: int = 5, errors: int = 5):
    """The whole terminal view as one rich renderable."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    snap = state.snapshot()
    totals, broker = snap["totals"], snap["broker"]
    header = Text()
    header.append("medge monitor  ", style="bold")
    header.append(f"broker {broker['url']} ", style="dim")
    header.append("connected" if broker["connected"] else "DISCONNECTED",
                  style="green" if broker["connected"] else "bold red")
    if not broker["connected"] and broker.get("message"):
        header.append(f" ({broker['message']})", style="red")
    header.append(f"   devices {totals.get('devices', 0)} ({totals.get('online', 0)} online)"
                  f"   results {totals.get('results', 0)}   positives {totals.get('positives', 0)}"
                  f"   refer {totals.get('refers', 0)}"
                  f"   errors {totals.get('errors', 0) + totals.get('invalid', 0)}\n")
    header.append(DISCLAIMER, style="italic yellow")
    if snap["versions"]["mismatch"]:
        header.append("\nModel version mismatch: " + ", ".join(
            f"{label} on {len(keys)}" for label, keys in snap["versions"]["by_version"].items()), style="bold yellow")

    devices = Table(title="Devices", expand=True, title_justify="left")
    for column in ("Device", "State", "Heartbeat", "Model", "Results/min", "p50/p95 ms", "Results", "Positives",
                   "Refer", "Drift PSI", "Errors"):
        devices.add_column(column)
    for dev in snap["devices"]:
        state_text = Text(dev["state"] + (" (stale)" if dev["stale"] else ""),
                          style={"online": "green", "offline": "bold red"}.get(dev["state"], "yellow"))
        model = Text(dev["model_label"] or "-", style="bold yellow" if dev["version_mismatch"] else "")
        if dev["version_mismatch"]:
            model.append(" (differs)")
        fleet = dev.get("fleet")  # dashboard/fleet.py: rollout state and the site's target
        if fleet and fleet["state"] != "idle":
            model.append(f" [{fleet['state']}]", style="bold red" if fleet["failed"] else "cyan")
        if fleet and fleet["on_target"] is False:
            model.append(" (not the site's target)", style="bold red")
        latency = dev["latency_ms"]
        devices.add_row(dev["key"], state_text, _age(dev["heartbeat_age_s"]), model, str(dev["per_minute"]),
                        f"{_ms(latency['p50'])}/{_ms(latency['p95'])}", str(dev["results"]), str(dev["positives"]),
                        Text(str(dev.get("refers", 0)), style="magenta" if dev.get("refers") else ""),
                        _drift_text(dev.get("drift")), str(dev["errors"]))

    pacs_lines = Text()
    for dev in snap["devices"]:
        pacs = dev["pacs"]
        if pacs:  # only devices whose heartbeat carries pacs_* counters (docs/pacs.md)
            line = (f"PACS {dev['key']}: {pacs['delivered']} delivered, {pacs['queued']} queued, "
                    f"{pacs['refused']} refused, {pacs['unwritable']} unwritable")
            if pacs["queued"] and pacs["last_event"] == "pacs_down":
                line += " (PACS down)"
            pacs_lines.append(("\n" if pacs_lines else "") + line, style="bold yellow" if pacs["warning"] else "")

    feed = Table(title="Last results", expand=True, title_justify="left")
    for column in ("Time", "Device", "Class", "Score", "Threshold", "Model"):
        feed.add_column(column)
    for row in reversed(snap["results"][-results:]):
        refer = row["status"] == "classified" and row.get("decision") == "refer"
        style = "bold magenta" if refer else ("bold red" if row["positive"] else "")
        label = row["class"] if row["status"] == "classified" else f"not applicable ({row['reason'] or '-'})"
        if refer:
            label = f"refer ({label})"
        feed.add_row(_clock(row["received"]), f"{row['site']}/{row['device']}", Text(label or "-", style=style),
                     "-" if row["score"] is None else f"{row['score']:.3f}",
                     "-" if row["threshold"] is None else f"{row['threshold']:.3f}", row["model"])

    parts = [Panel(header), devices, *([pacs_lines] if pacs_lines else []), feed]
    if snap["alerts"]:
        alert_table = Table(title="Alerts", expand=True, title_justify="left", show_header=False)
        for alert in reversed(snap["alerts"][-alerts:]):
            alert_table.add_row(_clock(alert["received"]),
                                Text(alert["message"], style={"critical": "bold red", "info": "magenta"}.get(
                                    alert["level"], "yellow")))
        parts.append(alert_table)
    if snap["errors"]:
        error_table = Table(title="Errors", expand=True, title_justify="left", show_header=False)
        for row in reversed(snap["errors"][-errors:]):
            error_table.add_row(_clock(row["received"]), f"{row['site']}/{row['device']}", row["kind"],
                                row["message"] or "-")
        parts.append(error_table)
    return Group(*parts)


def event_line(event: Event) -> str:
    data = {"kind": event.kind, "topic": event.topic, "site": event.site, "device": event.device, "id": event.id,
            "received": event.received, "retained": event.retained}
    if event.payload is not None:
        data["payload"] = event.payload
    if event.problem:
        data.update(problem=event.problem, raw=event.raw)
    return json.dumps(data)


def run_monitor(settings: MqttSettings, as_json: bool = False, duration: float | None = None,
                stale_after_s: float = 90.0, connect_timeout_s: float | None = None,
                once_settle_s: float | None = None) -> None:
    """Run until `duration` (None: Ctrl-C). `connect_timeout_s`: raise MedgeError with the reason
    when the broker is not connected by then. `once_settle_s`: after connecting, collect that
    long, print one view (or the JSON lines) and return."""
    from rich.console import Console
    from rich.live import Live

    state = DashboardState(stale_after_s=stale_after_s)
    state.set_broker(False, settings.public_url, "connecting")
    lock = threading.Lock()
    connected = threading.Event()

    def on_event(event: Event) -> None:
        changes = state.apply(event)
        if changes is None or not as_json:
            return
        with lock:
            print(event_line(event), flush=True)
            for name, row in changes:
                if name == "alert":
                    print(json.dumps({**row, "kind": "alert", "alert": row["kind"]}), flush=True)

    console = Console()
    live_view = not as_json and console.is_terminal

    last_message: list[str] = []

    def on_connection(is_connected: bool, message: str) -> None:
        state.set_broker(is_connected, settings.public_url, message)
        (connected.set if is_connected else connected.clear)()
        if not live_view and last_message[-1:] != [message]:  # the live view shows it in its header
            print(message, file=sys.stderr, flush=True)
        last_message[:] = [message]

    feed = MqttFeed(settings, on_event, on_connection, name="monitor").start()
    started = time.monotonic()
    deadline = None if duration is None else started + duration
    try:
        if connect_timeout_s is not None and not connected.wait(connect_timeout_s):
            reason = state.broker.get("message") or "no answer"
            raise MedgeError(f"monitor: broker {settings.public_url} not connected within "
                             f"{connect_timeout_s:g} s ({reason})")
        if once_settle_s is not None:
            time.sleep(once_settle_s)
            if not as_json:
                console.print(render(state))
            return
        if not live_view:
            try:
                while deadline is None or time.monotonic() < deadline:
                    time.sleep(0.2)
            except KeyboardInterrupt:
                pass
            if not as_json:  # piped without --json: print the final view once
                console.print(render(state))
            return
        with Live(render(state), console=console, refresh_per_second=2, screen=False) as live:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.5)
                live.update(render(state))
    except KeyboardInterrupt:
        pass
    finally:
        feed.stop()

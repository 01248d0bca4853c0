"""`medge fleet status`: one row per device of a site, from its retained messages: the active
and candidate model, the rollout state, shadow agreement, the reason of a refusal or rollback,
and whether the device runs the site's target model."""
from __future__ import annotations

from medge.fleet.link import DeviceView
from medge.fleet.target import runs_target


def model_text(model: dict | None) -> str:
    if not model:
        return "-"
    sha = str(model.get("sha256") or "")
    return f"{model.get('name', '?')} {model.get('version', '?')}" + (f" ({sha[:8]})" if sha else "")


def device_row(view: DeviceView, target: dict | None) -> dict:
    report = view.fleet or {}
    shadow = report.get("shadow") or None
    on_target = runs_target(view.model, target)
    return {
        "device": view.device,
        "status": (view.status or {}).get("state") or ("online" if view.heartbeat else "unknown"),
        "active": view.model,
        "candidate": report.get("candidate"),
        "state": report.get("state") or "idle",
        "rollout": report.get("rollout"),
        "shadow": shadow,
        "reason": report.get("reason"),
        "on_target": on_target,
    }


def rows(devices: dict[str, DeviceView], target: dict | None) -> list[dict]:
    return [device_row(devices[name], target) for name in sorted(devices)]


def render(site: str, rows_: list[dict], target: dict | None, trust: str | None = None):
    """A rich renderable: the target line (with `trust`, fleet/target.py's target_trust) and the table."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = Text(f"site {site}: target ", style="bold")
    head.append(model_text((target or {}).get("model")) if target else "none published")
    if target and target.get("rollout"):
        head.append(f"  (rollout {target['rollout']})", style="dim")
    if target and trust:
        head.append(f"  [{trust}]", style={"verified": "green", "unverified": "yellow"}.get(trust, "bold red"))
    table = Table(expand=False)
    for column in ("Device", "Status", "Active", "Candidate", "State", "Shadow", "Reason", "On target"):
        table.add_column(column, overflow="fold")
    for row in rows_:
        shadow = row["shadow"]
        agreement = shadow.get("agreement") if shadow else None
        shadow_text = "-" if not shadow else (f"{shadow.get('seen', 0)}/{shadow.get('target', '?')}"
                                             + (f" {agreement:.3f}" if isinstance(agreement, int | float) else ""))
        on_target = {True: Text("yes", style="green"), False: Text("NO", style="bold red"), None: Text("-")}
        state_style = {"promoted": "green", "refused": "bold red", "rolled_back": "bold yellow"}.get(row["state"], "")
        table.add_row(row["device"], row["status"], model_text(row["active"]), model_text(row["candidate"]),
                      Text(row["state"], style=state_style), shadow_text, row["reason"] or "-",
                      on_target[row["on_target"]])
    return Group(head, table)

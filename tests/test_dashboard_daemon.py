"""End to end: the real edge daemon classifies real chest X-rays with a real int8 bundle,
publishes to a real Mosquitto, and the dashboard shows it all in headless Chromium."""
import shutil

from playwright.sync_api import expect

from medge import DISCLAIMER
from medge.dashboard.homeassistant import discovery_configs
from medge.edge.bundle import load_bundle
from tests.fixtures.broker import Subscriber
from tests.fixtures.dashboard import render_ha_template as render
from tests.fixtures.dashboard import validated
from tests.fixtures.edge import xray_files

TIMEOUT_MS = 60_000


def test_the_real_daemon_on_the_dashboard(tmp_path, broker, int8_bundle, edge_daemon, dashboard, page):
    bundle = load_bundle(int8_bundle)
    inbox = tmp_path / "incoming"
    inbox.mkdir()
    wire = Subscriber(broker.port, "medge/radiology/cr-room-2/#")
    daemon = edge_daemon(int8_bundle, broker.url, site="radiology", device="cr-room-2", watch=inbox)
    page.goto(dashboard.url)
    device = page.locator('article.device[data-device="radiology/cr-room-2"]')
    expect(device.locator(".badge")).to_have_text("online", timeout=TIMEOUT_MS)
    expect(device).to_contain_text(f"{bundle.name} {bundle.version}")

    for index, source in enumerate(xray_files()):
        shutil.copy(source, inbox / f"chest-{index}.jpeg")
    (inbox / "notes.txt").write_text("not an image")
    rows = page.locator("#results-body tr")
    expect(rows).to_have_count(3, timeout=TIMEOUT_MS)
    expect(page.locator("#errors-body tr")).to_have_count(1, timeout=TIMEOUT_MS)
    expect(device.locator(".heartbeat-age")).to_contain_text("s ago", timeout=TIMEOUT_MS)

    state = dashboard.state()
    results = state["results"]
    assert {r["class"] for r in results} <= set(bundle.classes)
    model = f"{bundle.name} {bundle.version}"
    assert {(r["threshold"], r["model"]) for r in results} == {(round(bundle.threshold, 6), model)}
    for row in results:  # what the page shows is what the daemon decided
        cell = page.locator(f'#results-body tr[data-id="{row["id"]}"] .class-cell')
        expect(cell).to_have_text(f"refer ({row['class']})" if row["decision"] == "refer" else row["class"])
    positives = [r for r in results if r["positive"] and r["decision"] != "refer"]  # a refer is no finding
    expect(page.locator('#alert-list li[data-kind="positive"]')).to_have_count(min(len(positives), 6))
    assert state["errors"][0]["kind"] == "rejected_input" and not state["errors"][0]["invalid"]

    daemon.kill()  # SIGKILL: the broker publishes the daemon's last will
    expect(device.locator(".badge")).to_have_text("offline", timeout=TIMEOUT_MS)
    expect(page.locator('#alert-list li[data-kind="offline"]')).to_contain_text("radiology/cr-room-2 went offline")
    expect(page.locator("#disclaimer")).to_have_text(DISCLAIMER)
    assert page.console_errors == []

    # The real payloads: the last will says what it is and carries no ts to be mis-ordered by.
    wire.wait_for(lambda sub: any(p.get("last_will") for p in sub.payloads("status")), 10, "the last will")
    wire.close()
    statuses = [validated("status", p) for p in wire.payloads("status")]
    online, will = statuses[0], statuses[-1]
    assert online["state"] == "online" and "ts" in online
    assert will["state"] == "offline" and will["last_will"] is True and "ts" not in will
    assert will["will_set_at"] <= online["ts"]  # registered with the connect, before `online`
    # Home Assistant's templates render for every real payload (StrictUndefined: no missing field)
    configs = {topic.split("/")[-2]: config for topic, config in discovery_configs("radiology", "cr-room-2")}
    for payload in statuses + [validated("result", p) for p in wire.payloads("result")]:
        kind = payload["schema"].split(".")[1].split("/")[0]
        for config in configs.values():
            if config["state_topic"].endswith("/" + kind):
                for key in ("value_template", "json_attributes_template"):
                    if key in config:
                        render(config[key], payload)  # raises on any missing field
    assert render(configs["status"]["value_template"], will) == "offline"


def test_the_last_will_belongs_to_the_connection_it_outlives(tmp_path, broker, int8_bundle, edge_daemon, dashboard):
    """The daemon registers its will again on every reconnect: after the broker restarts, the
    will that reaches subscribers is that of the new connection, and it has no ts that a
    consumer could order before the `online` it follows."""
    inbox = tmp_path / "incoming"
    inbox.mkdir()
    wire = Subscriber(broker.port, "medge/ward/us-3/status", persistent=True, client_id="will-watcher")
    daemon = edge_daemon(int8_bundle, broker.url, site="ward", device="us-3", watch=inbox)
    wire.wait_for(lambda s: [p["state"] for p in s.payloads("status")] == ["online"], 30, "online")
    first = wire.payloads("status")[0]
    broker.kill()
    broker.start()
    wire.wait_for(lambda s: any(p.get("ts", "") > first["ts"] for p in s.payloads("status")), 60,
                  "a new online after the broker restart")
    daemon.kill()
    wire.wait_for(lambda s: s.payloads("status")[-1].get("last_will"), 30, "the last will")
    wire.close()
    statuses = [validated("status", p) for p in wire.payloads("status")]
    onlines = [p for p in statuses if p["state"] == "online"]
    will = statuses[-1]
    assert will["reason"] == "connection lost" and "ts" not in will
    assert onlines[0]["ts"] < will["will_set_at"] <= onlines[-1]["ts"]
    dashboard.wait_for(lambda s: s["devices"] and s["devices"][0]["state"] == "offline", 30, "offline by arrival")

"""End to end: the real edge daemon classifies real chest X-rays with a real int8 bundle,
publishes to a real Mosquitto, and the dashboard shows it all in headless Chromium."""
import shutil

from playwright.sync_api import expect

from medge import DISCLAIMER
from medge.edge.bundle import load_bundle
from tests.fixtures.edge import xray_files

TIMEOUT_MS = 60_000


def test_the_real_daemon_on_the_dashboard(tmp_path, broker, int8_bundle, edge_daemon, dashboard, page):
    bundle = load_bundle(int8_bundle)
    inbox = tmp_path / "incoming"
    inbox.mkdir()
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
        expect(cell).to_have_text(row["class"])
    positives = [r for r in results if r["positive"]]
    expect(page.locator('#alert-list li[data-kind="positive"]')).to_have_count(min(len(positives), 6))
    assert state["errors"][0]["kind"] == "rejected_input" and not state["errors"][0]["invalid"]

    daemon.kill()  # SIGKILL: the broker publishes the daemon's last will
    expect(device.locator(".badge")).to_have_text("offline", timeout=TIMEOUT_MS)
    expect(page.locator('#alert-list li[data-kind="offline"]')).to_contain_text("radiology/cr-room-2 went offline")
    expect(page.locator("#disclaimer")).to_have_text(DISCLAIMER)
    assert page.console_errors == []

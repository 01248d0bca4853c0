"""The dashboard page in real headless Chromium, fed by a real broker: what a clinician or an
IT person sees, including the live offline transition, bad payloads and a restart."""
import json

from playwright.sync_api import expect

from medge import DISCLAIMER
from tests.fixtures.dashboard import (
    MODEL,
    DeviceProcess,
    error_payload,
    pacs_event_payload,
    pacs_heartbeat_payload,
    result_payload,
    status_payload,
)

TIMEOUT_MS = 15_000


def card(page, key):
    return page.locator(f'article.device[data-device="{key}"]')


def test_devices_results_alerts_and_an_offline_transition_show_live(broker, publisher, dashboard, page, tmp_path):
    icu = DeviceProcess(broker.port, "icu", "xr-1")
    er = DeviceProcess(broker.port, "er", "xr-2", model={**MODEL, "version": "1.1.0"})
    page.goto(dashboard.url)
    expect(page.locator("#disclaimer")).to_have_text(DISCLAIMER)
    expect(page.locator("footer")).to_contain_text(DISCLAIMER)
    expect(page.locator("#live-badge")).to_have_text("live", timeout=TIMEOUT_MS)
    expect(page.locator("#broker-badge")).to_contain_text("connected")
    expect(card(page, "icu/xr-1").locator(".badge")).to_have_text("online", timeout=TIMEOUT_MS)
    expect(card(page, "er/xr-2").locator(".badge")).to_have_text("online")
    expect(page.locator("#version-warning")).to_contain_text("pneumonia-cnn 1.1.0 on er/xr-2")
    expect(card(page, "er/xr-2").locator(".mismatch")).to_contain_text("differs")

    # results arrive while the page is open (no reload): the feed, the positive alert
    negative = result_payload("icu", "xr-1", 0.08)
    positive = result_payload("er", "xr-2", 0.91, model={**MODEL, "version": "1.1.0"})
    for payload in (negative, positive, positive):  # the second `positive` is a QoS 1 duplicate
        publisher.send("result", payload)
    publisher.send("result", result_payload("icu", "xr-1", 0.0, status="not_applicable"))
    rows = page.locator("#results-body tr")
    expect(rows).to_have_count(3, timeout=TIMEOUT_MS)
    expect(page.locator(f'#results-body tr[data-id="{positive["id"]}"]')).to_have_count(1)
    expect(page.locator(f'#results-body tr[data-id="{positive["id"]}"]')).to_have_class("positive")
    expect(page.locator(f'#results-body tr[data-id="{positive["id"]}"] .class-cell')).to_have_text("pneumonia")
    expect(page.locator("#results-body tr.not-applicable")).to_contain_text("not applicable")
    alert = page.locator('#alert-list li[data-kind="positive"]')
    expect(alert).to_contain_text("Positive finding: pneumonia (score 0.91 >= threshold 0.50) on er/xr-2")
    expect(page.locator("#kpi-positives")).to_have_text("1")
    expect(card(page, "icu/xr-1").locator(".heartbeat-age")).to_contain_text("s ago")

    # filters: by device, then positives only
    page.select_option("#filter-device", "xr-1")
    expect(rows).to_have_count(2)
    page.select_option("#filter-device", "")
    page.check("#filter-positive")
    expect(rows).to_have_count(1)
    page.uncheck("#filter-positive")

    # bad input: shown as error entries, and the page keeps working afterwards
    publisher.raw("medge/icu/xr-1/result", b'{"schema": "medge.result/1", <img src=x onerror=alert(1)>')
    publisher.raw("medge/icu/xr-1/status", json.dumps({"schema": "medge.status/7", "state": "online"}).encode())
    publisher.send("error", error_payload("icu", "xr-1", "not an image: notes.txt"))
    errors = page.locator("#errors-body tr")
    expect(errors).to_have_count(3, timeout=TIMEOUT_MS)
    expect(page.locator("#errors-body tr.invalid")).to_have_count(2)
    expect(page.locator("#errors-table")).to_contain_text("malformed result payload: not JSON")
    expect(page.locator("#errors-table")).to_contain_text("unknown schema version 'medge.status/7'")
    expect(page.locator("#errors-table")).to_contain_text("not an image: notes.txt")
    expect(page.locator("#errors-body img")).to_have_count(0)  # device text is shown as text, never as HTML
    publisher.send("result", result_payload("icu", "xr-1", 0.2))
    expect(rows).to_have_count(4, timeout=TIMEOUT_MS)
    for index in range(2):  # 5 errors within a minute from one device: an error burst
        publisher.send("error", error_payload("icu", "xr-1", f"truncated file {index}"))
    expect(page.locator('#alert-list li[data-kind="error_burst"]')).to_contain_text(
        "Error burst: 5 errors in 60 s from icu/xr-1", timeout=TIMEOUT_MS)

    # a device dies: its last will turns the card offline and raises an alert, live
    icu.kill()
    expect(card(page, "icu/xr-1").locator(".badge")).to_have_text("offline", timeout=TIMEOUT_MS)
    expect(page.locator('#alert-list li[data-kind="offline"]')).to_contain_text(
        "Device icu/xr-1 went offline (connection lost)")
    expect(page.locator("#kpi-online")).to_have_text("1 / 2")
    expect(page.locator("#score-charts figure")).to_have_count(2)

    # dismissing an alert hides it (and it stays dismissed after a reload)
    alert.locator("button").click()
    expect(alert).to_have_count(0)
    page.reload()
    expect(page.locator('#alert-list li[data-kind="offline"]')).to_have_count(1, timeout=TIMEOUT_MS)
    expect(page.locator('#alert-list li[data-kind="positive"]')).to_have_count(0)

    assert page.console_errors == []
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    er.kill()


def test_a_dashboard_restart_keeps_the_history_on_the_page(broker, publisher, dashboard, page):
    publisher.send("status", status_payload("ward", "us-1", "online"), retain=True)
    first = result_payload("ward", "us-1", 0.77)
    publisher.send("result", first)
    publisher.send("result", result_payload("ward", "us-1", 0.15))
    publisher.raw("medge/ward/us-1/heartbeat", b"\xff\xfe not utf-8")
    dashboard.wait_for(lambda s: len(s["results"]) == 2 and len(s["errors"]) == 1)

    dashboard.restart()
    publisher.send("result", first)  # re-delivered after the restart: still shown once
    page.goto(dashboard.url)
    expect(page.locator("#results-body tr")).to_have_count(2, timeout=TIMEOUT_MS)
    expect(page.locator(f'#results-body tr[data-id="{first["id"]}"]')).to_have_count(1)
    expect(page.locator("#errors-body tr")).to_have_count(1)
    expect(page.locator('#alert-list li[data-kind="positive"]')).to_contain_text("score 0.77")
    expect(card(page, "ward/us-1").locator(".badge")).to_have_text("online")
    publisher.send("status", status_payload("ward", "us-1", "offline", reason="shutdown"), retain=True)
    expect(card(page, "ward/us-1").locator(".badge")).to_have_text("offline", timeout=TIMEOUT_MS)
    expect(card(page, "ward/us-1")).to_contain_text("shutdown")
    assert page.console_errors == []


def test_pacs_delivery_shows_on_the_device_card_with_a_warning_while_the_pacs_is_down(broker, publisher, dashboard,
                                                                                      page):
    plain = DeviceProcess(broker.port, "icu", "xr-1")  # heartbeats without pacs_* counters
    publisher.send("status", status_payload("ward", "us-1", "online"), retain=True)
    publisher.send("heartbeat", pacs_heartbeat_payload("ward", "us-1", delivered=12, queued=0))
    page.goto(dashboard.url)
    pacs = card(page, "ward/us-1").locator("dd.pacs")
    expect(pacs).to_have_text("12 delivered, 0 queued, 0 refused", timeout=TIMEOUT_MS)
    expect(pacs).to_have_attribute("data-warning", "false")
    expect(card(page, "ward/us-1").locator("dt", has_text="PACS")).to_have_count(1)

    # the PACS goes away: results queue up and the card warns, live
    publisher.send("error", pacs_event_payload("ward", "us-1", "pacs_down", "PACS: connection refused; 3 queued"))
    publisher.send("heartbeat", pacs_heartbeat_payload("ward", "us-1", delivered=12, queued=3))
    expect(pacs).to_have_text("12 delivered, 3 queued, 0 refused · PACS down", timeout=TIMEOUT_MS)
    expect(pacs).to_have_attribute("data-warning", "true")
    expect(pacs).to_have_class("pacs pacs-warning")
    expect(pacs).to_have_css("font-weight", "700")

    # back: the backlog is delivered and the warning goes
    publisher.send("error", pacs_event_payload("ward", "us-1", "pacs_up", "PACS: reachable again, 3 delivered"))
    publisher.send("heartbeat", pacs_heartbeat_payload("ward", "us-1", delivered=15, queued=0))
    expect(pacs).to_have_text("15 delivered, 0 queued, 0 refused", timeout=TIMEOUT_MS)
    expect(pacs).to_have_attribute("data-warning", "false")

    # a refusal for good or an unwritable input warns whatever the PACS's state
    publisher.send("heartbeat", pacs_heartbeat_payload("ward", "us-1", delivered=15, queued=0, refused=1, unwritable=2))
    expect(pacs).to_have_text("15 delivered, 0 queued, 1 refused, 2 unwritable", timeout=TIMEOUT_MS)
    expect(pacs).to_have_attribute("data-warning", "true")

    # a device without PACS counters has no PACS line
    expect(card(page, "icu/xr-1").locator(".badge")).to_have_text("online")
    expect(card(page, "icu/xr-1")).to_contain_text("3 processed")
    expect(card(page, "icu/xr-1").locator("dd.pacs")).to_have_count(0)
    expect(card(page, "icu/xr-1").locator("dt", has_text="PACS")).to_have_count(0)
    assert page.console_errors == []
    plain.kill()

"""End to end: a real daemon fed a shifted stream (fundus photographs into a chest X-ray model)
through a real Mosquitto raises a drift alert in the dashboard (real Chromium), and its
uncertain results show as `refer` with their own count, never as positive findings."""
from __future__ import annotations

import cv2
import numpy as np
from playwright.sync_api import expect

from medge.data import RETINAMNIST
from tests.fixtures.broker import Subscriber
from tests.fixtures.dashboard import validated

TIMEOUT_MS = 60_000
WINDOW, MIN_WINDOW = 60, 40  # small, so the test is quick; the defaults are 300 / 200


def write_stream(folder, images, prefix: str) -> None:
    """PNG files written under a temporary name, then renamed, as a well-behaved exporter does."""
    for index, image in enumerate(images):
        temporary = folder / f".{prefix}-{index:03d}.png.part"
        path = folder / f"{prefix}-{index:03d}.png"
        ok, data = cv2.imencode(".png", image)
        assert ok
        temporary.write_bytes(data.tobytes())
        temporary.rename(path)


def test_a_shifted_stream_raises_a_drift_alert_on_the_dashboard(tmp_path, broker, int8_bundle, edge_daemon,
                                                                  dashboard, page):
    inbox = tmp_path / "incoming"
    inbox.mkdir()
    wire = Subscriber(broker.port, "medge/eye-clinic/cr-3/heartbeat")
    edge_daemon(int8_bundle, broker.url, site="eye-clinic", device="cr-3", watch=inbox,
                env={"MEDGE_DRIFT_WINDOW": str(WINDOW), "MEDGE_DRIFT_MIN_WINDOW": str(MIN_WINDOW)})
    page.goto(dashboard.url)
    device = page.locator('article.device[data-device="eye-clinic/cr-3"]')
    expect(device.locator(".badge")).to_have_text("online", timeout=TIMEOUT_MS)

    fundus = np.load(RETINAMNIST)["test_images"][:WINDOW]
    write_stream(inbox, fundus.mean(-1).astype(np.uint8) if fundus.ndim == 4 else fundus, "fundus")

    alert = page.locator('#alert-list li[data-kind="drift"]')
    expect(alert).to_have_count(1, timeout=TIMEOUT_MS)
    expect(alert).to_contain_text("Input drift on eye-clinic/cr-3")
    drift_cell = device.locator("dd.drift")
    expect(drift_cell).to_have_attribute("data-alert", "true")
    expect(drift_cell).to_contain_text("DRIFT")

    # The heartbeats the dashboard judged: never alerting below the minimum window, then alerting.
    wire.close()
    beats = [validated("heartbeat", payload)["drift"] for payload in wire.payloads("heartbeat")]
    assert all(not beat["alert"] for beat in beats if beat["window_n"] < MIN_WINDOW)
    alerting = [beat for beat in beats if beat["alert"]]
    assert alerting and all(beat["psi"] > beat["psi_alert"] for beat in alerting)

    state = dashboard.state()
    (dev,) = [d for d in state["devices"] if d["key"] == "eye-clinic/cr-3"]
    refers = [r for r in state["results"] if r["decision"] == "refer"]
    assert dev["refers"] == len(refers)
    expect(device.locator("dd.findings")).to_contain_text(f"{len(refers)} refer")
    expect(page.locator("#kpi-refers")).to_have_text(str(len(refers)))
    for row in refers:  # a refer is shown as one, in its own colour, and raises no positive alert
        expect(page.locator(f'#results-body tr[data-id="{row["id"]}"]')).to_have_class("refer")
    positive_alerts = [a for a in state["alerts"] if a["kind"] == "positive"]
    assert len(positive_alerts) == sum(1 for r in state["results"] if r["positive"] and r["decision"] != "refer")
    assert page.console_errors == []


def test_medge_monitor_shows_refer_and_drift(broker, publisher, int8_bundle):
    """`medge monitor` on a real broker: a refer result (its own style and count, no positive
    alert) and a heartbeat whose drift figures come from the real DriftMonitor on real images."""
    import os
    import subprocess
    import sys

    from medge.edge.bundle import load_bundle
    from medge.edge.classify import Classifier, analyse
    from medge.edge.drift import DriftMonitor, DriftSettings
    from medge.edge.payloads import heartbeat_payload
    from medge.edge.preprocess import DecodedImage
    from medge.edge.worker import ActiveModel
    from tests.fixtures.dashboard import result_payload

    classifier = Classifier(load_bundle(int8_bundle))
    monitor_drift = DriftMonitor(DriftSettings(window=30, min_window=20), classifier.bundle)
    active = ActiveModel(classifier=classifier, bundle=classifier.bundle, info={})
    fundus = np.load(RETINAMNIST)["test_images"][:30]
    for image in fundus.mean(-1).astype(np.uint8) if fundus.ndim == 4 else fundus:
        monitor_drift.observe(None, analyse(classifier, lambda image=image: DecodedImage([image], "image")), active, [])
    drift = monitor_drift.snapshot()
    assert drift["alert"]
    heartbeat = validated("heartbeat", heartbeat_payload(
        site="eye", device="cr-1", uptime_s=5.0, counters={"processed": 30, "rejected": 0, "queued": 0},
        latency_ms={"p50": 3.0, "p95": 5.0}, drift=drift))
    referred = validated("result", {**result_payload("eye", "cr-1", 0.9), "decision": "refer"})
    monitor = subprocess.Popen([sys.executable, "-m", "medge", "monitor", "--broker", broker.url, "--duration", "3"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "COLUMNS": "220"})
    assert "connected to" in monitor.stderr.readline()
    publisher.send("result", referred)
    publisher.send("heartbeat", heartbeat)
    out, _ = monitor.communicate(timeout=30)
    assert monitor.returncode == 0
    for expected in ("refer (pneumonia)", "refer 1", "positives 0", f"{drift['psi']:.2f} (30) DRIFT",
                     "Input drift on eye/cr-1", "Refer: uncertain result (score 0.90 inside the refer band)"):
        assert expected in " ".join(out.split()), expected
    assert "Positive finding" not in out

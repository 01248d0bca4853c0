"""The dashboard's fleet view in real Chromium, fed by a real broker: each device's active and
candidate model, rollout state, shadow agreement, failed rollouts, and the alerts when a rollout
fails or a device runs a model other than its site's target (the operator's signed record)."""
import json
import os
import subprocess
import sys

from playwright.sync_api import expect

from medge.edge.fleet.commands import fleet_payload
from medge.fleet.target import new_target, target_topic
from tests.fixtures.dashboard import MODEL, DashboardProcess, status_payload, validated
from tests.fixtures.fleet import make_keys

TIMEOUT_MS = 15_000
NEW = {"name": "pneumonia-cnn", "version": "2.0.0", "sha256": "b" * 64}
OLD = {key: MODEL[key] for key in ("name", "version", "sha256")}


def report(device: str, state: str, active: dict, site: str = "icu", **fields) -> dict:
    return validated("fleet", fleet_payload(site=site, device=device, state=state, active=active,
                                            rollout="r-2", command_id=f"c-{device}", **fields))


def publish_rollout(publisher, tmp_path) -> None:
    """Site icu mid-rollout to 2.0.0: xr-1 promoted, xr-2 in its shadow run, xr-3 refused. Site
    ward: a target record signed by a key the operator does not own, and xr-9 on 1.0.0."""
    keys = make_keys(tmp_path / "keys")
    for site, device in (("icu", "xr-1"), ("icu", "xr-2"), ("icu", "xr-3"), ("ward", "xr-9")):
        publisher.send("status", status_payload(site, device, "online"), retain=True)
    for site, key in (("icu", keys["operator"]), ("ward", keys["stranger"])):
        target = validated("target", new_target(site, NEW, [NEW["sha256"]], "r-2", key))
        publisher.raw(target_topic("medge", site), json.dumps(target).encode(), retain=True)
    publisher.send("fleet", report("xr-9", "promoted", OLD, site="ward"), retain=True)
    publisher.send("fleet", report("xr-1", "promoted", NEW, previous=OLD), retain=True)
    publisher.send("fleet", report("xr-2", "shadow", OLD, candidate=NEW,
                                   shadow={"seen": 12, "target": 50, "agreement": 0.9583}), retain=True)
    publisher.send("fleet", report("xr-3", "refused", OLD, candidate=NEW,
                                   reason="self-test: agreement 0.62 below the tolerance 0.98"), retain=True)


def test_the_monitor_shows_the_rollout_state_beside_the_model(broker, publisher, tmp_path):
    publish_rollout(publisher, tmp_path)
    done = subprocess.run([sys.executable, "-m", "medge", "monitor", "--broker", broker.url, "--once"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "250"})
    assert done.returncode == 0, done.stderr
    lines = {key: next(line for line in done.stdout.splitlines() if key in line)
             for key in ("icu/xr-1", "icu/xr-2", "icu/xr-3")}
    assert "pneumonia-cnn 2.0.0 [promoted]" in lines["icu/xr-1"] and "target" not in lines["icu/xr-1"]
    assert "pneumonia-cnn 1.0.0" in lines["icu/xr-2"] and "[shadow]" in lines["icu/xr-2"]
    assert "[refused]" in lines["icu/xr-3"] and "(not the site's target)" in lines["icu/xr-3"]
    assert "_fleet" not in done.stdout


def test_the_fleet_view_shows_versions_rollout_progress_and_off_target_devices(broker, publisher, page, tmp_path):
    keys = make_keys(tmp_path / "keys")
    dashboard = DashboardProcess(broker.url, tmp_path / "history.sqlite", ["--fleet-key", str(keys["operator_pub"])])
    try:
        dashboard.start()  # before the rollout, as it runs: the off-target alerts come from the live reports
        publish_rollout(publisher, tmp_path)
        check_the_fleet_view(dashboard, publisher, page)
    finally:
        dashboard.stop()


def check_the_fleet_view(dashboard, publisher, page):
    page.goto(dashboard.url)
    fleet = page.locator("#fleet")
    expect(fleet).to_be_visible(timeout=TIMEOUT_MS)
    targets = page.locator("#fleet-targets")
    expect(targets).to_contain_text("site icu target: pneumonia-cnn 2.0.0 (verified)")
    # the forged record is shown for what it is, and judges no device
    expect(targets).to_contain_text("site ward target: pneumonia-cnn 2.0.0 (invalid: target record: signed by key")
    expect(page.locator('#fleet-body tr[data-device="ward/xr-9"] .target-cell')).to_have_text("–")
    row = lambda device: page.locator(f'#fleet-body tr[data-device="icu/{device}"]')  # noqa: E731
    expect(page.locator("#fleet-body tr")).to_have_count(4, timeout=TIMEOUT_MS)
    expect(row("xr-1").locator(".active-cell")).to_have_text("pneumonia-cnn 2.0.0")
    expect(row("xr-1").locator(".state-cell")).to_have_text("promoted")
    expect(row("xr-1").locator(".target-cell")).to_have_text("✓ runs target")
    expect(row("xr-2").locator(".candidate-cell")).to_have_text("pneumonia-cnn 2.0.0")
    expect(row("xr-2").locator(".state-cell")).to_have_text("shadow")
    expect(row("xr-2").locator(".shadow-cell")).to_have_text("12/50 · 0.958")
    expect(row("xr-3")).to_have_class("rollout-failed")
    expect(row("xr-3").locator(".reason-cell")).to_contain_text("self-test: agreement 0.62")
    expect(row("xr-3").locator(".target-cell")).to_have_text("⚠ not pneumonia-cnn 2.0.0")
    # the device cards carry the rollout too; the site's target record is no device
    card = page.locator('article.device[data-device="icu/xr-2"]')
    expect(card.locator(".rollout")).to_have_text("shadow pneumonia-cnn 2.0.0 (12/50 · 0.958)")
    expect(page.locator("article.device")).to_have_count(4)
    # xr-1's retained status still names 1.0.0; its fleet report says what it runs since the switch
    expect(page.locator('article.device[data-device="icu/xr-1"] dd').first).to_have_text("pneumonia-cnn 2.0.0")

    failed = page.locator('#alert-list li[data-kind="rollout_failed"]')
    expect(failed).to_contain_text("Rollout failed on icu/xr-3: refused pneumonia-cnn 2.0.0 (self-test: agreement 0.62")
    off = page.locator('#alert-list li[data-kind="off_target"]')
    expect(off).to_have_count(1)  # xr-2 is still in its shadow run: not yet off target
    expect(off).to_contain_text("icu/xr-3 runs pneumonia-cnn 1.0.0, not its site's target pneumonia-cnn 2.0.0")

    # live: the shadow run ends in a rollback -> xr-2 fails and is off target as well
    publisher.send("fleet", report("xr-2", "rolled_back", OLD, candidate=NEW, reason="shadow agreement 0.80 < 0.95",
                                   shadow={"seen": 50, "target": 50, "agreement": 0.8}), retain=True)
    expect(row("xr-2")).to_have_class("rollout-failed", timeout=TIMEOUT_MS)
    expect(row("xr-2").locator(".state-cell")).to_have_text("rolled back")
    expect(off).to_have_count(2, timeout=TIMEOUT_MS)
    expect(failed).to_have_count(2)
    assert page.console_errors == []


def test_a_real_rollout_shows_on_the_page(broker, dashboard, page, edge_daemon, tmp_path):
    """Two real daemons, `medge fleet deploy` as a user runs it, the page in Chromium."""
    from tests.assets.make_bundles import INT8, ONNX_INT8
    from tests.fixtures.edge import REPO
    from tests.fixtures.fleet import fleet_flags, make_candidate, make_keys

    keys = make_keys(tmp_path / "keys")
    v1 = make_candidate(INT8, tmp_path / "v1", version="1", key=keys["bundle"])
    v2 = make_candidate(ONNX_INT8, tmp_path / "v2", version="2", key=keys["bundle"])
    for device in ("xr-1", "xr-2"):
        edge_daemon(v1, broker.url, *fleet_flags(keys), site="ward", device=device,
                    watch=tmp_path / device / "in", state_dir=tmp_path / device / "state")
    page.goto(dashboard.url)
    row = lambda device: page.locator(f'#fleet-body tr[data-device="ward/{device}"]')  # noqa: E731
    for device in ("xr-1", "xr-2"):
        expect(row(device).locator(".state-cell")).to_have_text("idle", timeout=60_000)
        expect(row(device).locator(".active-cell")).to_have_text("pneumonia-cnn 1")

    done = subprocess.run([sys.executable, "-m", "medge", "fleet", "deploy", str(v2), "--site", "ward", "--canary", "1",
                           "--key", str(keys["operator"]), "--broker", broker.url, "--timeout", "90"],
                          capture_output=True, text=True, timeout=150, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    expect(page.locator("#fleet-targets")).to_have_text("site ward target: pneumonia-cnn 2 (unverified)",
                                                        timeout=TIMEOUT_MS)
    for device in ("xr-1", "xr-2"):
        expect(row(device).locator(".state-cell")).to_have_text("promoted", timeout=TIMEOUT_MS)
        expect(row(device).locator(".active-cell")).to_have_text("pneumonia-cnn 2")
        expect(row(device).locator(".target-cell")).to_have_text("✓ runs target")
        expect(page.locator(f'article.device[data-device="ward/{device}"] dd').first).to_have_text("pneumonia-cnn 2")
    expect(page.locator('#alert-list li[data-kind="off_target"]')).to_have_count(0)
    assert page.console_errors == []

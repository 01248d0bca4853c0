"""`medge dashboard` as a process against a real Mosquitto: state, live stream, history
across restarts, duplicates, credentials, and its command-line errors."""
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

from medge import DISCLAIMER
from medge.broker import LocalBroker, free_port
from tests.fixtures.dashboard import (
    DashboardProcess,
    DeviceProcess,
    Publisher,
    error_payload,
    result_payload,
    status_payload,
)
from tests.fixtures.edge import make_tls_files, mosquitto_password_file


def test_devices_results_duplicates_and_a_restart_that_keeps_history(broker, publisher, dashboard):
    device = DeviceProcess(broker.port, "icu", "xr-1")
    publisher.send("result", result_payload("icu", "xr-1", 0.12))
    positive = result_payload("icu", "xr-1", 0.93)
    publisher.send("result", positive)
    publisher.send("result", positive)  # re-delivered with the same id
    publisher.send("error", error_payload("icu", "xr-1", "not an image: notes.txt"))
    publisher.raw("medge/icu/xr-1/result", b"{truncated")
    state = dashboard.wait_for(lambda s: len(s["results"]) == 2 and len(s["errors"]) == 2
                               and s["devices"] and s["devices"][0]["last_heartbeat"])
    assert [r["score"] for r in state["results"]] == [0.12, 0.93]
    assert state["devices"][0]["state"] == "online" and state["devices"][0]["model_label"] == "pneumonia-cnn 1.0.0"

    device.kill()
    state = dashboard.wait_for(lambda s: s["devices"][0]["state"] == "offline", what="the last will")
    assert state["devices"][0]["reason"] == "connection lost"
    assert [a["kind"] for a in state["alerts"]] == ["positive", "offline"]

    dashboard.restart()
    restarted = dashboard.state()
    for key in ("results", "errors", "alerts"):
        assert restarted[key] == state[key], key
    assert restarted["devices"][0]["state"] == "offline"
    publisher.send("result", positive)  # a late duplicate after the restart is still dropped
    publisher.send("result", result_payload("icu", "xr-1", 0.3))
    after = dashboard.wait_for(lambda s: len(s["results"]) == 3)
    assert [r["score"] for r in after["results"]] == [0.12, 0.93, 0.3]


def read_sse(response, wanted: int, timeout: float = 15.0) -> list[tuple[str, dict]]:
    events, name, deadline = [], None, time.monotonic() + timeout
    while len(events) < wanted and time.monotonic() < deadline:
        line = response.readline().decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: ") and name not in ("summary",):
            events.append((name, json.loads(line[6:])))
    return events


def test_the_event_stream_sends_a_snapshot_then_live_rows(broker, publisher, dashboard):
    publisher.send("result", result_payload("er", "us-2", 0.2))
    dashboard.wait_for(lambda s: len(s["results"]) == 1)
    with urllib.request.urlopen(dashboard.url + "/api/events", timeout=20) as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        (name, snapshot), = read_sse(stream, 1)
        assert name == "snapshot" and len(snapshot["results"]) == 1
        publisher.send("result", result_payload("er", "us-2", 0.88))
        publisher.raw("medge/er/us-2/error", json.dumps({"schema": "medge.error/9"}).encode())
        live = read_sse(stream, 3)
    assert [name for name, _ in live] == ["result", "alert", "error_entry"]
    assert live[0][1]["positive"] and live[1][1]["kind"] == "positive"
    assert "unknown schema version 'medge.error/9'" in live[2][1]["message"]


def test_the_page_is_self_contained_and_carries_the_disclaimer(dashboard):
    status, headers, body = dashboard.get("/")
    page = body.decode()
    assert status == 200 and DISCLAIMER in page
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert "http://" not in page and "https://" not in page  # no CDN: the site may have no internet
    for name in ("app.js", "style.css"):
        assert dashboard.get(f"/static/{name}")[0] == 200
    try:
        dashboard.get("/static/../service.py")
        raise AssertionError("path outside the static files was served")
    except urllib.error.HTTPError as error:
        assert error.code == 404


def test_credentials_and_tls_stay_on_the_server(tmp_path):
    tls = make_tls_files(tmp_path / "tls")
    passwords = mosquitto_password_file(tmp_path / "passwd", "clinic-dashboard", "s3cret-Pa55")
    tls_port = free_port()
    config = ("allow_anonymous false\n" f"password_file {passwords}\n"
              f"listener {tls_port} 127.0.0.1\ncafile {tls['ca']}\ncertfile {tls['cert']}\nkeyfile {tls['key']}\n")
    with LocalBroker(kind="mosquitto", workdir=tmp_path / "broker", extra_config=config) as secured:
        wrong = DashboardProcess(secured.url, tmp_path / "wrong.sqlite", extra=["--username", "clinic-dashboard"],
                                 env={"MEDGE_MQTT_PASSWORD": "not-it"}).start(wait_connected=False)
        try:
            state = wrong.wait_for(lambda s: "refused" in (s["broker"]["message"] or ""), what="a refusal")
            assert not state["broker"]["connected"] and "Not authorized" in state["broker"]["message"]
        finally:
            wrong.stop()

        secret = tmp_path / "mqtt-password"
        secret.write_text("s3cret-Pa55\n")
        dashboard = DashboardProcess(f"mqtts://127.0.0.1:{tls_port}", tmp_path / "h.sqlite",
                                     extra=["--username", "clinic-dashboard", "--password-file", str(secret),
                                            "--ca-file", str(tls["ca"])]).start()
        publisher = Publisher(secured.port, username="clinic-dashboard", password="s3cret-Pa55")
        try:
            assert dashboard.state()["broker"]["url"] == f"mqtts://127.0.0.1:{tls_port}"
            publisher.send("status", status_payload("icu", "xr-1", "online"), retain=True)
            dashboard.wait_for(lambda s: s["devices"])
            served = b"".join(dashboard.get(path)[2] for path in ("/", "/static/app.js", "/api/state"))
            with urllib.request.urlopen(dashboard.url + "/api/events", timeout=10) as stream:
                served += stream.readline() + stream.readline()
            assert b"snapshot" in served
            for secret_part in (b"s3cret-Pa55", b"clinic-dashboard", str(tls["ca"]).encode(), b"BEGIN CERTIFICATE"):
                assert secret_part not in served
        finally:
            publisher.close()
            dashboard.stop()


def test_a_named_session_receives_what_was_published_while_the_dashboard_was_down(broker, publisher, tmp_path):
    dashboard = DashboardProcess(broker.url, tmp_path / "h.sqlite", extra=["--client-id", "ward-dashboard"]).start()
    try:
        publisher.send("result", result_payload("icu", "xr-1", 0.2))
        dashboard.wait_for(lambda s: len(s["results"]) == 1)
        dashboard.stop()
        publisher.send("result", result_payload("icu", "xr-1", 0.7))  # queued by the broker for the session
        dashboard.start()
        state = dashboard.wait_for(lambda s: len(s["results"]) == 2, what="the queued result")
        assert [r["score"] for r in state["results"]] == [0.2, 0.7]
    finally:
        dashboard.stop()


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "medge", *args], capture_output=True, text=True, timeout=60)


def test_command_line_errors_are_one_line(tmp_path, dashboard):
    bad_url = run_cli("dashboard", "--broker", "http://example", "--db", str(tmp_path / "a.sqlite"))
    assert bad_url.returncode == 1
    # the daemon's own URL rules (medge.edge.config.parse_broker_url), named by the flag
    assert bad_url.stderr.strip() == ("Error: --broker: 'http://example' must look like mqtt://HOST[:PORT] or "
                                      "mqtts://HOST[:PORT]")
    busy = run_cli("dashboard", "--port", str(dashboard.port), "--db", str(tmp_path / "b.sqlite"))
    assert busy.returncode == 1 and busy.stderr.startswith(f"Error: --port {dashboard.port}: cannot serve")
    missing = run_cli("monitor", "--ca-file", str(tmp_path / "nope.pem"))
    assert missing.returncode == 1 and missing.stderr.startswith("Error: --ca-file: ") \
        and "does not exist" in missing.stderr

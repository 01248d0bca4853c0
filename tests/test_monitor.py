"""`medge monitor`: JSON lines for piping, and the rich terminal view."""
import json
import os
import subprocess
import sys
import time

from medge import DISCLAIMER
from tests.fixtures.dashboard import (
    DeviceProcess,
    error_payload,
    pacs_event_payload,
    pacs_heartbeat_payload,
    result_payload,
)


def start_monitor(broker, *args):
    # COLUMNS: rich lays the tables out for a wide terminal even though stdout is a pipe
    return subprocess.Popen([sys.executable, "-m", "medge", "monitor", "--broker", broker.url, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})


def test_json_lines_carry_every_event_once(broker, publisher):
    monitor = start_monitor(broker, "--json")
    try:
        assert "connected to" in monitor.stderr.readline()
        device = DeviceProcess(broker.port, "icu", "xr-1")
        positive = result_payload("icu", "xr-1", 0.88)
        publisher.send("result", positive)
        publisher.send("result", positive)  # duplicate
        publisher.send("error", error_payload("icu", "xr-1", "not an image: a.txt"))
        publisher.raw("medge/icu/xr-1/result", b"nope")
        device.kill()
        lines = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(line.get("alert") == "offline" for line in lines):
            line = monitor.stdout.readline()
            assert line, "monitor ended early"
            lines.append(json.loads(line))
    finally:
        monitor.terminate()
        monitor.wait(timeout=10)
    kinds = [line["kind"] for line in lines]
    assert kinds.count("result") == 1 and kinds.count("error") == 1 and kinds.count("invalid") == 1
    assert [line["payload"]["state"] for line in lines if line["kind"] == "status"] == ["online", "offline"]
    result = next(line for line in lines if line["kind"] == "result")
    assert result["payload"] == positive and result["topic"] == "medge/icu/xr-1/result"
    invalid = next(line for line in lines if line["kind"] == "invalid")
    assert invalid["problem"] == "malformed result payload: not JSON" and invalid["raw"] == "nope"
    alerts = [line["message"] for line in lines if line["kind"] == "alert"]
    assert [line["alert"] for line in lines if line["kind"] == "alert"] == ["positive", "offline"]
    assert alerts == ["Positive finding: pneumonia (score 0.88 >= threshold 0.50) on icu/xr-1",
                      "Device icu/xr-1 went offline (connection lost)"]


def test_the_terminal_view_shows_devices_results_and_alerts(broker, publisher):
    device = DeviceProcess(broker.port, "er", "xr-2")  # its retained status reaches a monitor started later
    monitor = start_monitor(broker, "--duration", "3")
    try:
        assert "connected to" in monitor.stderr.readline()
        publisher.send("result", result_payload("er", "xr-2", 0.95))
        publisher.send("result", result_payload("er", "xr-2", 0.05))
        publisher.raw("medge/er/xr-2/error", b"{}")
        publisher.send("error", pacs_event_payload("ward", "us-1", "pacs_down", "PACS: connection refused"))
        publisher.send("heartbeat", pacs_heartbeat_payload("ward", "us-1", delivered=12, queued=3))
        out, _ = monitor.communicate(timeout=30)
    finally:
        device.kill()
    assert monitor.returncode == 0
    assert DISCLAIMER in " ".join(out.split())
    for expected in ("er/xr-2", "online", "pneumonia-cnn 1.0.0", "pneumonia", "0.950", "normal", "0.050",
                     "Positive finding", "unknown schema version None on error topic", "results 2", "positives 1",
                     "PACS ward/us-1: 12 delivered, 3 queued, 0 refused, 0 unwritable (PACS down)"):
        assert expected in out, expected
    assert "PACS er/xr-2" not in out  # its heartbeats carry no pacs_* counters


def test_a_dead_broker_is_named_with_its_reason_and_timeout_exits_non_zero():
    from medge.broker import free_port

    dead = f"mqtt://127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "medge", "monitor", "--broker", dead, "--timeout", "2"],
                          capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started
    assert done.returncode == 1, done
    assert f"cannot reach broker {dead}: Connection refused; retrying" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (f"Error: monitor: broker {dead} not connected within 2 s "
                                                    f"(cannot reach broker {dead}: Connection refused; retrying)")
    assert took < 20
    once = subprocess.run([sys.executable, "-m", "medge", "monitor", "--broker", dead, "--once"],
                          capture_output=True, text=True, timeout=60)
    assert once.returncode == 1 and "not connected within 10 s" in once.stderr


def test_once_prints_what_the_broker_holds_and_exits(broker):
    device = DeviceProcess(broker.port, "er", "xr-2")  # its retained status
    try:
        done = subprocess.run([sys.executable, "-m", "medge", "monitor", "--broker", broker.url, "--once"],
                              capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    finally:
        device.kill()
    assert done.returncode == 0, done.stderr
    assert "er/xr-2" in done.stdout and "online" in done.stdout and "connected" in done.stdout


def test_the_broker_url_follows_the_daemons_rules(broker):
    alias = f"tcp://127.0.0.1:{broker.port}"  # accepted as an alias of mqtt://, as before
    done = subprocess.run([sys.executable, "-m", "medge", "monitor", "--broker", alias, "--once", "--json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and f"connected to mqtt://127.0.0.1:{broker.port}" in done.stderr
    secret = subprocess.run([sys.executable, "-m", "medge", "monitor", "--broker", "mqtt://dash:s3cret@127.0.0.1"],
                            capture_output=True, text=True, timeout=60)
    assert secret.returncode == 1 and "s3cret" not in secret.stderr
    assert secret.stderr.strip() == ("Error: --broker: no credentials in the URL; set mqtt.username and the "
                                     "password in MEDGE_MQTT_PASSWORD or mqtt.password_file")
    plain_with_ca = subprocess.run([sys.executable, "-m", "medge", "monitor", "--broker", "mqtt://127.0.0.1",
                                    "--ca-file", __file__], capture_output=True, text=True, timeout=60)
    assert plain_with_ca.returncode == 1
    assert plain_with_ca.stderr.strip() == ("Error: --broker: TLS options are set but 'mqtt://127.0.0.1' is not "
                                            "mqtts://")

"""`medge edge run` as a real process against a real Mosquitto: delivery, outages, SIGKILL,
last will, clean shutdown, TLS with a password, and `medge edge check`."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import cv2
import jsonschema
import pytest

from medge.broker import LocalBroker, free_port
from medge.edge.schemas import load_schema
from tests.fixtures.broker import wait_until
from tests.fixtures.edge import (
    PHI,
    SessionSubscriber,
    make_tls_files,
    mosquitto_password_file,
    small_xray,
    write_atomically,
    xray_dicom,
    xray_files,
)


def validate(payload: dict) -> dict:
    jsonschema.validate(payload, load_schema(payload["schema"].split(".")[1].split("/")[0]))
    return payload


def png(path, index, size=96):
    ok, data = cv2.imencode(".png", small_xray(index, size))
    return write_atomically(path, data.tobytes())


def by_input(results: list[dict]) -> dict[str, set[str]]:
    """input_ref -> the distinct message ids published for it."""
    refs: dict[str, set[str]] = {}
    for result in results:
        refs.setdefault(result["input_ref"], set()).add(result["id"])
    return refs


@pytest.mark.parametrize("version", ["5", "3.1.1"])
def test_folder_results_reach_a_subscriber_and_shutdown_is_clean(tmp_path, broker, int8_bundle, edge_daemon, version):
    consumer = SessionSubscriber(broker.port, "medge/test/dev1/#", client_id=f"consumer-{version}")
    inbox = tmp_path / "incoming"
    inbox.mkdir()
    shutil.copy(xray_files()[0], inbox / "chest.jpeg")  # backlog: arrived while the daemon was down
    daemon = edge_daemon(int8_bundle, broker.url, "--mqtt-version", version)
    try:
        consumer.wait_for(lambda s: any(p["state"] == "online" for p in s.payloads("status")), 20, "online")
        png(inbox / "chest.png", 1, 256)
        write_atomically(inbox / "empty.jpg", b"")  # a bad input between good ones
        xray_dicom(tmp_path / "study.dcm", index=2, patient=PHI)
        os.replace(tmp_path / "study.dcm", inbox / "study.dcm")
        consumer.wait_for(lambda s: len(s.unique("result")) == 3 and len(s.unique("error")) == 1, 30,
                          "3 results and 1 error event")
        consumer.wait_for(lambda s: any(h["counters"]["processed"] == 3 and h["counters"]["rejected"] == 1
                                        and h["counters"]["published"] >= 4
                                        for h in s.payloads("heartbeat")), 10, "a heartbeat counting the 3 inputs")
        assert daemon.stop() == 0  # SIGTERM
        consumer.wait_for(lambda s: s.payloads("status")[-1]["state"] == "offline", 10, "offline")
    finally:
        consumer.close()
    results = [validate(p) for p in consumer.unique("result").values()]
    assert {r["status"] for r in results} == {"classified"}
    assert {r["site"] for r in results} == {"test"} and {r["device"] for r in results} == {"dev1"}
    assert sum("dicom" in r for r in results) == 1
    manifest = json.loads((int8_bundle / "medge.json").read_text())
    assert {r["model"]["sha256"] for r in results} == {manifest["artifacts"][0]["sha256"]}
    assert all(set(r["probabilities"]) == set(manifest["classes"]) for r in results)
    assert all(r["timing_ms"]["total"] >= r["timing_ms"]["inference"] > 0 for r in results)
    for payload in consumer.payloads("status") + consumer.payloads("heartbeat"):
        validate(payload)
    online = [p for p in consumer.payloads("status") if p["state"] == "online"][0]
    assert online["model"]["sha256"] == manifest["artifacts"][0]["sha256"] and online["sources"] == ["watch"]
    assert consumer.payloads("status")[-1]["reason"] == "shutdown"
    heartbeat = consumer.payloads("heartbeat")[-1]
    assert heartbeat["counters"]["processed"] == 3 and heartbeat["counters"]["rejected"] == 1
    [error] = [validate(p) for p in consumer.unique("error").values()]
    assert error["kind"] == "rejected_input" and error["message"] == "input.jpg: empty file (0 bytes)"
    assert (inbox / "rejected" / "empty.jpg.why.txt").read_text().strip() == error["message"]
    assert heartbeat["latency_ms"]["p50"] > 0 and heartbeat["rss_mb"] > 0
    # Nothing identifying left the device: not a tag value, not a file name.
    raw = "\n".join(json.dumps(p) for _, p, _ in consumer.messages)
    for value in list(PHI.values()) + ["Doe", "99812377", "chest.jpeg", "study.dcm", "empty.jpg"]:
        assert value not in raw, value
    assert sorted(p.name for p in (inbox / "processed").iterdir()) == ["chest.jpeg", "chest.png", "study.dcm"]
    # The offline status is retained: a dashboard connecting now learns the device is down.
    late = SessionSubscriber(broker.port, "medge/test/dev1/status", client_id=f"late-{version}")
    try:
        late.wait_for(lambda s: len(s.messages) == 1, 10, "the retained status")
        topic, payload, retained = late.messages[0]
        assert retained and payload["state"] == "offline"
    finally:
        late.close()


def test_broker_killed_and_restarted_mid_stream_loses_nothing(tmp_path, broker, int8_bundle, edge_daemon):
    broker = broker
    consumer = SessionSubscriber(broker.port, "medge/test/dev1/#")
    inbox = tmp_path / "incoming"
    inbox.mkdir()
    daemon = edge_daemon(int8_bundle, broker.url)
    try:
        for index in range(8):
            png(inbox / f"before_{index}.png", index)
        consumer.wait_for(lambda s: len(s.unique("result")) == 8, 30, "the first 8 results")
        time.sleep(2.0)  # Mosquitto saves sessions every second: let it save the consumer's
        broker.kill()  # abrupt: the site broker loses power
        for index in range(12):
            png(inbox / f"during_{index}.png", index)
        wait_until(lambda: len(list((inbox / "processed").glob("during_*"))) == 12, 30, "results stored offline")
        broker.start()  # same port, its persistent store (the consumer's session) intact
        for index in range(5):
            png(inbox / f"after_{index}.png", index)
        consumer.wait_for(lambda s: len(s.unique("result")) == 25, 60, "all 25 results")
        assert daemon.running
        assert daemon.stop() == 0
    finally:
        consumer.close()
    refs = by_input(list(consumer.unique("result").values()))
    assert len(refs) == 25 and all(len(ids) == 1 for ids in refs.values())
    assert "cannot reach broker" in daemon.log_text() or "disconnected" in daemon.log_text()


def test_sigkill_mid_stream_then_restart_delivers_every_input_exactly_once(tmp_path, broker, int8_bundle,
                                                                            edge_daemon):
    consumer = SessionSubscriber(broker.port, "medge/test/dev1/#")
    inbox = tmp_path / "incoming"
    inbox.mkdir()
    first = edge_daemon(int8_bundle, broker.url)
    try:
        consumer.wait_for(lambda s: any(p["state"] == "online" for p in s.payloads("status")), 20, "online")
        count = 36
        for index in range(count):  # full-size X-rays: a stream the kill lands in the middle of
            shutil.copy(xray_files()[index % 3], tmp_path / f"x{index:02d}.jpeg")
            os.replace(tmp_path / f"x{index:02d}.jpeg", inbox / f"x{index:02d}.jpeg")
        consumer.wait_for(lambda s: len(s.unique("result")) >= 5, 30, "the first results")
        first.kill()  # SIGKILL: no cleanup, no offline message from the daemon itself
        consumer.wait_for(lambda s: s.payloads("status")[-1]["state"] == "offline", 10, "the last will")
        will = validate(consumer.payloads("status")[-1])
        assert will["reason"] == "connection lost"
        left = [p.name for p in inbox.glob("*.jpeg")]
        assert left, "the kill came after the whole stream: make it longer"

        second = edge_daemon(int8_bundle, broker.url)
        wait_until(lambda: len(list((inbox / "processed").glob("*.jpeg"))) == count, 60, "every input processed")
        consumer.wait_for(lambda s: len(by_input(list(s.unique("result").values()))) == count, 30, "every result")
        consumer.wait_for(lambda s: s.payloads("status")[-1]["state"] == "online", 10, "online again")
        assert second.stop() == 0
    finally:
        consumer.close()
    results = list(consumer.unique("result").values())
    refs = by_input(results)
    assert len(refs) == count
    assert all(len(ids) == 1 for ids in refs.values()), "an input was classified twice under different ids"
    assert len(results) == count
    assert list((inbox / "rejected").iterdir()) == []


@pytest.fixture
def tls_broker(tmp_path):
    tls = make_tls_files(tmp_path / "tls")
    passwords = mosquitto_password_file(tmp_path / "passwd", "dev1", "correct horse")
    mosquitto_password_file(tmp_path / "passwd2", "reader", "battery staple")
    passwords.write_text(passwords.read_text() + (tmp_path / "passwd2").read_text())
    tls_port = free_port()
    extra = (f"allow_anonymous false\npassword_file {passwords}\n"
             f"listener {tls_port} 127.0.0.1\ncafile {tls['ca']}\ncertfile {tls['cert']}\nkeyfile {tls['key']}\n")
    with LocalBroker(kind="mosquitto", workdir=tmp_path / "broker", extra_config=extra) as running:
        running.tls_port = tls_port
        running.tls = tls
        yield running


def test_tls_with_username_and_password(tmp_path, tls_broker, int8_bundle, edge_daemon):
    consumer = SessionSubscriber(tls_broker.port, "medge/test/dev1/#", username="reader", password="battery staple")
    url = f"mqtts://127.0.0.1:{tls_broker.tls_port}"
    flags = ["--ca-file", str(tls_broker.tls["ca"]), "--username", "dev1"]
    inbox = tmp_path / "incoming"
    inbox.mkdir()
    try:
        daemon = edge_daemon(int8_bundle, url, *flags, env={"MEDGE_MQTT_PASSWORD": "correct horse"})
        consumer.wait_for(lambda s: any(p["state"] == "online" for p in s.payloads("status")), 20, "online over TLS")
        shutil.copy(xray_files()[1], inbox / "a.jpeg")
        consumer.wait_for(lambda s: len(s.unique("result")) == 1, 30, "a result over TLS")
        assert daemon.stop() == 0
        assert "correct horse" not in daemon.log_text()
    finally:
        consumer.close()

    def check(password):
        return subprocess.run([sys.executable, "-m", "medge", "edge", "check", str(int8_bundle), "--broker", url,
                               *flags, "--watch", str(inbox), "--state-dir", str(tmp_path / "state")],
                              capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, MEDGE_MQTT_PASSWORD=password))

    good = check("correct horse")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "ok   broker:" in good.stdout and "ok   bundle:" in good.stdout and "all checks passed" in good.stdout
    bad = check("wrong")
    assert bad.returncode == 1
    assert "FAIL broker:" in bad.stdout and "refused" in bad.stdout and "Error: 1 check(s) failed" in bad.stderr


def test_an_unusable_ca_file_stops_the_daemon_with_one_line(tmp_path, int8_bundle):
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    done = subprocess.run([sys.executable, "-m", "medge", "edge", "run", str(int8_bundle), "--broker",
                           "mqtts://127.0.0.1:8883", "--ca-file", str(tmp_path / "ca.pem"), "--watch",
                           str(tmp_path / "in"), "--state-dir", str(tmp_path / "state")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("Error: mqtt.ca_file: cannot load the TLS files")
    assert "Traceback" not in done.stderr


def test_an_unusable_state_dir_is_one_line_naming_the_key(tmp_path):
    from types import SimpleNamespace

    from medge.edge.config import load_config
    from medge.edge.daemon import EdgeDaemon
    from medge.edge.errors import ConfigError

    (tmp_path / "file").write_text("x")
    (tmp_path / "bundle").mkdir()
    config = load_config(env={}, flags={"bundle": str(tmp_path / "bundle"), "watch.dir": str(tmp_path / "in"),
                                        "state.dir": str(tmp_path / "file" / "state")})
    classifier = SimpleNamespace(bundle=SimpleNamespace(name="m", version="1"), runtime_name="stub",
                                 artifact=SimpleNamespace(sha256="0" * 64, format="tflite-int8"))
    with pytest.raises(ConfigError, match=r"^state\.dir: cannot use"):
        EdgeDaemon(config, classifier=classifier).run()

"""The shipped site broker config (deploy/mosquitto/mosquitto.conf + acl + make-credentials.sh)
run by a real Mosquitto: TLS only, passwords, per-device ACLs, websockets for dashboards, and
no acknowledged message lost to a broker crash."""
import socket
import subprocess

from tests.fixtures.deploy import MOSQUITTO_DIR, stays_false, wait_until

NOT_AUTHORIZED = 135


def test_the_broker_starts_cleanly_on_the_shipped_config(site_broker):
    log = site_broker.log_text()
    assert "running" in log
    assert "Error" not in log and "Warning: " not in log.replace("Warning: Mosquitto should not be run as root", "")


def test_plain_text_mqtt_is_refused(site_broker):
    # A CONNECT in clear text to the TLS port: the broker never answers with a CONNACK.
    connect_packet = bytes([0x10, 0x10, 0x00, 0x04]) + b"MQTT" + bytes([0x04, 0x02, 0x00, 0x3C, 0x00, 0x04]) + b"test"
    with socket.create_connection(("127.0.0.1", site_broker.port), timeout=5) as sock:
        sock.sendall(connect_packet)
        try:
            reply = sock.recv(16)
        except (TimeoutError, ConnectionResetError):
            reply = b""
    assert not reply.startswith(b"\x20"), f"got a CONNACK over plain text: {reply!r}"


def test_plain_text_client_is_not_connected(connect):
    client = connect("xray-1", tls=False)
    assert not client.wait_connected(timeout=5)


def test_tls_without_a_client_certificate_is_refused_on_the_device_port(connect):
    client = connect("xray-1", certificate=False)
    assert not client.wait_connected(timeout=5)
    assert client.connack is None  # refused in the TLS handshake, before MQTT


def test_unauthenticated_and_wrong_password_are_refused(connect, site_credentials):
    anonymous = connect(None)  # valid client certificate, no username
    assert not anonymous.wait_connected()
    assert anonymous.connack is not None and anonymous.connack.is_failure

    wrong = connect("xray-1", password="not-the-password")
    assert not wrong.wait_connected()
    assert wrong.connack is not None and wrong.connack.is_failure
    assert str(wrong.connack) in ("Not authorized", "Bad user name or password")

    # Passwords are per device: xray-2's password does not log in as xray-1.
    other = (site_credentials / "clients" / "xray-2" / "password").read_text().strip()
    impostor = connect("xray-1", password=other)
    assert not impostor.wait_connected()
    assert impostor.connack is not None and impostor.connack.is_failure


def test_a_device_publishes_its_own_results_and_a_dashboard_receives_them(connect):
    dashboard = connect("dashboard")
    assert dashboard.wait_connected()
    assert dashboard.subscribe("medge/#") == 1

    device = connect("xray-1")
    assert device.wait_connected()
    assert device.publish("medge/site-a/xray-1/result", b'{"label": "normal"}') == 0
    wait_until(lambda: dashboard.received("medge/site-a/xray-1/result") == [b'{"label": "normal"}'], 5, "the result")


def test_a_device_cannot_write_to_another_devices_topic(connect):
    dashboard = connect("dashboard")
    assert dashboard.wait_connected() and dashboard.subscribe("medge/#") == 1
    device = connect("xray-1")
    assert device.wait_connected()

    assert device.publish("medge/site-a/xray-2/result", b'{"forged": true}') == NOT_AUTHORIZED
    assert device.publish("other/topic", b"x") == NOT_AUTHORIZED
    assert stays_false(lambda: dashboard.messages, 1.0), dashboard.messages


def test_a_device_reads_only_its_own_commands(connect):
    xray1, xray2 = connect("xray-1"), connect("xray-2")
    operator = connect("fleet")
    assert xray1.wait_connected() and xray2.wait_connected() and operator.wait_connected()

    # Mosquitto 2.0 grants wildcard subscriptions and filters each message by the read ACL on
    # delivery, so what counts is that nothing of xray-1's ever reaches xray-2.
    xray2.subscribe("medge/#")
    xray2.subscribe("medge/site-a/xray-1/commands/#")
    assert xray1.subscribe("medge/site-a/xray-1/commands/#") == 1

    assert operator.publish("medge/site-a/xray-1/commands/reload", b"{}") == 0
    wait_until(lambda: xray1.received("medge/site-a/xray-1/commands/reload") == [b"{}"], 5, "the command")
    assert xray1.publish("medge/site-a/xray-1/result", b"r") == 0  # own topic: accepted
    assert stays_false(lambda: xray2.messages, 0.5)

    dashboard = connect("dashboard")
    assert dashboard.wait_connected()
    assert dashboard.publish("medge/site-a/xray-1/commands/reload", b"{}") == NOT_AUTHORIZED


def test_dashboards_connect_over_secure_websockets(connect, site_broker):
    browser_like = connect("dashboard", port=site_broker.ws_port, websockets=True, certificate=False)
    assert browser_like.wait_connected()
    assert browser_like.subscribe("medge/+/+/result") == 1

    anonymous = connect(None, port=site_broker.ws_port, websockets=True, certificate=False)
    assert not anonymous.wait_connected()
    clear_text = connect("dashboard", port=site_broker.ws_port, websockets=True, tls=False)  # ws://
    assert not clear_text.wait_connected(timeout=5)

    device = connect("xray-1")
    assert device.wait_connected()
    assert device.publish("medge/site-a/xray-1/result", b"r1") == 0
    wait_until(lambda: browser_like.received("medge/site-a/xray-1/result") == [b"r1"], 5, "the result over wss")


def stored_on_disk(broker, payload: bytes) -> bool:
    database = broker.workdir / "db" / "mosquitto.db"
    try:
        return payload in database.read_bytes()
    except FileNotFoundError:
        return False


def test_an_acknowledged_result_reaches_disk_at_once_and_survives_kill_9(connect, site_broker):
    """Mosquitto 2.0 sends the PUBACK first and writes its database at the end of the same loop
    iteration (autosave_on_changes), so an acknowledged message is on disk milliseconds later,
    without any shutdown; from then on SIGKILL cannot lose it. (With Mosquitto's periodic
    autosave it would not reach the disk for autosave_interval seconds.)"""
    # A dashboard with a persistent session, offline while the result is published.
    session = dict(client_id="central-dashboard", clean_start=False, session_expiry=3600)
    dashboard = connect("dashboard", **session)
    assert dashboard.wait_connected() and dashboard.subscribe("medge/#") == 1
    dashboard.close()

    device = connect("xray-1")
    assert device.wait_connected()
    payload = b'{"id": "7f3c0c1e", "label": "pneumonia"}'
    assert device.publish("medge/site-a/xray-1/result", payload) == 0  # PUBACK: the broker owns it
    wait_until(lambda: stored_on_disk(site_broker, payload), 1.0, "the acknowledged result in mosquitto.db")
    site_broker.kill()

    site_broker.start()
    back = connect("dashboard", **session)
    assert back.wait_connected()
    wait_until(lambda: back.received("medge/site-a/xray-1/result") == [payload], 10,
               "the acknowledged result after the broker crash")


def test_make_credentials_rejects_names_that_would_break_topics(tmp_path):
    done = subprocess.run(["bash", str(MOSQUITTO_DIR / "make-credentials.sh"), "-o", str(tmp_path), "-d", "ward/7"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "invalid name 'ward/7'" in done.stderr


def test_only_the_fleet_account_may_command_a_device(connect):
    """A device (even about itself), a dashboard: refused on commands/#; the fleet account:
    delivered, retained. Devices still publish every event kind, fleet reports included."""
    xray1 = connect("xray-1")
    xray2 = connect("xray-2")
    fleet_account, dashboard = connect("fleet"), connect("dashboard")
    assert all(c.wait_connected() for c in (xray1, xray2, fleet_account, dashboard))
    assert xray1.subscribe("medge/site-a/xray-1/commands/#") == 1
    assert dashboard.subscribe("medge/#") == 1

    forged = b'{"action": "deploy"}'
    for topic in ("medge/site-a/xray-1/commands/fleet", "medge/site-a/xray-1/commands",
                  "medge/site-a/xray-2/commands/fleet"):
        assert xray1.publish(topic, forged) == NOT_AUTHORIZED, topic
        assert xray2.publish(topic, forged) == NOT_AUTHORIZED, topic
    assert dashboard.publish("medge/site-a/xray-1/commands/fleet", forged) == NOT_AUTHORIZED
    # ... nor the site's target record, which only the fleet account writes.
    assert xray1.publish("medge/site-a/_fleet/target", forged) == NOT_AUTHORIZED
    assert stays_false(lambda: xray1.received("medge/site-a/xray-1/commands/fleet"), 0.5)

    command = b'{"action": "deploy", "signed": true}'
    assert fleet_account.publish("medge/site-a/xray-1/commands/fleet", command, retain=True) == 0
    wait_until(lambda: xray1.received("medge/site-a/xray-1/commands/fleet") == [command], 5, "the fleet command")
    assert fleet_account.publish("medge/site-a/_fleet/target", b'{"target": 1}', retain=True) == 0
    wait_until(lambda: dashboard.received("medge/site-a/_fleet/target") == [b'{"target": 1}'], 5, "the target")

    for kind in ("result", "status", "heartbeat", "error", "fleet", "shadow"):
        assert xray1.publish(f"medge/site-a/xray-1/{kind}", b"{}") == 0, kind
    # One level deeper than a kind is nobody's topic.
    assert xray1.publish("medge/site-a/xray-1/result/extra", b"{}") == NOT_AUTHORIZED

"""The deployment kit end to end: the real edge daemon, configured as docs/deploy.md says
(credentials from make-credentials.sh, MEDGE_MQTT_PASSWORD from the environment file), talks
mqtts with a client certificate to the shipped site broker config, passes its ACL, and speaks
systemd's notify protocol the way medge-edge.service (Type=notify, WatchdogSec=) expects."""
import json
import shutil
import socket

import jsonschema
import pytest

from medge.data import chest_xray_sample_files
from medge.edge.schemas import load_schema
from tests.fixtures.deploy import wait_until


def read_env_file(path) -> dict:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(60)
    yield path, sock
    sock.close()


def receive_until(sock, wanted: str, limit: int = 200) -> list[str]:
    seen = []
    for _ in range(limit):
        message = sock.recv(4096).decode()
        seen.append(message)
        if wanted in message.splitlines():
            return seen
    raise AssertionError(f"{wanted} never arrived: {seen}")


def test_edge_daemon_on_the_site_broker_with_device_credentials(int8_bundle, site_broker, site_credentials,
                                                              connect, edge_daemon, notify_socket, tmp_path):
    dashboard = connect("dashboard")
    assert dashboard.wait_connected() and dashboard.subscribe("medge/#") == 1

    device = site_credentials / "clients" / "xray-1"
    socket_path, sock = notify_socket
    env = read_env_file(device / "edge.env")  # MEDGE_MQTT_PASSWORD, as EnvironmentFile= sets it
    env.update(NOTIFY_SOCKET=str(socket_path), WATCHDOG_USEC="4000000", MEDGE_HEALTH_FILE=str(tmp_path / "alive"))
    watch = tmp_path / "incoming"
    watch.mkdir()
    daemon = edge_daemon(int8_bundle, f"mqtts://localhost:{site_broker.port}", "--username", "xray-1",
                         "--ca-file", str(device / "ca.crt"), "--cert-file", str(device / "client.crt"),
                         "--key-file", str(device / "client.key"), env=env, site="site-a", device="xray-1",
                         watch=watch)

    receive_until(sock, "READY=1")
    receive_until(sock, "WATCHDOG=1")
    assert (tmp_path / "alive").exists()

    xray = next(iter(chest_xray_sample_files()))
    shutil.copy(xray, watch / xray.name)
    topic = "medge/site-a/xray-1/result"
    wait_until(lambda: dashboard.received(topic), 60, f"a result on {topic}\n{daemon.log_text()[-3000:]}")
    wait_until(lambda: dashboard.received("medge/site-a/xray-1/heartbeat"), 30, "a heartbeat")
    result = json.loads(dashboard.received(topic)[0])
    jsonschema.validate(result, load_schema("result"))
    assert (result["site"], result["device"], result["source"]) == ("site-a", "xray-1", "watch")
    assert "diagnostic" in result["disclaimer"].lower()

    assert daemon.stop() == 0
    receive_until(sock, "STOPPING=1")

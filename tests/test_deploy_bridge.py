"""deploy/mosquitto/bridge.conf between two real Mosquitto instances, each on the shipped site
config with its own CA: a site broker (devices) bridged to a central broker (fleet dashboard)."""
import pytest

from tests.fixtures.deploy import Client, SiteBroker, make_credentials, stays_false, wait_until


@pytest.fixture(scope="module")
def central_credentials(tmp_path_factory):
    return make_credentials(tmp_path_factory.mktemp("central-credentials"), "-s", "127.0.0.1",
                            "-u", "dashboard", "-u", "fleet", "-b", "site-a")


@pytest.fixture
def fleet(site_credentials, central_credentials, tmp_path):
    central = SiteBroker(central_credentials, tmp_path / "central").start()

    bridge_dir = central_credentials / "clients" / "bridge-site-a"
    bridge = (bridge_dir / "bridge.conf").read_text()
    assert "address 127.0.0.1:8883\n" in bridge and "/etc/mosquitto/medge/central/" in bridge
    bridge = bridge.replace("address 127.0.0.1:8883\n", f"address 127.0.0.1:{central.port}\n")
    bridge = bridge.replace("/etc/mosquitto/medge/central/", f"{bridge_dir}/")
    site = SiteBroker(site_credentials, tmp_path / "site", conf_d={"medge-bridge.conf": bridge}).start()

    clients = []

    def connect(broker, credentials, name, **options):
        client = Client(credentials, name, broker.port, **options)
        clients.append(client)
        assert client.wait_connected(), f"{name} could not connect"
        return client

    yield {
        "central": central, "site": site,
        "central_client": lambda name, **o: connect(central, central_credentials, name, **o),
        "site_client": lambda name, **o: connect(site, site_credentials, name, **o),
    }
    for client in clients:
        client.close()
    site.stop()
    central.stop()


def wait_for_bridge(device, central_dashboard):
    """The bridge connects asynchronously: publish probes until one reaches the centre."""
    topic = "medge/site-a/xray-1/heartbeat"
    wait_until(lambda: device.publish(topic, b"probe") is not None and bool(central_dashboard.received(topic)),
               20, "the bridge to come up")


def test_site_results_reach_the_central_broker_and_commands_come_back(fleet):
    central_dashboard = fleet["central_client"]("dashboard")
    assert central_dashboard.subscribe("medge/#") == 1
    device = fleet["site_client"]("xray-1")
    assert device.subscribe("medge/site-a/xray-1/commands/#") == 1
    wait_for_bridge(device, central_dashboard)

    assert device.publish("medge/site-a/xray-1/result", b'{"label": "pneumonia"}') == 0
    wait_until(lambda: central_dashboard.received("medge/site-a/xray-1/result") == [b'{"label": "pneumonia"}'],
               10, "the result at the central broker")

    operator = fleet["central_client"]("fleet")
    assert operator.publish("medge/site-a/xray-1/commands/reload", b'{"n": 1}') == 0
    wait_until(lambda: device.received("medge/site-a/xray-1/commands/reload") == [b'{"n": 1}'], 10,
               "the command at the device")
    # Delivered exactly once, and not looped back to the centre as a second copy.
    assert stays_false(lambda: len(device.received("medge/site-a/xray-1/commands/reload")) > 1, 1.0)
    assert len(central_dashboard.received("medge/site-a/xray-1/commands/reload")) == 1


def test_the_central_broker_accepts_only_the_bridged_sites_topics(fleet):
    central_dashboard = fleet["central_client"]("dashboard")
    assert central_dashboard.subscribe("medge/#") == 1
    device = fleet["site_client"]("xray-1")
    wait_for_bridge(device, central_dashboard)

    # A device configured with the wrong site: its own broker accepts it (its device segment
    # is right) but the centre's ACL for bridge-site-a only takes medge/site-a/#.
    assert device.publish("medge/site-b/xray-1/result", b"wrong site") in (0, 16)
    assert device.publish("medge/site-a/xray-1/result", b"right site") == 0
    wait_until(lambda: central_dashboard.received("medge/site-a/xray-1/result") == [b"right site"], 10, "the result")
    assert central_dashboard.received("medge/site-b/xray-1/result") == []


def test_results_published_while_the_centre_is_down_arrive_when_it_returns(fleet):
    central = fleet["central"]
    session = dict(client_id="fleet-dashboard", clean_start=False, session_expiry=3600)
    central_dashboard = fleet["central_client"]("dashboard", **session)
    assert central_dashboard.subscribe("medge/#") == 1
    device = fleet["site_client"]("xray-1")
    wait_for_bridge(device, central_dashboard)
    central_dashboard.close()

    central.stop()
    # The site keeps working: its broker acknowledges results while the WAN/centre is away.
    assert device.publish("medge/site-a/xray-1/result", b"during outage") in (0, 16)
    central.start()

    back = fleet["central_client"]("dashboard", **session)
    wait_until(lambda: back.received("medge/site-a/xray-1/result") == [b"during outage"], 30,
               "the queued result after the central broker came back")

"""`medge dashboard --ha-discovery`: each device appears in Home Assistant as a device with
status, last class and last score entities read from the medge topics."""
import json

import jinja2

from tests.fixtures.broker import Subscriber
from tests.fixtures.dashboard import DashboardProcess, DeviceProcess, result_payload


def render(template: str, payload: dict) -> str:
    # Home Assistant renders value_template with Jinja2 and the decoded JSON as `value_json`.
    return jinja2.Environment().from_string(template).render(value_json=payload).strip()


def test_discovery_configs_describe_each_device_and_read_the_real_payloads(broker, publisher, tmp_path):
    dashboard = DashboardProcess(broker.url, tmp_path / "h.sqlite", extra=["--ha-discovery"]).start()
    device = DeviceProcess(broker.port, "icu", "xr-1")
    try:
        dashboard.wait_for(lambda s: s["devices"])
        # a Home Assistant that connects later still finds the configs: they are retained
        home_assistant = Subscriber(broker.port, "homeassistant/#")
        home_assistant.wait_for(lambda sub: len(sub.messages) == 3, timeout=15, what="3 discovery configs")
        configs = {topic: payload for topic, payload, retained in home_assistant.messages if retained}
        home_assistant.close()
    finally:
        device.kill()
        dashboard.stop()
    assert sorted(configs) == ["homeassistant/binary_sensor/medge_icu_xr-1/status/config",
                               "homeassistant/sensor/medge_icu_xr-1/last_class/config",
                               "homeassistant/sensor/medge_icu_xr-1/last_score/config"]
    status, last_class, last_score = (configs[t] for t in sorted(configs))
    assert len({c["unique_id"] for c in configs.values()}) == 3
    assert all(c["device"]["identifiers"] == ["medge_icu_xr-1"] for c in configs.values())
    assert status["device"]["model"] == "pneumonia-cnn 1.0.0"
    assert status["state_topic"] == "medge/icu/xr-1/status" and status["device_class"] == "connectivity"
    assert last_class["state_topic"] == last_score["state_topic"] == "medge/icu/xr-1/result"

    assert render(status["value_template"], retained_status(broker)) == status["payload_off"]  # the last will
    positive = result_payload("icu", "xr-1", 0.8766)
    assert render(last_class["value_template"], positive) == "pneumonia"
    assert render(last_score["value_template"], positive) == "0.877"
    outside = result_payload("icu", "xr-1", 0, status="not_applicable")
    assert render(last_class["value_template"], outside) == "not applicable"
    assert render(last_score["value_template"], outside) == "None"  # Home Assistant shows `unknown`
    attributes = json.loads(render(last_class["json_attributes_template"], positive))
    assert attributes["positive"] is True and "not for diagnostic use" in attributes["disclaimer"]


def retained_status(broker) -> dict:
    """What the broker holds on the status topic now that the device was killed: its last will."""
    sub = Subscriber(broker.port, "medge/icu/xr-1/status")
    sub.wait_for(lambda s: s.messages, timeout=10, what="the retained status")
    sub.close()
    topic, payload, retained = sub.messages[0]
    assert retained and payload["state"] == "offline"
    return payload

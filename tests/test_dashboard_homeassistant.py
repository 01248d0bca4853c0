"""`medge dashboard --ha-discovery`: each device appears in Home Assistant as a device with
status, last class and last score entities read from the medge topics."""
import json

from medge.edge import payloads
from tests.fixtures.broker import Subscriber
from tests.fixtures.dashboard import DashboardProcess, DeviceProcess, result_payload
from tests.fixtures.dashboard import render_ha_template as render


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


def device_payloads() -> dict[str, dict]:
    """One payload of every kind and case, built by the device's own code (edge/payloads.py)."""
    model = {"name": "pneumonia-cnn", "version": "1.0.0", "sha256": "a" * 64, "format": "tflite-int8"}
    common = {"site": "icu", "device": "xr-1"}

    class Classification:
        label, score, threshold, positive = "pneumonia", 0.91, 0.5, True
        probabilities = {"normal": 0.09, "pneumonia": 0.91}

    result = dict(common, source="watch", input_ref="ab" * 8, model=model,
                  timing_ms={"decode": 1.0, "preprocess": 1.0, "inference": 1.0, "total": 3.0})
    return {
        "online": payloads.status_payload(state="online", model=model, sources=["watch"], **common),
        "shutdown": payloads.status_payload(state="offline", reason="shutdown", model=model, **common),
        "last will": payloads.last_will_payload(payloads.status_payload(state="offline", reason="connection lost",
                                                                        model=model, **common)),
        "classified": payloads.result_payload(classification=Classification(), **result),
        "not applicable": payloads.result_payload(not_applicable_reason="modality CT", modality="CT",
                                                  body_part="CHEST", is_dicom=True, **result),
    }


def test_every_template_renders_for_every_payload_kind():
    from medge.dashboard.homeassistant import discovery_configs

    configs = {topic.split("/")[-2]: config for topic, config in discovery_configs("icu", "xr-1")}
    for config in configs.values():
        assert "object_id" not in config  # deprecated since Home Assistant 2025.10
        assert config["default_entity_id"].split(".")[0] in ("binary_sensor", "sensor")
    assert configs["status"]["default_entity_id"] == "binary_sensor.medge_icu_xr_1_status"
    samples = device_payloads()
    for payload in samples.values():
        kind = "status" if payload["schema"].startswith("medge.status") else "result"
        for config in configs.values():
            if config["state_topic"].endswith("/" + kind):
                for key in ("value_template", "json_attributes_template"):
                    if key in config:
                        render(config[key], payload)  # raises on any missing field
            for availability in config.get("availability", []):
                if kind == "status":
                    render(availability["value_template"], payload)
    status = configs["status"]
    assert [render(status["value_template"], samples[n]) for n in ("online", "shutdown", "last will")] == \
        ["online", "offline", "offline"]
    assert json.loads(render(status["json_attributes_template"], samples["online"]))["reason"] is None
    assert json.loads(render(status["json_attributes_template"], samples["last will"]))["last_will"] is True
    assert render(configs["last_class"]["value_template"], samples["not applicable"]) == "not applicable"
    attributes = json.loads(render(configs["last_class"]["json_attributes_template"], samples["not applicable"]))
    assert attributes == {"positive": False, "decision": None, "reason": "modality CT", "ts": samples["not applicable"]["ts"],
                          "disclaimer": samples["not applicable"]["disclaimer"]}
    assert render(configs["last_score"]["value_template"], samples["classified"]) == "0.91"
    assert render(configs["last_score"]["value_template"], samples["not applicable"]) == "None"

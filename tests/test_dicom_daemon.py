"""The DICOM receiver inside the real daemon (`medge edge run --dicom-port`), a real Mosquitto and
dcmtk's storescu as the scanner: results on MQTT, no patient identifiers anywhere, refusals and
corrupt instances reported without stopping the receiver, and Success meaning "stored"."""
from __future__ import annotations

import json
import subprocess

import pydicom
import pytest

from medge.broker import LocalBroker, free_port, wait_for_port
from medge.edge.pseudonym import Pseudonymizer
from tests.fixtures.dashboard import validated
from tests.fixtures.dicom import bundled_dicom, corrupt_copies, dcmtk_tool, storescu, with_patient_tags
from tests.fixtures.edge import xray_dicom

pytestmark = pytest.mark.timeout(300)


def start_dicom_daemon(edge_daemon, bundle, broker_url: str, *flags: str, state_dir=None):
    port = free_port()
    daemon = edge_daemon(bundle, broker_url, "--dicom-port", str(port), *flags, state_dir=state_dir)
    if not wait_for_port(port, timeout=90):
        raise AssertionError(f"the daemon's DICOM receiver did not start:\n{daemon.log_text()[-3000:]}")
    return daemon, port


def uid_of(path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_scanner_results_reach_mqtt_without_patient_identifiers(edge_daemon, int8_bundle, broker, subscriber,
                                                                tmp_path):
    state = tmp_path / "state"
    # CT, US and NM sent to a chest model: the OOD guard refuses them (tests/test_edge_ood.py); this test is
    # about what reaches MQTT from a scanner, so it classifies them regardless.
    daemon, port = start_dicom_daemon(edge_daemon, int8_bundle, broker.url, "--frames", "max", "--ood", "off",
                                      state_dir=state)
    tagged = tmp_path / "ct_with_patient.dcm"
    phi = with_patient_tags(bundled_dicom("CT_small.dcm"), tagged)
    multi = bundled_dicom("examples_ybr_color.dcm")  # 30-frame ultrasound, JPEG baseline
    j2k = bundled_dicom("JPEG2000.dcm")  # NM whole body, JPEG 2000
    for path in (tagged, multi, j2k):
        reply = storescu(port, path)
        assert reply.statuses == ["Success"], reply.output + daemon.log_text()[-2000:]
    subscriber.wait_for(lambda s: len(s.payloads("result")) >= 3, 60, "three results")

    key = (state / "pseudonym.key").read_bytes()
    by_ref = {payload["input_ref"]: payload for payload in subscriber.payloads("result")}
    results = {name: by_ref[Pseudonymizer(key).ref(uid_of(path))]  # keyed hash of the SOP Instance UID
               for name, path in (("ct", tagged), ("us", multi), ("nm", j2k))}
    for payload in results.values():
        validated("result", payload)
        assert payload["source"] == "dicom" and payload["status"] == "classified"
        assert payload["class"] in ("normal", "pneumonia") and 0.0 <= payload["score"] <= 1.0
    assert results["ct"]["dicom"] == {"modality": "CT", "body_part": None}
    assert results["nm"]["dicom"] == {"modality": "NM", "body_part": "WHOLE BODY"}
    assert results["us"]["frame"]["policy"] == "max" and results["us"]["frame"]["count"] == 30
    assert "frame" not in results["ct"]

    # Not in results, nor in any other message the device sent (status, heartbeat, events).
    subscriber.wait_for(lambda s: s.payloads("heartbeat"), 10, "a heartbeat")
    everything = json.dumps([payload for _, payload, _ in subscriber.messages])
    forbidden = list(phi.values()) + [uid_of(path) for path in (tagged, multi, j2k)]
    forbidden += ["Doe", "19610722"]
    for value in forbidden:
        assert value not in everything, f"{value!r} was published"
    log = daemon.log_text()  # the device's journal is shipped off the device too
    for value in phi.values():
        assert value not in log, f"{value!r} was logged"
    # A heartbeat sent after the three stores (the first one may predate them).
    subscriber.wait_for(lambda s: s.payloads("heartbeat")[-1]["sources"]["dicom"]["stored"] == 3, 10,
                        "a heartbeat counting the three stored instances")
    health = subscriber.payloads("heartbeat")[-1]["sources"]["dicom"]
    assert health["listening"] and health["bind"] == "0.0.0.0" and health["max_associations"] == 10


def test_refused_callers_and_broken_instances_are_reported_and_the_receiver_keeps_going(
        edge_daemon, int8_bundle, broker, subscriber, tmp_path):
    daemon, port = start_dicom_daemon(edge_daemon, int8_bundle, broker.url,
                                      "--allowed-caller", "STORESCU", "--allowed-caller", "USCART")
    refused = storescu(port, bundled_dicom("CT_small.dcm"), calling="UNKNOWN")
    assert refused.refused and refused.statuses == [], refused.output

    corrupt = corrupt_copies(tmp_path / "corrupt")
    assert storescu(port, corrupt["truncated"]).statuses == ["Error: CannotUnderstand"]
    assert storescu(port, bundled_dicom("JPEG-lossy.dcm")).statuses == ["Error: CannotUnderstand"]
    assert storescu(port, corrupt["garbled"], calling="USCART").statuses == ["Error: CannotUnderstand"]
    good = storescu(port, bundled_dicom("MR_small.dcm"), calling="USCART")
    assert good.statuses == ["Success"], good.output

    subscriber.wait_for(lambda s: len(s.payloads("error")) >= 4 and s.payloads("result"), 60,
                        "three rejections, a refusal and a result")
    events = [validated("error", payload) for payload in subscriber.payloads("error")]
    rejected = [event for event in events if event["kind"] == "rejected_input"]
    assert len(rejected) == 3 and all(event["source"] == "dicom" and event["input_ref"] for event in rejected)
    assert any("less than expected" in event["message"] for event in rejected)
    assert any("JPEG Extended" in event["message"] for event in rejected)
    [refusal] = [event for event in events if event["kind"] == "association_refused"]
    assert refusal["level"] == "warning" and "UNKNOWN" in refusal["message"]
    [result] = subscriber.payloads("result")
    assert validated("result", result)["dicom"]["modality"] == "MR"
    assert daemon.running


def test_success_is_only_answered_once_the_result_is_stored(edge_daemon, int8_bundle, tmp_path):
    """No broker at all while the scanner sends: Success still comes (the outbox has the result),
    the device then loses power, and the result is delivered after it comes back."""
    broker = LocalBroker(kind="mosquitto", workdir=tmp_path / "broker")  # not started yet
    state = tmp_path / "state"
    daemon, port = start_dicom_daemon(edge_daemon, int8_bundle, broker.url, state_dir=state)
    path = bundled_dicom("CT_small.dcm")
    assert storescu(port, path).statuses == ["Success"]
    daemon.kill()  # SIGKILL: nothing is flushed on the way out

    from tests.fixtures.broker import Subscriber

    with broker:
        subscriber = Subscriber(broker.port)
        try:
            edge_daemon(int8_bundle, broker.url, state_dir=state)  # same device, watch folder only now
            subscriber.wait_for(lambda s: s.payloads("result"), 60, "the stored result")
            [result] = subscriber.payloads("result")
            key = (state / "pseudonym.key").read_bytes()
            assert validated("result", result)["input_ref"] == Pseudonymizer(key).ref(uid_of(path))
        finally:
            subscriber.close()


@pytest.fixture(scope="module")
def chest_xray_bundle(trained_run, tmp_path_factory):
    """The fixture model, converted with a declared scope: chest radiographs (CR, DX) only."""
    from tests.fixtures.bundles import convert_run

    return convert_run(trained_run, tmp_path_factory.mktemp("scoped") / "chest", "tflite-int8",
                       modalities=("CR", "DX"), body_parts=("CHEST",))


def test_instances_outside_the_declared_scope_are_not_applicable(edge_daemon, chest_xray_bundle, broker,
                                                                 subscriber, tmp_path):
    daemon, port = start_dicom_daemon(edge_daemon, chest_xray_bundle, broker.url)
    chest = xray_dicom(tmp_path / "chest_cr.dcm", modality="CR")  # a real chest X-ray as a CR instance
    # The same film digitised into a JPEG-compressed secondary capture by dcmtk's img2dcm.
    from medge.data import chest_xray_sample_files

    digitised = tmp_path / "chest_dx_jpeg.dcm"
    subprocess.run([dcmtk_tool("img2dcm"), "-k", "Modality=DX", "-k", "BodyPartExamined=CHEST",
                    str(chest_xray_sample_files()[1]), str(digitised)], check=True, capture_output=True)
    # JPEG-lossy.dcm is an NM instance in 12-bit JPEG Extended, which cannot be decoded here: its
    # header puts it outside the scope, so the scanner gets Success, not a failure it retries forever.
    for path in (chest, digitised, bundled_dicom("CT_small.dcm"), bundled_dicom("examples_rgb_color.dcm"),
                 bundled_dicom("JPEG-lossy.dcm")):
        reply = storescu(port, path)
        assert reply.statuses == ["Success"], reply.output  # not applicable is still a stored result
    subscriber.wait_for(lambda s: len(s.payloads("result")) >= 5, 60, "five results")
    by_modality = {validated("result", p)["dicom"]["modality"]: p for p in subscriber.payloads("result")}
    assert by_modality["CR"]["status"] == "classified" and by_modality["DX"]["status"] == "classified"
    assert subscriber.payloads("error") == []
    for modality in ("CT", "US", "NM"):
        assert by_modality[modality]["status"] == "not_applicable"
        assert modality in by_modality[modality]["reason"] and "class" not in by_modality[modality]


def test_a_failure_tells_the_scanner_why_first_and_the_event_names_class_and_caller(edge_daemon, int8_bundle, broker,
                                                                                   subscriber, tmp_path):
    from pynetdicom import AE

    daemon, port = start_dicom_daemon(edge_daemon, int8_bundle, broker.url)
    truncated = pydicom.dcmread(corrupt_copies(tmp_path / "corrupt")["truncated"])
    scanner = AE(ae_title="CT_ROOM_4")
    scanner.add_requested_context(truncated.SOPClassUID, truncated.file_meta.TransferSyntaxUID)
    association = scanner.associate("127.0.0.1", port, ae_title="MEDGE")
    assert association.is_established, daemon.log_text()[-2000:]
    try:
        status = association.send_c_store(truncated)
    finally:
        association.release()
    assert status.Status == 0xC000
    comment = str(status.ErrorComment)
    assert not comment.startswith(("input", "DICOM")), comment  # the 64 characters go to the reason
    subscriber.wait_for(lambda s: s.payloads("error"), 30, "the rejection event")
    [event] = [validated("error", p) for p in subscriber.payloads("error")]
    assert event["kind"] == "rejected_input" and event["source"] == "dicom"
    assert event["message"].startswith("DICOM CT Image Storage from CT_ROOM_4: "), event["message"]
    assert event["message"].endswith(comment) or comment in event["message"]
    assert str(truncated.SOPInstanceUID) not in event["message"]

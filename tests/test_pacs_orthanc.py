"""Results back into the PACS, end to end with real components: Orthanc (the PACS) sends a CR
with patient tags to the real daemon (`medge edge run --dicom-port --pacs`) by C-STORE, the
daemon classifies it with the real int8 bundle, and its SR and SC appear in the same study in
Orthanc, readable by dcmtk's dsrdump. Orthanc stopped and restarted mid-stream (and the daemon
killed meanwhile) still gives every object exactly once. No patient identifier on MQTT or in the log."""
from __future__ import annotations

import json
import re
import subprocess

import pydicom
import pytest

from medge.broker import free_port, wait_for_port
from tests.fixtures.broker import wait_until
from tests.fixtures.dashboard import validated
from tests.fixtures.dicom import CR_IMAGE, dcmtk_tool, storescu, write_xray_dicom
from tests.fixtures.edge import PHI, small_xray

pytestmark = pytest.mark.timeout(420)

FAST_RETRY = {"MEDGE_PACS_RETRY_MIN_S": "0.2", "MEDGE_PACS_RETRY_MAX_S": "1"}


def patient(index: int) -> dict:
    return {**PHI, "PatientName": f"Doe^Jane^{chr(65 + index)}", "PatientID": f"MRN-99812{index:03d}",
            "AccessionNumber": f"ACC-55443{index:02d}"}


def start_daemon(edge_daemon, bundle, broker_url, orthanc, port, state_dir):
    daemon = edge_daemon(bundle, broker_url, "--dicom-port", str(port), "--pacs", orthanc.address,
                         env=FAST_RETRY, state_dir=state_dir)
    if not wait_for_port(port, timeout=90):
        raise AssertionError(f"the daemon's DICOM receiver did not start:\n{daemon.log_text()[-3000:]}")
    return daemon


def medge_objects(orthanc, study_uid: str) -> dict[str, list[dict]]:
    by_modality: dict[str, list[dict]] = {}
    for instance in orthanc.instances_of_study(study_uid):
        by_modality.setdefault(instance["Modality"], []).append(instance)
    return by_modality


def test_orthanc_gets_sr_and_sc_in_the_source_study_exactly_once_across_an_outage(
        edge_daemon, int8_bundle, broker, subscriber, orthanc, tmp_path):
    state = tmp_path / "state"
    port = free_port()
    daemon = start_daemon(edge_daemon, int8_bundle, broker.url, orthanc, port, state)
    orthanc.register_modality("medge", "MEDGE", port)

    crs = [write_xray_dicom(tmp_path / f"cr{i}.dcm", small_xray(i, 256), modality="CR", sop_class=CR_IMAGE,
                            tags=patient(i)) for i in range(4)]
    sources = [pydicom.dcmread(path) for path in crs]
    ids = [orthanc.upload(path)["ID"] for path in crs]

    # 1. The PACS sends the CR to medge (an auto-routing rule or a user's "send to"), as Orthanc does.
    orthanc.post("/modalities/medge/store", {"Resources": [ids[0]], "Synchronous": True})
    subscriber.wait_for(lambda s: s.payloads("result"), 60, "the result on MQTT")
    wait_until(lambda: set(medge_objects(orthanc, sources[0].StudyInstanceUID)) == {"CR", "SR", "OT"}, 60,
               f"the SR and SC in the study\n{daemon.log_text()[-3000:]}")
    objects = medge_objects(orthanc, sources[0].StudyInstanceUID)
    assert set(objects) == {"CR", "SR", "OT"}, f"{objects}\n{daemon.log_text()[-3000:]}"
    sr_file = tmp_path / "from-orthanc-sr.dcm"
    sr_file.write_bytes(orthanc.file(objects["SR"][0]["id"]))
    dump = subprocess.run([dcmtk_tool("dsrdump"), "+Pl", str(sr_file)], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    result = subscriber.payloads("result")[0]
    score = re.search(r'NUM:\(,,"Calibrated score"\)="([0-9.e-]+)"', dump.stdout)
    threshold = re.search(r'NUM:\(,,"Operating threshold"\)="([0-9.e-]+)"', dump.stdout)
    assert score and abs(float(score[1]) - result["score"]) < 1e-6, dump.stdout
    assert threshold and abs(float(threshold[1]) - result["threshold"]) < 1e-6
    decision = "Positive" if result["positive"] else "Negative"
    assert '"Model decision")=' in dump.stdout and f'SCT,"{decision}")' in dump.stdout
    assert f"sha256={result['model']['sha256']}" in dump.stdout
    assert "not for diagnostic use" in dump.stdout.lower()
    assert objects["OT"][0]["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.7"
    assert objects["SR"][0]["PatientID"] == objects["OT"][0]["PatientID"] == sources[0].PatientID

    # 2. The PACS goes down; the scanner keeps sending to medge, which answers once the objects are queued.
    orthanc.stop()
    reply = storescu(port, crs[1], crs[2], calling="XRAYCART")
    assert reply.statuses == ["Success", "Success"], reply.output
    subscriber.wait_for(lambda s: any(p.get("counters", {}).get("pacs_queued") == 4 for p in s.payloads("heartbeat")),
                        60, "4 objects queued in the heartbeat")
    subscriber.wait_for(lambda s: any(p["kind"] == "pacs_down" for p in s.payloads("error")), 30, "pacs_down")

    # 3. The daemon dies during the outage; restarted, it still holds them. The cart resends one
    #    instance it never saw confirmed, and sends a new one.
    daemon.kill()
    daemon = start_daemon(edge_daemon, int8_bundle, broker.url, orthanc, port, state)
    reply = storescu(port, crs[2], crs[3], calling="XRAYCART")
    assert reply.statuses == ["Success", "Success"], reply.output
    subscriber.wait_for(lambda s: any(p.get("counters", {}).get("pacs_queued") == 6 for p in s.payloads("heartbeat")),
                        60, "6 objects queued after the restart")

    # 4. The PACS is back: every object arrives, exactly once.
    orthanc.start()
    subscriber.wait_for(lambda s: any(p["kind"] == "pacs_up" for p in s.payloads("error")), 90, "pacs_up")
    for source in sources:
        objects = medge_objects(orthanc, source.StudyInstanceUID)
        assert {kind: len(found) for kind, found in objects.items()} == {"CR": 1, "SR": 1, "OT": 1}, objects
    assert orthanc.instance_count() == 12
    subscriber.wait_for(lambda s: s.payloads("heartbeat")[-1]["counters"].get("pacs_queued") == 0, 30, "an empty queue")
    daemon.stop()

    # 5. What went over MQTT and into the log: no patient identifier, no UID.
    for payload in subscriber.payloads("error"):
        validated("error", payload)
    beat = validated("heartbeat", subscriber.payloads("heartbeat")[-1])
    assert beat["counters"]["pacs_delivered"] >= 2 and beat["counters"]["pacs_refused"] == 0
    everything = json.dumps([payload for _, payload, _ in subscriber.messages])
    log = "\n".join(path.read_text(errors="replace") for path in tmp_path.glob("edge-*.log"))
    for source in sources:
        for keyword in ("PatientName", "PatientID", "AccessionNumber", "PatientBirthDate", "OtherPatientIDs",
                        "InstitutionName", "ReferringPhysicianName", "StudyInstanceUID", "SOPInstanceUID"):
            value = str(source.get(keyword))
            assert value not in everything, f"{keyword} was published"
            assert value not in log, f"{keyword} was logged"
    assert "Doe" not in everything and "Doe" not in log


def test_the_daemon_delivers_by_stow_rs_to_orthanc_dicomweb(edge_daemon, int8_bundle, broker, subscriber, orthanc,
                                                            tmp_path):
    port = free_port()
    daemon = edge_daemon(int8_bundle, broker.url, "--dicom-port", str(port), "--stow", orthanc.dicomweb_url,
                         env=FAST_RETRY, state_dir=tmp_path / "state")
    assert wait_for_port(port, timeout=90), daemon.log_text()[-3000:]
    cr = write_xray_dicom(tmp_path / "cr.dcm", small_xray(2, 256), modality="CR", sop_class=CR_IMAGE, tags=patient(7))
    orthanc.upload(cr)
    reply = storescu(port, cr, calling="XRAYCART")
    assert reply.statuses == ["Success"], reply.output
    study = str(pydicom.dcmread(cr, stop_before_pixels=True).StudyInstanceUID)
    wait_until(lambda: set(medge_objects(orthanc, study)) == {"CR", "SR", "OT"}, 60, "the SR and SC by STOW-RS")
    subscriber.wait_for(lambda s: any(p["counters"].get("pacs_delivered") == 2 for p in s.payloads("heartbeat")),
                        30, "the delivery counted in the heartbeat")

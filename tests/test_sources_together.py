"""ONE daemon process running all three sources at once (`--watch`, `--dicom-port`, `--camera`)
against a real Mosquitto: results from each reach a subscriber with schema-valid payloads, and a
camera that dies mid-way is reported, reconnected later, and never stops the other sources."""
from __future__ import annotations

import json

import pytest

from medge.broker import free_port, wait_for_port
from tests.fixtures.dashboard import validated
from tests.fixtures.dicom import bundled_dicom, storescu
from tests.fixtures.edge import write_atomically, xray_files
from tests.fixtures.video import MjpegCamera

pytestmark = pytest.mark.timeout(300)


def results_from(subscriber, source: str) -> list[dict]:
    return [payload for payload in subscriber.payloads("result") if payload["source"] == source]


def events_of(subscriber, kind: str) -> list[dict]:
    return [payload for payload in subscriber.payloads("error") if payload["kind"] == kind]


def test_watch_dicom_and_camera_in_one_daemon(edge_daemon, int8_bundle, broker, subscriber, tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    ip_camera = MjpegCamera().start()
    dicom_port = free_port()
    daemon = edge_daemon(int8_bundle, broker.url, "--dicom-port", str(dicom_port),
                         "--camera", ip_camera.url, "--fps", "1", watch=incoming)
    try:
        assert wait_for_port(dicom_port, timeout=90), daemon.log_text()[-3000:]
        subscriber.wait_for(lambda s: any(p["state"] == "online" for p in s.payloads("status")), 60, "online")
        [online] = [p for p in subscriber.payloads("status") if p["state"] == "online"]
        assert sorted(validated("status", online)["sources"]) == ["camera", "dicom", "watch"]

        # All three at once: a scanner export, a scanner push, the camera's live picture.
        export = xray_files()[0]
        write_atomically(incoming / "export_0001.jpeg", export.read_bytes())
        assert storescu(dicom_port, bundled_dicom("CT_small.dcm")).statuses == ["Success"]
        subscriber.wait_for(lambda s: results_from(s, "watch") and results_from(s, "dicom")
                            and len(results_from(s, "camera")) >= 2, 60, "results from all three sources")

        # The camera dies. The daemon reports it and goes on with the other two.
        ip_camera.kill()
        subscriber.wait_for(lambda s: events_of(s, "source_down"), 30, "the camera drop to be reported")
        camera_results_at_drop = len(results_from(subscriber, "camera"))
        write_atomically(incoming / "export_0002.jpeg", xray_files()[1].read_bytes())
        assert storescu(dicom_port, bundled_dicom("MR_small.dcm")).statuses == ["Success"]
        subscriber.wait_for(lambda s: len(results_from(s, "watch")) >= 2 and len(results_from(s, "dicom")) >= 2,
                            60, "watch and DICOM results after the camera died")
        subscriber.wait_for(lambda s: s.payloads("heartbeat")
                            and s.payloads("heartbeat")[-1]["sources"]["camera"]["state"] == "down", 15,
                            "a heartbeat showing the camera down")
        heartbeat = validated("heartbeat", subscriber.payloads("heartbeat")[-1])
        assert heartbeat["sources"]["dicom"]["listening"] and heartbeat["sources"]["dicom"]["stored"] == 2
        assert heartbeat["sources"]["camera"]["disconnects"] == 1

        # The camera comes back on the same address: reconnected without restarting anything.
        ip_camera = MjpegCamera(ip_camera.port).start()
        subscriber.wait_for(lambda s: events_of(s, "source_up"), 60, "the camera to reconnect")
        subscriber.wait_for(lambda s: len(results_from(s, "camera")) >= camera_results_at_drop + 1, 30,
                            "camera results after the reconnect")
        assert daemon.running
        # A clean shutdown with a camera, a DICOM server and a folder running.
        assert daemon.stop() == 0, daemon.log_text()[-3000:]
    finally:
        ip_camera.kill()

    for payload in subscriber.payloads("result"):
        validated("result", payload)
        if payload["source"] == "dicom":
            # The scanner pushed a CT and an MR slice to a chest X-ray model: both refused by the
            # OOD guard (tests/test_edge_ood.py covers the guard itself).
            assert payload["status"] == "not_applicable" and payload["reason"] == "out_of_distribution", payload
        else:
            assert payload["status"] == "classified" and payload["class"] in ("normal", "pneumonia")
    for payload in subscriber.payloads("error"):
        validated("error", payload)
    [down] = events_of(subscriber, "source_down")
    assert down["level"] == "error" and "stream dropped" in down["message"]
    assert events_of(subscriber, "source_up")[0]["level"] == "warning"
    assert all("dicom" not in p for p in results_from(subscriber, "camera") + results_from(subscriber, "watch"))
    assert {p["dicom"]["modality"] for p in results_from(subscriber, "dicom")} == {"CT", "MR"}
    published = json.dumps([payload for _, payload, _ in subscriber.messages])
    assert "export_0001" not in published and "CompressedSamples" not in published


def test_video_that_ends_leaves_the_other_sources_running(edge_daemon, int8_bundle, broker, subscriber, tmp_path):
    from tests.fixtures.video import write_video

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    # Seconds of a recorded ward camera: X-ray, X-ray, dark, X-ray, the same frozen, blurred, X-ray.
    video = write_video(tmp_path / "ward.avi", ["xray0", "xray1", "black", "xray2", "xray2", "blurred0", "xray1"])
    dicom_port = free_port()
    daemon = edge_daemon(int8_bundle, broker.url, "--camera", str(video), "--fps", "1",
                         "--dicom-port", str(dicom_port), watch=incoming)
    subscriber.wait_for(lambda s: events_of(s, "source_ended"), 90, "the end of the video")
    subscriber.wait_for(lambda s: len(results_from(s, "camera")) == 4, 30, "the four usable frames' results")
    [ended] = events_of(subscriber, "source_ended")
    assert validated("error", ended)["level"] == "warning" and "28 frames" in ended["message"]

    # The heartbeat reports what the quality check skipped.
    subscriber.wait_for(lambda s: s.payloads("heartbeat")
                        and s.payloads("heartbeat")[-1]["sources"]["camera"]["state"] == "ended", 15,
                        "a heartbeat after the end")
    camera = validated("heartbeat", subscriber.payloads("heartbeat")[-1])["sources"]["camera"]
    assert (camera["skipped_black"], camera["skipped_frozen"], camera["skipped_blurred"]) == (1, 1, 1)
    assert camera["frames_classified"] == 4

    write_atomically(incoming / "after_the_video.jpeg", xray_files()[2].read_bytes())
    assert wait_for_port(dicom_port, timeout=30)
    assert storescu(dicom_port, bundled_dicom("CT_small.dcm")).statuses == ["Success"]
    subscriber.wait_for(lambda s: results_from(s, "watch") and results_from(s, "dicom"), 60,
                        "folder and DICOM results after the video ended")
    for payload in subscriber.payloads("result"):
        validated("result", payload)
    assert len({p["input_ref"] for p in results_from(subscriber, "camera")}) == 4
    assert daemon.running and daemon.stop() == 0


def test_a_deleted_watch_folder_is_reported_and_recovered_when_it_comes_back(edge_daemon, int8_bundle, broker,
                                                                             subscriber, tmp_path):
    import shutil

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    daemon = edge_daemon(int8_bundle, broker.url, watch=incoming)
    subscriber.wait_for(lambda s: any(p["state"] == "online" for p in s.payloads("status")), 60, "online")

    def watch_state(s):
        beats = s.payloads("heartbeat")
        return beats[-1]["sources"]["watch"]["state"] if beats else None

    # This daemon's own heartbeat, not a retained status: the folder must be watched before it goes
    # (deleted before the daemon starts, the daemon would simply create it).
    subscriber.wait_for(lambda s: watch_state(s) == "watching", 60, "a heartbeat with the folder watched")
    shutil.rmtree(incoming)  # e.g. an unmounted share, or someone cleaning up
    subscriber.wait_for(lambda s: events_of(s, "source_down"), 30, "the folder loss to be reported")
    [down] = events_of(subscriber, "source_down")
    assert validated("error", down)["level"] == "error" and down["source"] == "watch"
    assert "cannot be read" in down["message"]
    subscriber.wait_for(lambda s: watch_state(s) == "down", 15, "a heartbeat with the watch folder down")
    assert validated("heartbeat", subscriber.payloads("heartbeat")[-1])["sources"]["watch"]["last_error"]
    assert daemon.running

    incoming.mkdir()
    subscriber.wait_for(lambda s: events_of(s, "source_up"), 30, "the folder to be back")
    subscriber.wait_for(lambda s: watch_state(s) == "watching", 15, "a heartbeat with the folder watched again")
    write_atomically(incoming / "after.jpeg", xray_files()[0].read_bytes())
    subscriber.wait_for(lambda s: results_from(s, "watch"), 60, "a result from the folder that came back")
    assert len(events_of(subscriber, "source_down")) == 1  # once per outage, not once per poll
    assert daemon.stop() == 0

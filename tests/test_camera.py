"""The camera source on its own: real MJPG video files written with OpenCV from the bundled
chest X-rays, and a real HTTP MJPEG camera in another process that the test kills and restarts.

The daemon is played by a worker thread that loads each submitted frame and answers `done`
(after `delay` seconds, to play a busy device)."""
from __future__ import annotations

import queue
import threading
import time

import cv2
import numpy as np
import pytest

from medge.broker import free_port
from medge.edge.errors import ConfigError
from medge.edge.frame_quality import FrameQuality
from medge.edge.sources.base import InputItem, Outcome
from medge.edge.sources.camera import CameraSource, redact
from tests.fixtures.broker import wait_until
from tests.fixtures.video import MjpegCamera, scene, truncate, write_video


class FrameWorker:
    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.frames: list[tuple[InputItem, object]] = []
        self._items: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, daemon=True).start()

    def submit(self, item: InputItem) -> None:
        self._items.put(item)

    def _run(self):
        while True:
            item = self._items.get()
            decoded = item.load()
            time.sleep(self.delay)
            self.frames.append((item, decoded))
            item.done(Outcome(ok=True))


@pytest.fixture
def camera():
    started = []

    def start(src, worker=None, **options):
        worker = worker or FrameWorker()
        events = []
        source = CameraSource(src, on_event=lambda *event: events.append(event), **options)
        source.start(worker.submit)
        started.append(source)
        return source, worker, events

    yield start
    for source in started:
        source.stop()


def rgb(kind: str) -> np.ndarray:
    return cv2.cvtColor(scene(kind), cv2.COLOR_BGR2RGB)


def test_video_file_is_sampled_at_fps_and_unusable_frames_are_skipped(camera, tmp_path):
    # One scene per second of video: the camera sees an X-ray, another, goes dark, a third X-ray
    # that then freezes for a second, a blurred view, and an X-ray again.
    seconds = ["xray0", "xray1", "black", "xray2", "xray2", "blurred0", "xray1"]
    video = write_video(tmp_path / "ward.avi", seconds, video_fps=4)
    source, worker, events = camera(str(video), fps=1.0)
    wait_until(lambda: source.health()["state"] == "ended", 30, "the end of the video")
    health = source.health()
    assert health["frames_read"] == 28 and health["frames_sampled"] == 7
    assert (health["skipped_black"], health["skipped_frozen"], health["skipped_blurred"]) == (1, 1, 1)
    assert health["frames_skipped"] == 3 and health["frames_classified"] == 4
    assert [item.source for item, _ in worker.frames] == ["camera"] * 4
    assert [decoded.info["frame_index"] for _, decoded in worker.frames] == [0, 4, 12, 24]
    for (_, decoded), kind in zip(worker.frames, ["xray0", "xray1", "xray2", "xray1"]):
        # The classified frame is the X-ray on screen at that second (up to MJPG compression).
        assert decoded.pixels.shape == (480, 640, 3) and decoded.pixels.dtype == np.uint8
        assert np.abs(decoded.pixels.astype(float) - rgb(kind)).mean() < 4.0
    assert len({item.ref for item, _ in worker.frames}) == 4  # one reference per frame
    assert events == [("warning", "source_ended", f"camera {video}: video file ended after 28 frames")]


def test_region_of_interest_is_what_gets_classified(camera, tmp_path):
    video = write_video(tmp_path / "roi.avi", ["xray0", "xray1"], video_fps=2)
    source, worker, _ = camera(str(video), fps=1.0, roi=[100, 50, 320, 240])
    wait_until(lambda: source.health()["state"] == "ended", 30, "the end of the video")
    assert len(worker.frames) == 2
    for (_, decoded), kind in zip(worker.frames, ["xray0", "xray1"]):
        assert decoded.pixels.shape == (240, 320, 3)
        assert np.abs(decoded.pixels.astype(float) - rgb(kind)[50:290, 100:420]).mean() < 4.0


def test_roi_outside_the_frame_is_reported_once(camera, tmp_path):
    video = write_video(tmp_path / "roi.avi", ["xray0", "xray1", "xray2"], video_fps=2)
    source, worker, events = camera(str(video), fps=1.0, roi=[2000, 2000, 100, 100])
    wait_until(lambda: source.health()["state"] == "ended", 30, "the end of the video")
    assert worker.frames == [] and source.health()["skipped_roi"] == 3
    roi_events = [event for event in events if event[1] == "camera_roi"]
    assert len(roi_events) == 1 and roi_events[0][0] == "error" and "640x480" in roi_events[0][2]


def test_recording_that_breaks_off_mid_way_is_an_error(camera, tmp_path):
    video = write_video(tmp_path / "full.avi", ["xray0", "xray1", "xray2", "xray0", "xray1", "xray2"], video_fps=4)
    broken = truncate(video, tmp_path / "broken.avi", keep=0.5)
    source, worker, events = camera(str(broken), fps=1.0)
    wait_until(lambda: source.health()["state"] == "failed", 30, "the broken recording to be reported")
    health = source.health()
    assert 0 < health["frames_read"] < 24
    assert len(worker.frames) >= 2  # what was readable before the break was classified
    [(level, kind, message)] = events
    assert (level, kind) == ("error", "source_down")
    assert f"broke off at frame {health['frames_read']} of 24" in message


def test_live_stream_that_drops_is_reported_and_reconnected(camera):
    ip_camera = MjpegCamera().start()
    try:
        source, worker, events = camera(ip_camera.url, fps=2.0, reconnect_min_s=0.5, reconnect_max_s=2.0)
        wait_until(lambda: len(worker.frames) >= 2, 20, "frames from the live stream")
        assert source.health()["connected"]

        ip_camera.kill()  # the camera loses power
        wait_until(lambda: any(kind == "source_down" for _, kind, _ in events), 20, "the drop to be reported")
        wait_until(lambda: source.health()["reconnect_attempts"] >= 1, 20, "reconnect attempts")
        health = source.health()
        assert health["state"] == "down" and not health["connected"] and health["disconnects"] == 1
        classified_while_down = len(worker.frames)

        ip_camera = MjpegCamera(ip_camera.port).start()  # back on the same address
        wait_until(lambda: any(kind == "source_up" for _, kind, _ in events), 30, "the reconnect to be reported")
        wait_until(lambda: len(worker.frames) >= classified_while_down + 2, 20, "frames after the reconnect")
        assert source.health()["connected"]
        down = [event for event in events if event[1] == "source_down"]
        assert len(down) == 1 and down[0][0] == "error" and "stream dropped" in down[0][2]
        # Each live frame has its own reference, also across the reconnect.
        refs = [item.ref for item, _ in worker.frames]
        assert len(set(refs)) == len(refs)
    finally:
        ip_camera.kill()


def test_busy_worker_drops_live_frames_instead_of_queueing_stale_ones(camera, mjpeg_camera):
    source, worker, _ = camera(mjpeg_camera.url, worker=FrameWorker(delay=1.5), fps=5.0, max_in_flight=1)
    wait_until(lambda: source.health()["dropped_busy"] >= 3, 20, "frames dropped while busy")
    assert source.health()["in_flight"] <= 1


def test_unreachable_stream_keeps_retrying_and_stops_promptly(camera):
    source, _, events = camera(f"http://127.0.0.1:{free_port()}/stream.mjpg", fps=1.0,
                               reconnect_min_s=0.2, reconnect_max_s=0.4)
    wait_until(lambda: source.health()["reconnect_attempts"] >= 3, 30, "reconnect attempts")
    assert source.health()["state"] == "down"
    assert [kind for _, kind, _ in events] == ["source_down"]  # one event per outage, not per attempt
    started = time.monotonic()
    source.stop()
    assert time.monotonic() - started < 10


def test_frame_quality_on_real_images():
    quality = FrameQuality()
    assert quality.check(rgb("xray0")) is None
    assert quality.check(rgb("xray0")) == "frozen"
    assert quality.check(rgb("black")) == "black"
    assert quality.check(rgb("blurred1")) == "blurred"
    assert quality.check(rgb("xray2")) is None
    noisy = np.clip(rgb("xray2").astype(np.int16) + np.random.default_rng(0).integers(-6, 7, (480, 640, 3)),
                    0, 255).astype(np.uint8)
    assert quality.check(noisy) is None  # a live sensor's noise is not a frozen stream


def test_configuration_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="camera.src"):
        CameraSource(str(tmp_path / "missing.avi"))
    with pytest.raises(ConfigError, match="camera.fps"):
        CameraSource("0", fps=0)
    with pytest.raises(ConfigError, match="camera.roi"):
        CameraSource("0", roi=[0, 0, -5, 10])
    with pytest.raises(ConfigError, match="camera.roi"):
        CameraSource("0", roi=[0, 0, 10])


def test_stream_passwords_never_reach_events_or_health():
    assert redact("rtsp://admin:s3cret@10.0.0.7:554/live") == "rtsp://admin:***@10.0.0.7:554/live"
    assert redact("http://10.0.0.7/stream.mjpg") == "http://10.0.0.7/stream.mjpg"
    source = CameraSource("rtsp://admin:s3cret@10.0.0.7:554/live")
    assert "s3cret" not in str(source.health())

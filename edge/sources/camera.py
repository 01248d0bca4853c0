"""Camera and video source: an OpenCV `VideoCapture` (device index, RTSP/HTTP URL or video file)
sampled at `fps`, cropped to a region of interest, with unusable frames skipped.

A live stream (device or URL) is read continuously so OpenCV's buffer never serves stale frames,
and one frame per 1/fps seconds of wall time is taken; when the worker is still busy with
earlier frames the new one is dropped (counted) rather than queued, as a camera's value is its
*current* picture. When the stream drops, the source reports it (`on_event("error",
"source_down", ...)`), reconnects with exponential backoff and reports `source_up` once frames
flow again; the daemon's other sources never notice.

A video file is sampled by its own timeline (one frame per 1/fps seconds of video), read as
fast as the worker classifies, never dropped, and played once: its end is reported, and a file
that breaks off before its announced length is reported as an error.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from ..checks import CheckResult
from ..errors import ConfigError
from ..frame_quality import REASONS, FrameQuality, QualityThresholds
from ..preprocess import DecodedImage, to_display_pixels
from .base import EventSink, Flag, InputItem, Outcome, Source, SourceType, Submit

log = logging.getLogger(__name__)


URL_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")
# OpenCV (FFmpeg) otherwise waits ~30 s on a dead host and forever on a stalled stream.
OPEN_TIMEOUT_MS = 5000
READ_TIMEOUT_MS = 5000


def redact(src: str) -> str:
    """A stream URL without its password (rtsp://user:secret@host -> rtsp://user:***@host)."""
    return re.sub(r"^([a-z0-9+.-]+://[^/:@]+):[^/@]*@", r"\1:***@", src, flags=re.IGNORECASE)


def validate_roi(roi) -> tuple[int, int, int, int] | None:
    if roi is None:
        return None
    try:
        x, y, width, height = (int(value) for value in roi)
    except (TypeError, ValueError):
        raise ConfigError(f"camera.roi: {roi!r} must be [x, y, width, height]") from None
    if x < 0 or y < 0 or width <= 0 or height <= 0:
        raise ConfigError(f"camera.roi: {list(roi)} must have x, y >= 0 and a positive width and height")
    return x, y, width, height


def validate_fps(fps) -> float:
    if not fps or fps <= 0:
        raise ConfigError(f"camera.fps: must be > 0, not {fps}")
    return float(fps)


@dataclass
class CameraSettings:
    """[camera] of edge.toml."""

    src: str | None = None
    fps: float = 1.0
    roi: list[int] | None = None


def validate_settings(settings: CameraSettings) -> None:
    validate_fps(settings.fps)
    validate_roi(settings.roi)
    if settings.src is not None and not str(settings.src).strip():
        raise ConfigError("camera.src: empty (a device index, an rtsp:// or http:// URL, or a video file)")


class CameraSource(Source):
    name = "camera"

    def __init__(self, src, fps: float = 1.0, roi=None, quality: QualityThresholds | None = None,
                 reconnect_min_s: float = 1.0, reconnect_max_s: float = 60.0, max_in_flight: int = 2,
                 on_event: EventSink | None = None):
        text = str(src).strip()
        if not text:
            raise ConfigError("camera.src: empty (a device index, an rtsp:// or http:// URL, or a video file)")
        fps = validate_fps(fps)
        self.is_device = text.isdigit()
        self.is_url = text.lower().startswith(URL_SCHEMES)
        self.is_file = not (self.is_device or self.is_url) and Path(text).is_file()
        if not (self.is_device or self.is_url or self.is_file or text.startswith("/dev/")):
            raise ConfigError(f"camera.src: {text!r} is neither a device index, a stream URL nor an existing video file")
        self.src = int(text) if self.is_device else text
        self.display_src = redact(text)
        self.fps = float(fps)
        self.roi = validate_roi(roi)
        self.quality = FrameQuality(quality)
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.max_in_flight = max_in_flight
        self.on_event = on_event
        self._submit: Submit | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Condition()
        self._in_flight = 0
        self._roi_reported = False
        self._announced_frames = 0  # a video file's length from its header
        self._video_fps = 0.0
        self._state = "stopped"
        self._last_error: str | None = None
        self._counters = {"frames_read": 0, "frames_sampled": 0, "frames_submitted": 0, "frames_classified": 0,
                          "frames_failed": 0, "frames_skipped": 0, "dropped_busy": 0, "disconnects": 0,
                          "reconnect_attempts": 0, **{f"skipped_{reason}": 0 for reason in REASONS},
                          "skipped_roi": 0}

    # ------------------------------------------------------------------ Source

    def start(self, submit: Submit) -> None:
        self._submit = submit
        self._stopping.clear()
        self._state = "connecting"
        self._thread = threading.Thread(target=self._run, name="medge-camera", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()
        if self._thread is not None:
            # A blocked read returns within READ_TIMEOUT_MS; never hold the daemon's shutdown longer.
            self._thread.join(READ_TIMEOUT_MS / 1000.0 + 2.0)
        if self._state not in ("ended", "failed"):
            self._state = "stopped"

    def health(self) -> dict:
        with self._lock:
            counters = dict(self._counters)
            in_flight = self._in_flight
        return {"state": self._state, "connected": self._state == "streaming", "src": self.display_src,
                "in_flight": in_flight, "last_error": self._last_error, **counters}

    # ------------------------------------------------------------------ the capture loop

    def _run(self) -> None:
        backoff = self.reconnect_min_s
        attempts = 0  # reconnect attempts in the current outage; 0 while the stream is up
        down = False
        while not self._stopping.is_set():
            capture = self._open()
            if capture is None:
                if self.is_file:
                    self._finish("failed", "error", "source_down", f"camera {self.display_src}: cannot read the video file")
                    return
                if not down:
                    self._down(f"camera {self.display_src}: cannot open the stream; retrying")
                    down = True
                attempts += 1
                self._count("reconnect_attempts")
                self._stopping.wait(backoff)
                backoff = min(backoff * 2.0, self.reconnect_max_s)
                continue
            self._state = "streaming"
            if down:
                self.emit("warning", "source_up", f"camera {self.display_src}: stream is back after "
                                                   f"{attempts} reconnect attempt{'s' if attempts != 1 else ''}")
                down, attempts = False, 0
            try:
                frames_read, error = self._read(capture)
            finally:
                capture.release()
            if self._stopping.is_set():
                return
            if self.is_file:
                self._drain()  # "ended" in the heartbeat means every sampled frame has its result
                announced = self._announced_frames
                if error is None and (announced <= 0 or frames_read >= announced):
                    self._finish("ended", "warning", "source_ended",
                                 f"camera {self.display_src}: video file ended after {frames_read} frames")
                else:
                    detail = error or f"stream broke off at frame {frames_read} of {announced}"
                    self._finish("failed", "error", "source_down", f"camera {self.display_src}: {detail}")
                return
            self._count("disconnects")
            self._down(f"camera {self.display_src}: stream dropped after {frames_read} frames"
                       f"{' (' + error + ')' if error else ''}; reconnecting")
            down = True
            backoff = self.reconnect_min_s
            self._stopping.wait(backoff)

    def _open(self):
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS]
        try:
            capture = cv2.VideoCapture(self.src, cv2.CAP_ANY, params)
        except cv2.error as error:
            self._last_error = str(error).strip().splitlines()[-1]
            return None
        if not capture.isOpened():
            capture.release()
            return None
        self._announced_frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if self.is_file else 0
        self._video_fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0) if self.is_file else 0.0
        return capture

    def _read(self, capture) -> tuple[int, str | None]:
        """Grab frames until the stream ends, breaks or the source stops: (frames read, error)."""
        frames_read = 0
        next_sample = 0.0
        started = time.monotonic()
        session = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f")
        while not self._stopping.is_set():
            try:
                grabbed = capture.grab()
            except cv2.error as error:
                return frames_read, str(error).strip().splitlines()[-1]
            if not grabbed:
                return frames_read, None
            index = frames_read
            frames_read += 1
            self._count("frames_read")
            if self.is_file:
                moment = index / self._video_fps if self._video_fps > 0 else capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            else:
                moment = time.monotonic() - started
            if moment + 1e-6 < next_sample:
                continue
            next_sample = (np.floor(moment * self.fps + 1e-6) + 1.0) / self.fps
            ok, frame = capture.retrieve()
            if not ok or frame is None:
                return frames_read, f"frame {index} could not be decoded"
            ref = f"{self.src}#{index}" if self.is_file else f"{self.src}@{session}#{index}"
            self._sample(frame, index, moment, ref)
        return frames_read, None

    def _sample(self, frame: np.ndarray, index: int, moment: float, ref: str) -> None:
        self._count("frames_sampled")
        pixels = self._crop(to_display_pixels(frame, bgr=True))
        if pixels is None:
            self._skip("roi")
            return
        reason = self.quality.check(pixels)
        if reason is not None:
            self._skip(reason)
            return
        with self._lock:
            if self.is_file:
                # A file waits for the worker: every sampled frame of a recording is classified.
                while self._in_flight >= self.max_in_flight and not self._stopping.is_set():
                    self._lock.wait(0.5)
            elif self._in_flight >= self.max_in_flight:
                self._counters["dropped_busy"] += 1
                return
            self._in_flight += 1
            self._counters["frames_submitted"] += 1
        info = {"source": "camera", "frame_index": index, "time_s": round(moment, 3)}
        item = InputItem(source="camera", ref=ref, label=f"camera frame {index}",
                         load=lambda: DecodedImage(frames=[pixels], kind="image", info=info), done=self._done)
        try:
            self._submit(item)
        except Exception as error:
            self._done(Outcome(ok=False, error=f"not queued ({error})"))

    def _done(self, outcome: Outcome) -> None:
        with self._lock:
            self._in_flight -= 1
            self._counters["frames_classified" if outcome.ok else "frames_failed"] += 1
            self._lock.notify_all()

    def _drain(self) -> None:
        with self._lock:
            while self._in_flight > 0 and not self._stopping.is_set():
                self._lock.wait(0.5)

    def _crop(self, pixels: np.ndarray) -> np.ndarray | None:
        if self.roi is None:
            return pixels
        x, y, width, height = self.roi
        rows, columns = pixels.shape[:2]
        cropped = pixels[y:min(y + height, rows), x:min(x + width, columns)]
        if cropped.shape[0] < 8 or cropped.shape[1] < 8:
            if not self._roi_reported:
                self._roi_reported = True
                self.emit("error", "camera_roi", f"camera {self.display_src}: camera.roi {list(self.roi)} lies "
                                                  f"outside the {columns}x{rows} frame; frames are skipped")
            return None
        return np.ascontiguousarray(cropped)

    # ------------------------------------------------------------------ bookkeeping

    def _count(self, key: str) -> None:
        with self._lock:
            self._counters[key] += 1

    def _skip(self, reason: str) -> None:
        with self._lock:
            self._counters["frames_skipped"] += 1
            self._counters[f"skipped_{reason}"] += 1

    def _down(self, message: str) -> None:
        self._state = "down"
        self._last_error = message
        self.emit("error", "source_down", message)

    def _finish(self, state: str, level: str, kind: str, message: str) -> None:
        self._state = state
        if level == "error":
            self._last_error = message
        self.emit(level, kind, message)


# ------------------------------------------------------------------------------ registration


def build(settings: CameraSettings, config, on_event) -> CameraSource:
    return CameraSource(settings.src, settings.fps, settings.roi, on_event=on_event)


def check(settings: CameraSettings, config) -> CheckResult:
    """The source opens (a stream answers, the device exists, the file is a video)."""
    src = str(settings.src).strip()
    capture = cv2.VideoCapture(int(src) if src.isdigit() else src, cv2.CAP_ANY,
                               [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS])
    try:
        if not capture.isOpened():
            return CheckResult.failed(f"camera.src {redact(src)!r} cannot be opened")
        return CheckResult.passed(f"camera {redact(src)} opens")
    finally:
        capture.release()


SOURCE = SourceType(
    name="camera", settings=CameraSettings, switch="src", build=build, check=check, validate=validate_settings,
    order=30,
    flags=(
        Flag("src", ("--camera",), "Camera: device index, stream URL or video file."),
        Flag("fps", ("--fps",), "Camera frames classified per second."),
        Flag("roi", ("--roi",), "Camera region of interest x,y,w,h.", default_help="the whole frame"),
    ),
)

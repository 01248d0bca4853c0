"""Which camera frames are worth classifying: not black, not frozen, not blurred.

A bedside camera or a video-capable device produces many frames a model must not see: a lens
cap or a monitor gone dark (black), an encoder that keeps repeating its last picture after the
device behind it hung (frozen), a camera moved or out of focus (blurred). They are skipped and
counted so the heartbeat shows a stream that looks alive but delivers nothing usable.

All measures are taken on a small grayscale thumbnail, so the check costs well under a
millisecond per frame and does not depend on the camera's resolution.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

THUMBNAIL_WIDTH = 256
REASONS = ("black", "frozen", "blurred")


@dataclass(frozen=True)
class QualityThresholds:
    # Mean gray level (0..255) below which a frame is black. Chest X-rays average ~110-150.
    black_level: float = 16.0
    # Mean absolute gray difference to the previous sampled frame below which it is frozen:
    # a live sensor's noise alone moves it well above this, a repeated encoded frame gives ~0.
    frozen_difference: float = 0.5
    # Variance of the Laplacian of the thumbnail below which it is blurred. Sharp chest X-ray
    # thumbnails measure ~130-220 (whole film) and ~18-40 (a crop of the lungs); a Gaussian blur
    # of 2-3 thumbnail pixels brings them to ~3.
    blur_variance: float = 8.0


class FrameQuality:
    """`check(frame)` -> None for a usable frame, else "black", "frozen" or "blurred"."""

    def __init__(self, thresholds: QualityThresholds | None = None):
        self.thresholds = thresholds or QualityThresholds()
        self._previous: np.ndarray | None = None

    def check(self, frame: np.ndarray) -> str | None:
        thumbnail = _thumbnail(frame)
        previous, self._previous = self._previous, thumbnail
        if float(thumbnail.mean()) < self.thresholds.black_level:
            return "black"
        if previous is not None and previous.shape == thumbnail.shape:
            difference = float(np.mean(cv2.absdiff(thumbnail, previous)))
            if difference < self.thresholds.frozen_difference:
                return "frozen"
        if float(cv2.Laplacian(thumbnail, cv2.CV_64F).var()) < self.thresholds.blur_variance:
            return "blurred"
        return None


def _thumbnail(frame: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame
    height, width = gray.shape[:2]
    if width > THUMBNAIL_WIDTH:
        size = (THUMBNAIL_WIDTH, max(1, round(height * THUMBNAIL_WIDTH / width)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    return gray

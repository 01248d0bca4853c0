"""Where the model looked: occlusion-sensitivity heatmaps computed with the device's own model
(the int8 file the bundle ships), and the overlay images that show them.

Why occlusion and not CAM: the default CNN has a hidden Dense layer after global pooling, where
CAM is not exact; Grad-CAM needs gradients, which the int8 TFLite/ONNX runtimes do not give;
occlusion needs nothing but the model's forward pass, so it works for every architecture (CNN,
backbones, ensembles) without changing the conversion. The model input is small (28x28 by
default): hiding a patch at each position of a grid gives a few dozen copies, run as one batch.

The heatmap is the drop of the decision score (`classify.decide`'s: binary, P(positive class);
multi-class, the predicted class's probability) when a region is hidden, averaged over the
patches covering each pixel, clipped at 0 and divided by its maximum: values in [0, 1] at the
model input's size (all zero when hiding nothing lowers the score). Heatmaps stay on the device
(PNG beside the processed file, the PACS Secondary Capture): never on MQTT.

The drawing helpers (`fit_for_capture`, `overlay_heatmap`, `banner`) are shared with the SC
writer (edge/pacs/secondary_capture.py): one blending and burn-in code for both.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .about import DISCLAIMER
from .preprocess import preprocess

FILLS = ("mean", "grey")  # what a hidden patch shows: the image's mean, or mid-grey (normalised)
# Measured on the bundled X-rays with the committed int8 bundle (docs/pacs.md): a mean fill hides
# too little on a low-contrast film (an all-zero map for IM-0115-0001), mid-grey does not.
DEFAULT_FILL = "grey"
PATCH_FRACTION = 1 / 4  # patch side, as a share of the input side
STRIDE_FRACTION = 1 / 7  # step between patch positions
SUFFIX = ".heatmap.png"  # processed/NAME.heatmap.png, DIR/NAME.heatmap.png
MAX_SIDE = 1024  # overlays only have to be legible, not full resolution
HEATMAP_ALPHA = 0.4
RED, GREEN, WHITE, YELLOW = (255, 64, 64), (64, 220, 64), (255, 255, 255), (255, 220, 0)
NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"


# --------------------------------------------------------------------------- the heatmap


def patch_grid(side: int, patch_fraction: float = PATCH_FRACTION, stride_fraction: float = STRIDE_FRACTION):
    """(patch, positions) along one side: the last position ends at the border, so every pixel is covered."""
    patch = max(1, round(side * patch_fraction))
    stride = max(1, round(side * stride_fraction))
    positions = list(range(0, side - patch + 1, stride))
    if positions[-1] != side - patch:
        positions.append(side - patch)
    return patch, positions


def fill_value(model_input: np.ndarray, fill: str, grey: np.ndarray | None = None) -> np.ndarray:
    if fill == "mean":
        return model_input.reshape(-1, model_input.shape[-1]).mean(axis=0)
    if fill == "grey":
        if grey is None:
            raise ValueError("fill 'grey' needs the normalised mid-grey value")
        return np.asarray(grey, dtype=np.float32)
    raise ValueError(f"unknown occlusion fill {fill!r} (choose from: {', '.join(FILLS)})")


@dataclass
class Occlusions:
    """One input and its occluded copies (row 0: the input itself), and where each patch lies."""

    batch: np.ndarray  # (1 + len(boxes), H, W, C)
    boxes: list[tuple[int, int]]  # (top, left) of the patch hidden in rows 1...
    patch: tuple[int, int]  # (height, width)


def occlusions(model_input: np.ndarray, fill: str = DEFAULT_FILL, grey: np.ndarray | None = None,
               patch_fraction: float = PATCH_FRACTION, stride_fraction: float = STRIDE_FRACTION) -> Occlusions:
    model_input = np.asarray(model_input, dtype=np.float32)
    if model_input.ndim != 3:
        raise ValueError(f"model input must be (H, W, C), not {model_input.shape}")
    height, width = model_input.shape[:2]
    patch_h, rows = patch_grid(height, patch_fraction, stride_fraction)
    patch_w, cols = patch_grid(width, patch_fraction, stride_fraction)
    value = fill_value(model_input, fill, grey)
    boxes = [(top, left) for top in rows for left in cols]
    batch = np.repeat(model_input[np.newaxis], len(boxes) + 1, axis=0)
    for row, (top, left) in enumerate(boxes, start=1):
        batch[row, top:top + patch_h, left:left + patch_w, :] = value
    return Occlusions(batch, boxes, (patch_h, patch_w))


def heatmap_from(occluded: Occlusions, probabilities: np.ndarray, score_index: int | None = None) -> np.ndarray:
    """The (H, W) heatmap in [0, 1] from the model's probabilities for `occluded.batch`."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if score_index is None:
        score_index = int(np.argmax(probabilities[0]))
    height, width = occluded.batch.shape[1:3]
    patch_h, patch_w = occluded.patch
    drops = probabilities[0, score_index] - probabilities[1:, score_index]
    total = np.zeros((height, width), dtype=np.float64)
    covered = np.zeros((height, width), dtype=np.float64)
    for drop, (top, left) in zip(drops, occluded.boxes):
        total[top:top + patch_h, left:left + patch_w] += drop
        covered[top:top + patch_h, left:left + patch_w] += 1.0
    heat = np.clip(total / covered, 0.0, None)
    peak = heat.max()
    if not np.isfinite(peak) or peak <= 0:
        return np.zeros((height, width), dtype=np.float32)
    return (heat / peak).astype(np.float32)


def occlusion_heatmap(predict: Callable[[np.ndarray], np.ndarray], model_input: np.ndarray,
                      score_index: int | None = None, fill: str = DEFAULT_FILL, grey: np.ndarray | None = None,
                      patch_fraction: float = PATCH_FRACTION, stride_fraction: float = STRIDE_FRACTION) -> np.ndarray:
    """`predict` ((N, H, W, C) float32 -> (N, K) probabilities, e.g. a runtime Predictor's) and one
    preprocessed input (H, W, C) -> an (H, W) float32 heatmap in [0, 1].

    `score_index`: the class whose probability is the decision score (None: the predicted one).
    The unoccluded image and every occluded copy go in one batched call (a fixed-batch TFLite
    model takes any number: edge/runtime.py splits and pads)."""
    occluded = occlusions(model_input, fill, grey, patch_fraction, stride_fraction)
    return heatmap_from(occluded, predict(occluded.batch), score_index)


def neutral_grey(spec) -> np.ndarray:
    """Mid-grey (display value 127.5) after the spec's normalisation, per channel."""
    grey = np.full((spec.height, spec.width, spec.channels), 128, dtype=np.uint8)
    return preprocess(grey if spec.channels == 3 else grey[..., 0], spec)[0, 0]


def score_index(classifier) -> int | None:
    """The class whose probability `decide` reports as the score: binary, the positive class;
    multi-class, None: the predicted class, read from the unoccluded row of the same batch."""
    bundle = classifier.bundle
    if bundle.task == "binary":
        return bundle.classes.index(bundle.positive_class)
    return None


def explain(classifier, pixels: np.ndarray | None = None, model_input: np.ndarray | None = None,
            fill: str = DEFAULT_FILL) -> np.ndarray:
    """A Classifier (edge/classify.py) and one frame (its display pixels, or the model input its
    classification kept) -> its heatmap at the model input's size, from the same model."""
    if model_input is None:
        model_input = preprocess(pixels, classifier.spec)
    return occlusion_heatmap(classifier.predictor.predict, model_input, score_index(classifier), fill=fill,
                             grey=neutral_grey(classifier.spec))


@dataclass
class Explanation:
    """The heatmap of an input's reported frame, with what it explains."""

    heatmap: np.ndarray  # (H, W) of the model input, float32 in [0, 1]
    pixels: np.ndarray  # the frame's display pixels
    classification: object  # classify.Classification
    ms: float

    def png(self) -> bytes:
        return overlay_png(self.pixels, self.heatmap, caption_for(self.classification))


def explain_analysis(classifier, analysis) -> Explanation | None:
    """The one function the daemon and `medge predict --explain` call: the heatmap of an
    `classify.analyse` outcome's first reported frame (None when nothing was classified)."""
    if not analysis.frames:
        return None
    started = time.perf_counter()
    frame = analysis.frames[0]
    pixels = analysis.decoded.frames[frame.index]
    heatmap = explain(classifier, pixels, model_input=frame.classification.model_input)
    return Explanation(heatmap, pixels, frame.classification, (time.perf_counter() - started) * 1000.0)


# --------------------------------------------------------------------------- drawing


def fit_for_capture(pixels: np.ndarray) -> np.ndarray:
    """Display pixels at most MAX_SIDE on their long side (unchanged when smaller), shrunk by a
    whole factor: OpenCV's area filter is then an exact box average, and ~10x faster than at
    an arbitrary scale (it runs while the scanner waits)."""
    import cv2

    factor = -(-max(pixels.shape[:2]) // MAX_SIDE)  # ceiling division
    if factor <= 1:
        return pixels
    size = (max(1, pixels.shape[1] // factor), max(1, pixels.shape[0] // factor))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def overlay_heatmap(rgb: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """Blend `heatmap` (2-D, [0, 1], any size: upsampled to the image) over an RGB uint8 image."""
    import cv2

    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 2 or not np.all(np.isfinite(heat)):
        raise ValueError("heatmap must be a finite 2-D array")
    heat = cv2.resize(np.clip(heat, 0.0, 1.0), (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    coloured = cv2.cvtColor(cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    # Opacity follows the heat: where the model did not look, the anatomy stays untinted.
    alpha = (HEATMAP_ALPHA * heat)[..., np.newaxis]
    return np.clip(rgb * (1.0 - alpha) + coloured * alpha, 0, 255).astype(np.uint8)


def banner(rgb: np.ndarray, lines: list[tuple[str, tuple]]) -> np.ndarray:
    """Text on a black band above the image, so no anatomy is hidden; lines shrink to fit."""
    import cv2

    width = rgb.shape[1]
    font = cv2.FONT_HERSHEY_SIMPLEX
    longest = max(lines, key=lambda line: len(line[0]))[0]
    size = max(0.3, min(0.9, width / 1000))
    while size > 0.3 and cv2.getTextSize(longest, font, size, 1)[0][0] > width - 12:
        size -= 0.05
    thickness = 2 if size >= 0.6 else 1
    line_h = cv2.getTextSize("Ag", font, size, thickness)[0][1] + 10
    band = np.zeros((line_h * len(lines) + 8, width, 3), dtype=np.uint8)
    for row, (text, colour) in enumerate(lines):
        cv2.putText(band, text, (6, line_h * (row + 1)), font, size, colour, thickness, cv2.LINE_AA)
    return np.ascontiguousarray(np.vstack([band, rgb]))


def to_rgb(pixels: np.ndarray) -> np.ndarray:
    import cv2

    image = np.asarray(pixels)
    if image.dtype != np.uint8:
        raise ValueError(f"display pixels must be uint8, not {image.dtype}")
    return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else image[..., :3].copy()


def overlay(display_image: np.ndarray, heatmap: np.ndarray, caption: str | None = None) -> np.ndarray:
    """Display pixels ((H, W) or (H, W, 3) uint8) + heatmap -> RGB uint8 image (at most MAX_SIDE
    wide), the heatmap blended in and "NOT FOR DIAGNOSTIC USE" burned in above it."""
    rgb = overlay_heatmap(to_rgb(fit_for_capture(np.asarray(display_image))), heatmap)
    lines = [(f"medge occlusion heatmap - {NOT_FOR_DIAGNOSTIC_USE}", YELLOW)]
    if caption:
        lines.append((caption, WHITE))
    lines.append((DISCLAIMER, YELLOW))
    return banner(rgb, lines)


def overlay_png(display_image: np.ndarray, heatmap: np.ndarray, caption: str | None = None) -> bytes:
    """`overlay` encoded as PNG bytes."""
    import cv2

    # Fast compression: the PNG is written while the input waits; size matters less than time here.
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(overlay(display_image, heatmap, caption), cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("cannot encode the heatmap overlay as PNG")
    return encoded.tobytes()


def caption_for(classification) -> str:
    """The result the overlay explains, in one line."""
    text = f"{classification.label}: score {classification.score:.3f}"
    if classification.threshold is not None:
        text += f" (threshold {classification.threshold:.3f})"
    return text

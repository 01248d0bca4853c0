"""The conversion gate's decode check: does reduced JPEG decoding change what the model says?

A spec with `jpeg_reduction: "auto"` makes the device (and `medge predict`, and training on
image folders) decode a large JPEG at 1/2, 1/4 or 1/8 of its size, straight to the model's
colour mode (`medge.edge.preprocess.jpeg_reduction_factor`). This check runs the converted
model, on its device runtime, on both decodes of the full-size images the project has: the
bundled chest X-ray JPEGs as exported, and each of them re-encoded at the smallest size that
takes each reduction (the margin's edge, where a reduced decode is furthest from the full one).

It fails the gate when a score moves by more than `max_score_diff` (0.02, issue 15's figure),
or when a decision flips for an image whose full-decode score is further than that from the
threshold (a flip within the tolerance is the score tolerance seen at the threshold).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from medge.edge.classify import decide
from medge.edge.preprocess import (
    JPEG_REDUCTION_MARGIN,
    PreprocessSpec,
    decode_image,
    jpeg_reduction_factor,
    preprocess,
    raster_header,
)

DEFAULT_MAX_SCORE_DIFF = 0.02
JPEG_QUALITY = 95  # the re-encoded renderings: a scanner export's quality


def sample_jpegs(spec: PreprocessSpec) -> list[tuple[str, bytes]]:
    """(name, JPEG bytes): the bundled X-rays as they are, then each at the smallest size that
    decodes at 1/2, 1/4 and 1/8 for this spec's input size."""
    from medge.data import chest_xray_sample_files

    images = []
    for path in chest_xray_sample_files():
        data = path.read_bytes()
        images.append((path.name, data))
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        height, width = pixels.shape[:2]
        for factor in (2, 4, 8):
            # the scale at which the tighter side is exactly MARGIN x input x factor pixels
            scale = max(JPEG_REDUCTION_MARGIN * spec.height * factor / height,
                        JPEG_REDUCTION_MARGIN * spec.width * factor / width)
            if scale >= 1.0:
                continue  # would need upscaling: the image itself is below that reduction
            size = (math.ceil(width * scale), math.ceil(height * scale))
            resized = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
            encoded = cv2.imencode(".jpg", resized, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes()
            images.append((f"{path.stem}@{size[0]}x{size[1]}.jpg", encoded))
    return images


def decode_agreement(predict, spec: PreprocessSpec, classes, task: str, threshold: float | None,
                     positive_class: str | None, images: list[tuple[str, bytes]] | None = None,
                     max_score_diff: float = DEFAULT_MAX_SCORE_DIFF) -> dict:
    """Full-decode vs reduced-decode model outputs on `images` (default `sample_jpegs`).

    `predict(batch) -> (N, K)` probabilities, the device's predictor. Returns the record the
    gate keeps under "decode_check"."""
    images = sample_jpegs(spec) if images is None else images
    full_spec = PreprocessSpec(**{**spec.to_dict(), "jpeg_reduction": "off"})
    reduced_spec = PreprocessSpec(**{**spec.to_dict(), "jpeg_reduction": "auto"})
    full = np.stack([preprocess(decode_image(data, name=name, spec=full_spec).pixels, spec) for name, data in images])
    reduced = np.stack([preprocess(decode_image(data, name=name, spec=reduced_spec).pixels, spec)
                        for name, data in images])
    full_p, reduced_p = np.asarray(predict(full)), np.asarray(predict(reduced))
    score_diff = np.abs(full_p - reduced_p).max(axis=1)  # every class's probability
    factors: dict[str, int] = {}
    flips, unexplained = [], []
    for index, (name, data) in enumerate(images):
        header = raster_header(data, name)
        factor = jpeg_reduction_factor(header.width, header.height, reduced_spec)
        factors[f"1/{factor}"] = factors.get(f"1/{factor}", 0) + 1
        label_full, score_full, _ = decide(full_p[index], list(classes), task, threshold, positive_class)
        label_reduced, _, _ = decide(reduced_p[index], list(classes), task, threshold, positive_class)
        if label_full != label_reduced:
            flips.append(name)
            if task == "binary":
                near = abs(score_full - threshold) <= max_score_diff
            else:  # the two most probable classes within the tolerance of each other
                top = np.sort(full_p[index])[-2:]
                near = top[1] - top[0] <= 2 * max_score_diff
            if not near:
                unexplained.append(name)
    worst = float(score_diff.max()) if len(score_diff) else 0.0
    return {
        "images": len(images),
        "reductions": factors,
        "max_abs_score_diff": round(worst, 6),
        "mean_abs_score_diff": round(float(score_diff.mean()) if len(score_diff) else 0.0, 6),
        "decision_flips": len(flips),
        "flips_beyond_tolerance": len(unexplained),
        "max_score_diff_limit": max_score_diff,
        "passed": worst <= max_score_diff and not unexplained,
    }


def check_decode(record: dict | None) -> list[str]:
    """The gate's failures for a decode_check record (none when it passed or was not run)."""
    if not record or record.get("passed", True):
        return []
    return [f"reduced JPEG decoding changes the model's answers on the bundled full-size X-rays: max |score "
            f"difference| {record['max_abs_score_diff']:.4f} (limit {record['max_score_diff_limit']}), "
            f"{record['flips_beyond_tolerance']} decision(s) flipped beyond the tolerance; convert with "
            "a spec whose jpeg_reduction is \"off\", or retrain"]

"""The bundle's drift `reference` (edge/drift.py): what the device's recent inputs are compared with.

Computed at conversion, on the run's VALIDATION split, through the device's own path on the
staged bundle (int8 model on the device runtime, calibrated, OOD guard, refer rule), so the
device compares like with like: a float reference would put int8 rounding into every
in-distribution comparison, and an OOD rate taken from the guard's nominal acceptance (2%)
where the validation images really have 0% refused adds ~0.12 to every PSI (measured on
RetinaMNIST). The bins are the classified validation scores' deciles (`edges`); `refer_rate`
and `ood_rate` are shares of all validation images.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from medge.edge.bundle import Bundle
from medge.edge.classify import Classifier, analyse
from medge.edge.drift import HISTOGRAM_BINS, histogram, reference_edges
from medge.edge.preprocess import DecodedImage


def drift_scores(probabilities: np.ndarray, classes: list[str], task: str, positive_class: str | None) -> np.ndarray:
    """edge/drift.py's score per image: binary P(positive class), multi-class the top probability."""
    if task == "binary":
        return probabilities[:, classes.index(positive_class)]
    return probabilities.max(1)


def drift_reference(probabilities: np.ndarray, refused: int, referred: int, manifest, source: str) -> dict:
    """The `reference` section from the classified images' probabilities and the counts of images
    the OOD guard refused and the refer rule referred (shares of all images looked at)."""
    classes = list(manifest.classes)
    scores = drift_scores(probabilities, classes, manifest.task, manifest.positive_class)
    edges = reference_edges(scores, HISTOGRAM_BINS)
    counts = histogram(scores, edges)
    n = int(len(scores)) + refused
    return {"source": source, "n": n, "bins": len(counts), "edges": [round(e, 6) for e in edges],
            "histogram": [round(float(c) / max(1, len(scores)), 6) for c in counts],
            "refer_rate": round(referred / n, 6), "ood_rate": round(refused / n, 6)}


def add_drift_reference(staging: Path, manifest, run_dataset):
    """`manifest` with its `reference` section; unchanged when the run has no validation images.

    Every validation image goes through `analyse`, the device's own path (display pixels,
    preprocessing, int8 model, calibration, OOD guard, refer rule) on the staged bundle, so the
    reference holds exactly what a device would count for them, the OOD refusals included."""
    dataset = run_dataset()
    split = dataset.splits.get("val")
    if split is None or len(split) == 0 or not manifest.artifacts:
        return manifest
    artifact = manifest.artifacts[0]
    classifier = Classifier(Bundle(path=staging, manifest=manifest), runtime=artifact.runtime)
    probabilities, refused, referred = [], 0, 0
    for name in split.names:
        pixels = dataset.display_pixels(name)
        analysis = analyse(classifier, lambda pixels=pixels: DecodedImage([pixels], "image"))
        if analysis.not_applicable is not None:
            refused += 1
            continue
        classification = analysis.frames[0].classification
        probabilities.append([classification.probabilities[c] for c in manifest.classes])
        referred += classification.decision == "refer"
    if not probabilities:
        return manifest
    source = f"validation split ({len(split)} images), {artifact.format} on {classifier.runtime_name}, device path"
    return replace(manifest, reference=drift_reference(np.asarray(probabilities, dtype=np.float64), refused, referred,
                                                       manifest, source))

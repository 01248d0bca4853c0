"""The bundle's on-device self-test reference set, made at conversion (edge/fleet/selftest.py
runs it on the device): ~32 preprocessed validation inputs whose decisions are clear of the
threshold, and the calibrated probabilities every converted model file gives for them on the
edge runtime, computed through the device's own Classifier on the finished staging folder.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from medge.edge.bundle import Bundle
from medge.edge.classify import Classifier
from medge.edge.fleet.selftest import DEFAULT_TOLERANCE, SELFTEST_NAME, choose_inputs, predict_all, write_self_test
from medge.edge.manifest import Manifest

SELFTEST_INPUTS = 32
CANDIDATES = 512  # validation inputs looked at to choose the reference set


def self_test_candidates(run_dataset, fallback: np.ndarray) -> np.ndarray:
    """Validation inputs (the test split is for final reports only); training inputs without one."""
    dataset = run_dataset()
    for name in ("val", "train"):
        split = dataset.splits.get(name)
        if split is not None and len(split):
            return np.asarray(split.x[:CANDIDATES], dtype=np.float32)
    return np.asarray(fallback[:CANDIDATES], dtype=np.float32)


def self_test_tolerance(manifest: Manifest) -> float:
    """At least DEFAULT_TOLERANCE, and two int8 output steps at the sigmoid's steepest slope, so
    a one-step rounding difference between runtimes never fails a good model."""
    steps = [0.5 * entry.output.scale / float(getattr(entry.output, "temperature", 1.0) or 1.0)
             for entry in manifest.artifacts if entry.output.quantized]
    return round(max([DEFAULT_TOLERANCE, *steps]), 6)


def add_self_test(staging: Path, manifest: Manifest, candidates: np.ndarray,
                  count: int = SELFTEST_INPUTS) -> Manifest:
    """Write selftest.npz into the staging folder (before the manifest hashes and signs it) and
    return the manifest with its `self_test` section."""
    bundle = Bundle(path=Path(staging), manifest=manifest)  # its files are hashed by write_manifest next
    classifiers = [Classifier(bundle, runtime=entry.runtime, format=entry.format) for entry in manifest.artifacts]
    tolerance = self_test_tolerance(manifest)
    picks = choose_inputs(predict_all(classifiers[0], candidates), bundle, count, tolerance)
    write_self_test(staging, classifiers, candidates[picks])
    return replace(manifest, self_test={"file": SELFTEST_NAME, "tolerance": tolerance, "inputs": int(len(picks))})
